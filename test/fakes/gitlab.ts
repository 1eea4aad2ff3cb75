import { FakeHttpServer, linkHeader, type FakeHandler, type FakeRequest, type FakeResponse } from './base.ts';

/**
 * A GitLab instance (REST v4 under /api/v4) on loopback, following provider-contracts.md §2 and the
 * GitLab checklist in §5: PRIVATE-TOKEN / Bearer auth with GitLab's 401 and 403 bodies, token
 * introspection, keyset and offset paging, project roles and visibility, project hooks with their
 * write-only token and auto-disable state, and Rack::Attack-style rate limiting.
 *
 * Every token acts as one user whose role on each project is the project's `accessLevel`.
 */

export type HookAlertStatus = 'executable' | 'temporarily_disabled' | 'disabled';

/** The event flags a project hook accepts (GitLab's project hook properties). */
export const HOOK_EVENT_FLAGS = [
  'push_events',
  'tag_push_events',
  'merge_requests_events',
  'issues_events',
  'confidential_issues_events',
  'note_events',
  'confidential_note_events',
  'job_events',
  'pipeline_events',
  'wiki_page_events',
  'deployment_events',
  'releases_events',
  'feature_flag_events',
  'resource_access_token_events',
] as const;
type HookEventFlag = (typeof HOOK_EVENT_FLAGS)[number];

const BRANCH_FILTER_STRATEGIES = ['wildcard', 'regex', 'all_branches'] as const;

/** A project hook as GitLab stores it: the API fields plus the write-only `token`. */
export interface StoredHook extends Record<HookEventFlag, boolean> {
  id: number;
  project_id: number;
  url: string;
  token?: string;
  name: string | null;
  description: string | null;
  push_events_branch_filter: string | null;
  branch_filter_strategy: (typeof BRANCH_FILTER_STRATEGIES)[number];
  enable_ssl_verification: boolean;
  alert_status: HookAlertStatus;
  disabled_until: string | null;
  created_at: string;
}

export interface FakeGitlabProject {
  id: number;
  pathWithNamespace: string;
  defaultBranch: string | null;
  /** The token user's role: 10 Guest … 40 Maintainer, 50 Owner; 0 means not a member. */
  accessLevel: number;
  visibility: 'private' | 'internal' | 'public';
}

export interface FakeGitlab {
  /** Give this to gitbeaker as `host`; the API lives under /api/v4. */
  url: string;
  server: FakeHttpServer;
  /**
   * Issues a personal access token. `expiresAt` is a 'YYYY-MM-DD' date (expired from 00:00 UTC that day);
   * expired and revoked tokens are refused with 401 invalid_token. `active` only overrides the flag
   * /personal_access_tokens/self reports (GitLab derives it from revoked/expired).
   */
  addToken(token: { token: string; username: string; scopes: string[]; active?: boolean; revoked?: boolean; expiresAt?: string; userId?: number }): void;
  revokeToken(token: string): void;
  addProject(project: {
    id?: number;
    pathWithNamespace: string;
    defaultBranch?: string | null;
    accessLevel?: number;
    visibility?: FakeGitlabProject['visibility'];
  }): FakeGitlabProject;
  removeProject(id: number): void;
  /** Changes the token user's role on the project (0: no longer a member, so a private project answers 404). */
  setAccessLevel(id: number, accessLevel: number): void;
  /** Moves the project; its old path then answers GET with 301 to the project's id (GitLab ≥16.7). */
  renameProject(id: number, newPath: string): void;
  hooks(projectId: number): StoredHook[];
  setHookAlertStatus(projectId: number, hookId: number, status: HookAlertStatus): void;
  deleteHookByHand(projectId: number, hookId: number): void;
  /** Requests each user may make per window before 429 (default 2,000 per 60 s, as on GitLab.com). */
  setRateLimit(limit: number, periodSeconds?: number): void;
  /**
   * Fault mode: the listing `operation` never ends. listHooks (offset): every page is full of
   * made-up hooks and links to a next page, the one after (`onward`) or itself (`same`).
   * listProjects (keyset, ascending): past the real projects every page is full of made-up ones
   * with ever higher ids, linked onward; the highest id a descending call finds is 10,000 past the
   * one it starts after. null turns it off.
   */
  listEndlessly(operation: 'listHooks' | 'listProjects' | null, mode?: 'onward' | 'same'): void;
  close(): Promise<void>;
}

interface TokenRecord {
  id: number;
  token: string;
  userId: number;
  username: string;
  scopes: string[];
  active?: boolean;
  revoked: boolean;
  expiresAt: string | null;
  createdAt: string;
}

interface Project extends FakeGitlabProject {
  createdAt: string;
  hooks: StoredHook[];
}

const UNAUTHORIZED: FakeResponse = { status: 401, body: { message: '401 Unauthorized' } };
const FORBIDDEN: FakeResponse = { status: 403, body: { message: '403 Forbidden' } };
const PROJECT_NOT_FOUND: FakeResponse = { status: 404, body: { message: '404 Project Not Found' } };
const NOT_FOUND: FakeResponse = { status: 404, body: { message: '404 Not found' } };
const HOOKS_MIN_ACCESS_LEVEL = 40;
/** GitLab omits totals above this many rows, to spare the COUNT. */
const OFFSET_TOTAL_LIMIT = 10_000;

function invalidToken(description: string): FakeResponse {
  return {
    status: 401,
    headers: { 'www-authenticate': `Bearer realm="Protected by OAuth 2", error="invalid_token", error_description="${description}"` },
    body: { error: 'invalid_token', error_description: description },
  };
}

/** Grape's answer for a parameter it cannot coerce or that is missing. */
const badParam = (error: string): FakeResponse => ({ status: 400, body: { error } });

/** Rack::Attack's throttle answer, e.g. for `server.failNext(operation, n, retryLater(30))`. */
export function retryLater(retryAfterSeconds: number, now = Date.now()): FakeResponse {
  const reset = Math.ceil(now / 1000) + retryAfterSeconds;
  return {
    status: 429,
    text: 'Retry later',
    headers: {
      'content-type': 'text/plain',
      'retry-after': String(retryAfterSeconds),
      'ratelimit-name': 'throttle_authenticated_api',
      'ratelimit-limit': '2000',
      'ratelimit-observed': '2001',
      'ratelimit-remaining': '0',
      'ratelimit-reset': String(reset),
      'ratelimit-resettime': new Date(reset * 1000).toUTCString(),
    },
  };
}

/** Grape's Boolean coercion: undefined when absent, 'invalid' when not a boolean. */
function coerceBoolean(value: unknown): boolean | undefined | 'invalid' {
  if (value === undefined) return undefined;
  if (value === true || value === 'true' || value === 1 || value === '1') return true;
  if (value === false || value === 'false' || value === 0 || value === '0') return false;
  return 'invalid';
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}

function positiveInt(value: string | null): number | undefined {
  if (value === null || !/^\d+$/.test(value)) return undefined;
  const n = Number(value);
  return n > 0 ? n : undefined;
}

export async function startFakeGitlab(options: { now?: () => number } = {}): Promise<FakeGitlab> {
  const now = options.now ?? Date.now;
  const tokens = new Map<string, TokenRecord>();
  const userIds = new Map<string, number>();
  const projects = new Map<number, Project>();
  /** Old path (lower case) → project id, left behind by renames. */
  const redirects = new Map<string, number>();
  const namespaceIds = new Map<string, number>();
  const rateLimit = { limit: 2000, periodSeconds: 60 };
  const observed = new Map<number, number>();
  let rateWindow = -1;
  let nextUserId = 1;
  let nextTokenId = 1;
  let nextProjectId = 1;
  let nextHookId = 1;

  const server = new FakeHttpServer(() => ({ status: 404, body: { error: '404 Not Found' } }));
  await server.start();
  const baseUrl = server.url;
  const isoNow = () => new Date(now()).toISOString();

  /** The presenting token, null when none was presented, or GitLab's refusal. */
  function authenticate(req: FakeRequest): TokenRecord | null | FakeResponse {
    const privateToken = req.headers['private-token'];
    const bearer = /^Bearer\s+(.+)$/i.exec(String(req.headers.authorization ?? ''))?.[1];
    const presented = typeof privateToken === 'string' ? privateToken : bearer;
    if (presented === undefined) return null;
    const record = tokens.get(presented);
    if (!record) return UNAUTHORIZED;
    if (record.revoked) return invalidToken('Token was revoked. You have to re-authorize from the user.');
    // Tokens expire at 00:00 UTC on their expiry date.
    if (record.expiresAt && record.expiresAt <= isoNow().slice(0, 10)) {
      return invalidToken('Token is expired. You can either do re-authorization or token refresh.');
    }
    return record;
  }

  /** Counts the request in the user's fixed window; the RateLimit-* headers, plus the 429 once over the limit. */
  function throttle(userId: number): { headers: Record<string, string>; refusal?: FakeResponse } {
    const seconds = now() / 1000;
    const window = Math.floor(seconds / rateLimit.periodSeconds);
    if (window !== rateWindow) {
      rateWindow = window;
      observed.clear();
    }
    const count = (observed.get(userId) ?? 0) + 1;
    observed.set(userId, count);
    const reset = (window + 1) * rateLimit.periodSeconds;
    const headers = {
      'RateLimit-Name': 'throttle_authenticated_api',
      'RateLimit-Limit': String(rateLimit.limit),
      'RateLimit-Observed': String(count),
      'RateLimit-Remaining': String(Math.max(0, rateLimit.limit - count)),
      'RateLimit-Reset': String(reset),
    };
    if (count <= rateLimit.limit) return { headers };
    return {
      headers,
      refusal: {
        status: 429,
        text: 'Retry later',
        headers: {
          ...headers,
          'content-type': 'text/plain',
          'Retry-After': String(Math.max(1, reset - Math.floor(seconds))),
          'RateLimit-ResetTime': new Date(reset * 1000).toUTCString(),
        },
      },
    };
  }

  type Handler = (req: FakeRequest, caller: TokenRecord | null) => FakeResponse;

  /**
   * Authentication, throttling and scopes around a handler. GitLab lets `api` do anything,
   * `read_api` read, and `extraScopes` (e.g. read_user on /user) the endpoint itself.
   */
  function api(handler: Handler, access: { anonymous?: boolean; anyScope?: boolean; extraScopes?: string[] } = {}): FakeHandler {
    return (req) => {
      const caller = authenticate(req);
      if (caller !== null && !('token' in caller)) return caller;
      if (caller === null) return access.anonymous ? handler(req, null) : UNAUTHORIZED;
      const { headers, refusal } = throttle(caller.userId);
      if (refusal) return refusal;
      const allowed = ['api', ...(req.method === 'GET' ? ['read_api'] : []), ...(access.extraScopes ?? [])];
      if (!access.anyScope && !allowed.some((s) => caller.scopes.includes(s))) {
        return {
          status: 403,
          headers: { ...headers, 'www-authenticate': `Bearer realm="Protected by OAuth 2", error="insufficient_scope", scope="${allowed.join(' ')}"` },
          body: { error: 'insufficient_scope', error_description: 'The request requires higher privileges than provided by the access token.', scope: allowed.join(' ') },
        };
      }
      const response = handler(req, caller);
      return { ...response, headers: { ...headers, ...(response.headers ?? {}) } };
    };
  }

  function visibleTo(project: Project, caller: TokenRecord | null): boolean {
    if (project.visibility === 'public') return true;
    if (caller === null) return false;
    return project.visibility === 'internal' || project.accessLevel > 0;
  }

  /** The project named by `:id` (numeric id or URL-encoded path), a 301 from a former path, or 404. */
  function findProject(req: FakeRequest, caller: TokenRecord | null): Project | FakeResponse {
    const key = req.params.id!;
    const byId = /^\d+$/.test(key) ? projects.get(Number(key)) : [...projects.values()].find((p) => p.pathWithNamespace.toLowerCase() === key.toLowerCase());
    if (byId) return visibleTo(byId, caller) ? byId : PROJECT_NOT_FOUND;
    const movedTo = redirects.get(key.toLowerCase());
    const moved = movedTo === undefined ? undefined : projects.get(movedTo);
    // GitLab redirects only reads; writes to a former path are not found.
    if (moved && req.method === 'GET' && visibleTo(moved, caller)) {
      const rest = req.path.split('/').slice(5).join('/');
      const location = new URL(`/api/v4/projects/${moved.id}${rest ? `/${rest}` : ''}`, baseUrl);
      location.search = req.url.search;
      return { status: 301, headers: { location: location.toString() }, body: { message: '301 Moved Permanently' } };
    }
    return PROJECT_NOT_FOUND;
  }

  /** The project whose hooks the caller may administer (Maintainer or above). */
  function hookProject(req: FakeRequest, caller: TokenRecord | null): Project | FakeResponse {
    const project = findProject(req, caller);
    if (!('hooks' in project)) return project;
    return project.accessLevel >= HOOKS_MIN_ACCESS_LEVEL ? project : FORBIDDEN;
  }

  function findHook(project: Project, rawId: string): StoredHook | FakeResponse {
    if (!/^\d+$/.test(rawId)) return badParam('hook_id is invalid');
    return project.hooks.find((h) => h.id === Number(rawId)) ?? NOT_FOUND;
  }

  function namespaceId(path: string): number {
    if (!namespaceIds.has(path)) namespaceIds.set(path, namespaceIds.size + 1);
    return namespaceIds.get(path)!;
  }

  function projectJson(p: Project, simple: boolean) {
    const segments = p.pathWithNamespace.split('/');
    const path = segments.at(-1)!;
    const namespacePath = segments.slice(0, -1).join('/');
    const webUrl = `${baseUrl}/${p.pathWithNamespace}`;
    const base = {
      id: p.id,
      description: null,
      name: path,
      name_with_namespace: segments.join(' / '),
      path,
      path_with_namespace: p.pathWithNamespace,
      created_at: p.createdAt,
      default_branch: p.defaultBranch,
      tag_list: [],
      topics: [],
      ssh_url_to_repo: `git@${new URL(baseUrl).hostname}:${p.pathWithNamespace}.git`,
      http_url_to_repo: `${webUrl}.git`,
      web_url: webUrl,
      readme_url: null,
      forks_count: 0,
      avatar_url: null,
      star_count: 0,
      last_activity_at: p.createdAt,
      namespace: {
        id: namespaceId(namespacePath),
        name: segments.at(-2) ?? '',
        path: segments.at(-2) ?? '',
        kind: 'group',
        full_path: namespacePath,
        parent_id: null,
        avatar_url: null,
        web_url: `${baseUrl}/groups/${namespacePath}`,
      },
    };
    if (simple) return base;
    return {
      ...base,
      visibility: p.visibility,
      archived: false,
      empty_repo: p.defaultBranch === null,
      _links: {
        self: `${baseUrl}/api/v4/projects/${p.id}`,
        repo_branches: `${baseUrl}/api/v4/projects/${p.id}/repository/branches`,
        members: `${baseUrl}/api/v4/projects/${p.id}/members`,
      },
      permissions: { project_access: p.accessLevel > 0 ? { access_level: p.accessLevel, notification_level: 3 } : null, group_access: null },
    };
  }

  function hookJson(h: StoredHook) {
    const { token: _writeOnly, ...visible } = h;
    // Once the backoff is over GitLab delivers again, and says so (WebHooks::AutoDisabling#alert_status).
    const backoffOver = h.alert_status === 'temporarily_disabled' && h.disabled_until !== null && Date.parse(h.disabled_until) <= now();
    const alert = backoffOver ? { alert_status: 'executable' } : {};
    return { ...visible, ...alert, repository_update_events: false, url_variables: [], custom_headers: [], custom_webhook_template: null };
  }

  function pageUrl(req: FakeRequest, changes: Record<string, string>, drop: string[] = []): string {
    const url = new URL(req.path, baseUrl);
    url.search = req.url.search;
    for (const key of drop) url.searchParams.delete(key);
    for (const [key, value] of Object.entries(changes)) url.searchParams.set(key, value);
    return url.toString();
  }

  let endless: { operation: 'listHooks' | 'listProjects'; mode: 'onward' | 'same' } | null = null;

  const perPageOf = (req: FakeRequest) => Math.min(100, positiveInt(req.query.get('per_page')) ?? 20);

  /** Offset paging with GitLab's X-* headers and Link; totals dropped for very large sets. */
  function offsetPage<T>(req: FakeRequest, items: T[]): { items: T[]; headers: Record<string, string> } {
    const perPage = perPageOf(req);
    const page = positiveInt(req.query.get('page')) ?? 1;
    const totalPages = Math.max(1, Math.ceil(items.length / perPage));
    const counted = items.length <= OFFSET_TOTAL_LIMIT;
    const links: Record<string, string> = {};
    if (page > 1) links.prev = pageUrl(req, { page: String(page - 1), per_page: String(perPage) });
    if (page < totalPages) links.next = pageUrl(req, { page: String(page + 1), per_page: String(perPage) });
    links.first = pageUrl(req, { page: '1', per_page: String(perPage) });
    if (counted) links.last = pageUrl(req, { page: String(totalPages), per_page: String(perPage) });
    return {
      items: items.slice((page - 1) * perPage, page * perPage),
      headers: {
        'x-page': String(page),
        'x-per-page': String(perPage),
        'x-next-page': page < totalPages ? String(page + 1) : '',
        'x-prev-page': page > 1 ? String(page - 1) : '',
        ...(counted ? { 'x-total': String(items.length), 'x-total-pages': String(totalPages) } : {}),
        link: linkHeader(links),
      },
    };
  }

  function listProjects(req: FakeRequest, caller: TokenRecord | null): FakeResponse {
    const minAccessLevel = Number(req.query.get('min_access_level') ?? 0);
    const membership = coerceBoolean(req.query.get('membership') ?? undefined) === true;
    const simple = coerceBoolean(req.query.get('simple') ?? undefined) === true;
    let visible = [...projects.values()]
      .filter((p) => visibleTo(p, caller))
      .filter((p) => (!membership && minAccessLevel === 0) || (p.accessLevel > 0 && p.accessLevel >= minAccessLevel));

    if (req.query.get('pagination') === 'keyset') {
      if ((req.query.get('order_by') ?? 'created_at') !== 'id') {
        return { status: 405, body: { error: 'Keyset pagination is not yet available for this type of request' } };
      }
      const ascending = req.query.get('sort') === 'asc';
      const after = Number(req.query.get('id_after') ?? 0);
      const before = Number(req.query.get('id_before') ?? Infinity);
      if (endless?.operation === 'listProjects') {
        const madeUp = (id: number): Project => ({ id, pathWithNamespace: `endless/p-${id}`, defaultBranch: 'main', accessLevel: 40, visibility: 'private', createdAt: isoNow(), hooks: [] });
        const highest = Math.max(after, ...visible.map((p) => p.id)) + 10_000;
        const real = visible.filter((p) => p.id > after && p.id < before).sort((a, b) => (ascending ? a.id - b.id : b.id - a.id));
        const perPage = perPageOf(req);
        const ids = ascending ? Array.from({ length: perPage }, (_, i) => after + 1 + i).filter((id) => id < before) : [Math.min(highest, before - 1)];
        const page = ascending ? ids.map((id) => real.find((p) => p.id === id) ?? madeUp(id)) : ids.map(madeUp);
        const last = page.at(-1);
        const cursorParam = ascending ? 'id_after' : 'id_before';
        const headers: Record<string, string> = last ? { link: linkHeader({ next: pageUrl(req, { [cursorParam]: String(last.id) }, [cursorParam, 'page']) }) } : {};
        return { status: 200, headers, body: page.map((p) => projectJson(p, simple)) };
      }
      // id_after / id_before are filters of GET /projects in either order; the keyset cursor is the one the sort moves.
      visible = visible.filter((p) => p.id > after && p.id < before).sort((a, b) => (ascending ? a.id - b.id : b.id - a.id));
      const page = visible.slice(0, perPageOf(req));
      // The pager links onward whenever the page is non-empty; an empty page ends the walk.
      const last = page.at(-1);
      const cursorParam = ascending ? 'id_after' : 'id_before';
      const headers: Record<string, string> = last ? { link: linkHeader({ next: pageUrl(req, { [cursorParam]: String(last.id) }, [cursorParam, 'page']) }) } : {};
      return { status: 200, headers, body: page.map((p) => projectJson(p, simple)) };
    }

    // Offset mode orders by created_at descending by default, which is id descending here.
    const { items, headers } = offsetPage(req, visible.sort((a, b) => b.id - a.id));
    return { status: 200, headers, body: items.map((p) => projectJson(p, simple)) };
  }

  /** The hook fields of a POST or PUT body (query parameters count too, as in Grape), or the 400. */
  function hookParams(req: FakeRequest): Partial<StoredHook> | FakeResponse {
    const params: Record<string, unknown> = { ...Object.fromEntries(req.query), ...(req.body && typeof req.body === 'object' ? (req.body as object) : {}) };
    const out: Partial<StoredHook> = {};
    for (const key of ['url', 'token', 'name', 'description', 'push_events_branch_filter'] as const) {
      const value = params[key];
      if (value === undefined) continue;
      if (typeof value !== 'string') return badParam(`${key} is invalid`);
      out[key] = value;
    }
    for (const key of [...HOOK_EVENT_FLAGS, 'enable_ssl_verification'] as const) {
      const value = coerceBoolean(params[key]);
      if (value === 'invalid') return badParam(`${key} is invalid`);
      if (value !== undefined) out[key] = value;
    }
    const strategy = params.branch_filter_strategy;
    if (strategy !== undefined) {
      if (!BRANCH_FILTER_STRATEGIES.includes(strategy as StoredHook['branch_filter_strategy'])) return badParam('branch_filter_strategy does not have a valid value');
      out.branch_filter_strategy = strategy as StoredHook['branch_filter_strategy'];
    }
    return out;
  }

  /** The model validations GitLab runs on save. */
  function hookInvalid(hook: StoredHook): FakeResponse | undefined {
    if (!isHttpUrl(hook.url)) return { status: 422, body: { error: 'Invalid url given' } };
    if (hook.token?.includes('\n')) return { status: 422, body: { message: { token: ['is invalid'] } } };
    return undefined;
  }

  server
    .route('GET', '/api/v4/personal_access_tokens/self', 'tokenSelf', api((_req, caller) => {
      const t = caller!;
      return {
        status: 200,
        body: {
          id: t.id,
          name: `token-${t.id}`,
          revoked: t.revoked,
          created_at: t.createdAt,
          description: null,
          scopes: t.scopes,
          user_id: t.userId,
          last_used_at: isoNow(),
          active: t.active ?? true,
          expires_at: t.expiresAt,
        },
      };
    }, { anyScope: true }))
    .route('GET', '/api/v4/user', 'currentUser', api((_req, caller) => {
      const t = caller!;
      return {
        status: 200,
        body: { id: t.userId, username: t.username, name: t.username, state: 'active', locked: false, avatar_url: null, web_url: `${baseUrl}/${t.username}`, created_at: t.createdAt, bot: false },
      };
    }, { extraScopes: ['read_user'] }))
    .route('GET', '/api/v4/projects', 'listProjects', api(listProjects, { anonymous: true }))
    .route('GET', '/api/v4/projects/:id', 'getProject', api((req, caller) => {
      const project = findProject(req, caller);
      if (!('hooks' in project)) return project;
      return { status: 200, body: projectJson(project, false) };
    }, { anonymous: true }))
    .route('GET', '/api/v4/projects/:id/hooks', 'listHooks', api((req, caller) => {
      const project = hookProject(req, caller);
      if (!('hooks' in project)) return project;
      if (endless?.operation === 'listHooks') {
        const perPage = perPageOf(req);
        const page = positiveInt(req.query.get('page')) ?? 1;
        const next = endless.mode === 'same' ? page : page + 1;
        const madeUp = { project_id: project.id, url: 'https://hooks.example/endless', push_events: true, alert_status: 'executable', disabled_until: null } as unknown as StoredHook;
        const hooks = Array.from({ length: perPage }, (_, i) => project.hooks[(page - 1) * perPage + i] ?? { ...madeUp, id: 1_000_000 + (page - 1) * perPage + i });
        return { status: 200, headers: { 'x-page': String(page), 'x-per-page': String(perPage), 'x-next-page': String(next), link: linkHeader({ next: pageUrl(req, { page: String(next), per_page: String(perPage) }) }) }, body: hooks.map(hookJson) };
      }
      const { items, headers } = offsetPage(req, project.hooks);
      return { status: 200, headers, body: items.map(hookJson) };
    }))
    .route('GET', '/api/v4/projects/:id/hooks/:hookId', 'getHook', api((req, caller) => {
      const project = hookProject(req, caller);
      if (!('hooks' in project)) return project;
      const hook = findHook(project, req.params.hookId!);
      return 'project_id' in hook ? { status: 200, body: hookJson(hook) } : hook;
    }))
    .route('POST', '/api/v4/projects/:id/hooks', 'createHook', api((req, caller) => {
      const project = hookProject(req, caller);
      if (!('hooks' in project)) return project;
      const params = hookParams(req);
      if ('status' in params) return params;
      if (params.url === undefined) return badParam('url is missing');
      const hook: StoredHook = {
        id: nextHookId++,
        project_id: project.id,
        url: params.url,
        name: null,
        description: null,
        push_events_branch_filter: null,
        branch_filter_strategy: 'wildcard',
        ...(Object.fromEntries(HOOK_EVENT_FLAGS.map((f) => [f, f === 'push_events'])) as Record<HookEventFlag, boolean>),
        enable_ssl_verification: true,
        alert_status: 'executable',
        disabled_until: null,
        created_at: isoNow(),
        ...params,
        token: params.token || undefined,
      };
      const invalid = hookInvalid(hook);
      if (invalid) return invalid;
      project.hooks.push(hook);
      return { status: 201, body: hookJson(hook) };
    }))
    .route('PUT', '/api/v4/projects/:id/hooks/:hookId', 'updateHook', api((req, caller) => {
      const project = hookProject(req, caller);
      if (!('hooks' in project)) return project;
      const hook = findHook(project, req.params.hookId!);
      if (!('project_id' in hook)) return hook;
      const params = hookParams(req);
      if ('status' in params) return params;
      if (Object.keys(params).length === 0) return badParam('No parameters provided');
      const updated: StoredHook = { ...hook, ...params };
      // A new URL without a token drops the old token: it was a secret for the old receiver.
      if (params.url !== undefined && params.url !== hook.url && params.token === undefined) updated.token = undefined;
      if (params.token !== undefined) updated.token = params.token || undefined;
      const invalid = hookInvalid(updated);
      if (invalid) return invalid;
      // Saving a hook re-enables it (contract §2.5 leaves the real trigger unconfirmed; the adapter relies on re-saving).
      updated.alert_status = 'executable';
      updated.disabled_until = null;
      Object.assign(hook, updated);
      return { status: 200, body: hookJson(hook) };
    }))
    .route('DELETE', '/api/v4/projects/:id/hooks/:hookId', 'deleteHook', api((req, caller) => {
      const project = hookProject(req, caller);
      if (!('hooks' in project)) return project;
      const hook = findHook(project, req.params.hookId!);
      if (!('project_id' in hook)) return hook;
      project.hooks.splice(project.hooks.indexOf(hook), 1);
      return { status: 204 };
    }));

  function projectOrThrow(id: number): Project {
    const project = projects.get(id);
    if (!project) throw new Error(`fake GitLab has no project ${id}`);
    return project;
  }

  function hookOrThrow(projectId: number, hookId: number): StoredHook {
    const hook = projectOrThrow(projectId).hooks.find((h) => h.id === hookId);
    if (!hook) throw new Error(`fake GitLab project ${projectId} has no hook ${hookId}`);
    return hook;
  }

  return {
    url: baseUrl,
    server,
    addToken({ token, username, scopes, active, revoked = false, expiresAt, userId }) {
      const id = userId ?? userIds.get(username) ?? nextUserId++;
      userIds.set(username, id);
      tokens.set(token, { id: nextTokenId++, token, userId: id, username, scopes: [...scopes], active, revoked, expiresAt: expiresAt ?? null, createdAt: isoNow() });
    },
    revokeToken(token) {
      const record = tokens.get(token);
      if (!record) throw new Error('fake GitLab never issued that token');
      record.revoked = true;
    },
    addProject({ id, pathWithNamespace, defaultBranch = 'main', accessLevel = 40, visibility = 'private' }) {
      const projectId = id ?? nextProjectId;
      if (projects.has(projectId)) throw new Error(`fake GitLab already has project ${projectId}`);
      nextProjectId = Math.max(nextProjectId, projectId + 1);
      const project: Project = { id: projectId, pathWithNamespace, defaultBranch, accessLevel, visibility, createdAt: isoNow(), hooks: [] };
      projects.set(projectId, project);
      redirects.delete(pathWithNamespace.toLowerCase());
      return { id: projectId, pathWithNamespace, defaultBranch, accessLevel, visibility };
    },
    removeProject(id) {
      projectOrThrow(id);
      projects.delete(id);
      for (const [path, target] of redirects) if (target === id) redirects.delete(path);
    },
    setAccessLevel(id, accessLevel) {
      projectOrThrow(id).accessLevel = accessLevel;
    },
    renameProject(id, newPath) {
      const project = projectOrThrow(id);
      redirects.set(project.pathWithNamespace.toLowerCase(), id);
      redirects.delete(newPath.toLowerCase());
      project.pathWithNamespace = newPath;
    },
    hooks: (projectId) => projectOrThrow(projectId).hooks.map((h) => ({ ...h })),
    setHookAlertStatus(projectId, hookId, status) {
      const hook = hookOrThrow(projectId, hookId);
      hook.alert_status = status;
      // A temporarily disabled hook waits out a backoff, starting at one minute.
      hook.disabled_until = status === 'temporarily_disabled' ? new Date(now() + 60_000).toISOString() : null;
    },
    deleteHookByHand(projectId, hookId) {
      const project = projectOrThrow(projectId);
      project.hooks.splice(project.hooks.indexOf(hookOrThrow(projectId, hookId)), 1);
    },
    listEndlessly(operation, mode = 'onward') {
      endless = operation === null ? null : { operation, mode };
    },
    setRateLimit(limit, periodSeconds = 60) {
      rateLimit.limit = limit;
      rateLimit.periodSeconds = periodSeconds;
    },
    close: () => server.close(),
  };
}
