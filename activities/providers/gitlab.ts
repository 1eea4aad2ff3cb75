import { createRequesterFn, type RequestOptions } from '@gitbeaker/requester-utils';
import { PersonalAccessTokens, ProjectHooks, Projects, Users } from '@gitbeaker/rest';
import { cancellableSleep, type Outbound } from '../outbound.ts';
import { messageExcerpt, parseAnswer, refusedUnparsed } from './answer.ts';
import {
  cappedPages,
  HOOK_LISTING_CAPS,
  ListingTooLongError,
  ProviderHttpError,
  parseRetryAfter,
  rateLimitPause,
  type HookSpec,
  type ProviderAdapter,
  type ProviderHook,
  type ProviderRepository,
  type ProviderTarget,
  type RepositoryPage,
  type ValidationOutcome,
  storableRepositories,
  storableRepository,
} from './port.ts';

export const GITLAB_DEFAULT_BASE_URL = 'https://gitlab.com';
/** Scopes a GitLab token needs: hooks and project listing (api), identity (read_user), repository metadata. */
export const GITLAB_REQUIRED_SCOPES = ['api', 'read_user', 'read_repository'] as const;

/** Project hook event flags; a hook spec names the ones to turn on, every other one is turned off. */
const HOOK_EVENT_FLAGS = [
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

/** Maintainer: the lowest role that may manage project hooks. */
const HOOK_ADMIN_ACCESS_LEVEL = 40;
/** GitLab's largest page size. */
const MAX_PER_PAGE = 100;
/** Below this share of the window's budget, the next call waits for the window to reset. */
const RATE_LIMIT_RESERVE = 0.05;

export interface GitlabClientOptions {
  /** Every call goes out through it (activities/outbound.ts). */
  outbound: Outbound;
  /** How the client waits out an exhausted rate-limit window (tests pass a fake clock's). */
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

/**
 * A JSON answer's value, counted first (parseAnswer: one too costly to parse is refused unparsed);
 * another's text. An error status wins over its body: one too costly to parse is left unparsed and
 * the status decides (a 429/503 stays throttled/unavailable and is retried), as the Azure DevOps SDK's.
 */
async function readBody(response: Response, origin: string): Promise<unknown> {
  if (response.status === 204) return null;
  const type = (response.headers.get('content-type') ?? '').split(';')[0]!.trim();
  if (type !== 'application/json') return response.text();
  try {
    return parseAnswer('gitlab', origin, new Uint8Array(await response.arrayBuffer())) ?? {};
  } catch (error) {
    if (response.ok || !refusedUnparsed(error)) throw error;
    return undefined;
  }
}

function gitlabErrorMessage(body: unknown, status: number): string {
  if (body && typeof body === 'object') {
    const b = body as { error?: unknown; error_description?: unknown; message?: unknown };
    if (typeof b.error_description === 'string') return messageExcerpt(b.error_description);
    // GitLab's validation errors are objects ({"url":["is blocked"]}): rendered shallowly, never stringified whole.
    if (b.message !== undefined && b.message !== null) return messageExcerpt(b.message);
    if (typeof b.error === 'string') return messageExcerpt(b.error);
  }
  if (typeof body === 'string' && body.trim()) return body.trim().slice(0, 500);
  return `HTTP ${status}`;
}

/**
 * Reads RateLimit-* from every answer and holds the next call back once the window is nearly spent:
 * a short wait in place, a longer one as a throttled failure the retry policy waits out.
 */
function rateLimitGate(sleep: (ms: number) => Promise<void>, now: () => number) {
  let resumeAt = 0;
  return {
    async beforeCall(): Promise<void> {
      await rateLimitPause('gitlab', resumeAt - now(), sleep);
    },
    observe(headers: Headers): void {
      const limit = Number(headers.get('ratelimit-limit'));
      const remaining = Number(headers.get('ratelimit-remaining'));
      const reset = Number(headers.get('ratelimit-reset'));
      // Only throttled endpoints carry the headers; the others leave the gate as it is.
      if (!(limit > 0) || !headers.has('ratelimit-remaining') || !Number.isFinite(remaining) || !(reset > 0)) return;
      resumeAt = remaining < limit * RATE_LIMIT_RESERVE ? reset * 1000 : 0;
    },
  };
}

/**
 * gitbeaker's own handler retries 429 and 502 ten times within ~0.3 s and ignores Retry-After.
 * This one makes a single attempt and throws ProviderHttpError with Retry-After, so the activity's
 * retry policy decides when to try again.
 */
function singleAttemptHandler(gate: ReturnType<typeof rateLimitGate>, outbound: Outbound) {
  return async (endpoint: string, options?: RequestOptions): Promise<{ body: unknown; headers: Record<string, string>; status: number }> => {
    const { prefixUrl, searchParams, method, headers, body: payload, signal } = options ?? {};
    const base = prefixUrl ? (prefixUrl.endsWith('/') ? prefixUrl : `${prefixUrl}/`) : undefined;
    const url = new URL(endpoint, base);
    url.search = (searchParams as string | undefined) ?? '';
    await gate.beforeCall();
    if (payload !== undefined && typeof payload !== 'string') throw new Error('GitLab form uploads are not supported');
    const response = await outbound.fetch(url, { method, headers, body: payload, signal });
    gate.observe(response.headers);
    const body = await readBody(response, url.origin);
    if (!response.ok) {
      throw new ProviderHttpError('gitlab', response.status, gitlabErrorMessage(body, response.status), parseRetryAfter(response.headers.get('retry-after')));
    }
    return { body, headers: Object.fromEntries(response.headers.entries()), status: response.status };
  };
}

export function createGitlabClient(baseUrl: string, token: string, options: GitlabClientOptions) {
  const gate = rateLimitGate(options.sleep ?? cancellableSleep, options.now ?? Date.now);
  const requesterFn = createRequesterFn((_, reqo) => Promise.resolve(reqo), singleAttemptHandler(gate, options.outbound) as never);
  const resourceOptions = { host: baseUrl, token, requesterFn, queryTimeout: 30_000 };
  // Only the resources the adapter uses: `new Gitlab()` builds all of gitbeaker's ~200 (~2 ms of
  // CPU), and an adapter is made for every attach step and listing.
  const projects = new Projects(resourceOptions);
  return { PersonalAccessTokens: new PersonalAccessTokens(resourceOptions), Users: new Users(resourceOptions), Projects: projects, ProjectHooks: new ProjectHooks(resourceOptions), requester: projects.requester };
}

interface GitlabProject extends Record<string, unknown> {
  id: number;
  path_with_namespace: string;
  default_branch?: string | null;
  web_url?: string;
}

interface GitlabHook extends Record<string, unknown> {
  id: number;
  url: string;
  alert_status?: string;
  disabled_until?: string | null;
}

/** The project as it can be stored; undefined when its id cannot be (storableRepository). */
function toRepository(project: GitlabProject): ProviderRepository | undefined {
  return storableRepository({
    externalId: String(project.id),
    fullName: project.path_with_namespace,
    ...(project.default_branch ? { defaultBranch: project.default_branch } : {}),
    ...(project.web_url ? { webUrl: project.web_url } : {}),
  });
}

function toHook(hook: GitlabHook): ProviderHook {
  // Auto-disabling is off on many self-managed instances, which then omit the field.
  const healthy = hook.alert_status === undefined || hook.alert_status === 'executable';
  return {
    id: String(hook.id),
    url: hook.url,
    events: HOOK_EVENT_FLAGS.filter((flag) => hook[flag] === true),
    healthy,
    ...(healthy ? {} : { disabledReason: `alert_status ${hook.alert_status}${hook.disabled_until ? ` until ${hook.disabled_until}` : ''}` }),
  };
}

/**
 * The full hook body. `token` is always sent: GitLab clears the stored token when the URL changes
 * without one, and a spec without a secret means no token.
 */
function hookBody(spec: HookSpec) {
  const unknown = spec.events.filter((e) => !(HOOK_EVENT_FLAGS as readonly string[]).includes(e));
  if (unknown.length > 0) throw new Error(`not GitLab hook events: ${unknown.join(', ')}`);
  return {
    ...Object.fromEntries(HOOK_EVENT_FLAGS.map((flag) => [flag, spec.events.includes(flag)])),
    enable_ssl_verification: true,
    token: spec.secret ?? '',
  };
}

/** The URL of a page's `Link: <…>; rel="next"`, undefined on the last page. */
function nextLink(link: string | undefined): URL | undefined {
  const href = /<([^>]+)>;\s*rel="next"/.exec(link ?? '')?.[1];
  return href ? new URL(href) : undefined;
}

/** The id_after of a keyset page's `Link: <…>; rel="next"`, which GitLab sends whenever the page was non-empty. */
function nextIdAfter(link: string | undefined): string | undefined {
  return nextLink(link)?.searchParams.get('id_after') ?? undefined;
}

/** The page of an offset page's `Link: <…>; rel="next"`, undefined on the last page; one that does not move on fails. */
function nextOffsetPage(link: string | undefined, page: number): number | undefined {
  const href = nextLink(link);
  if (!href) return undefined;
  const linked = href.searchParams.get('page');
  const next = Number(linked);
  if (!Number.isSafeInteger(next) || next <= page) {
    throw new ListingTooLongError(`gitlab's listing does not move on: the page after page ${page} links to page ${linked}`);
  }
  return next;
}

/**
 * Repository-listing cursors. `ids:<after>-<before>`: a keyset walk over project ids in
 * (after, before), `before` empty for the walk to the end (a plain number is the first version's
 * id_after cursor). `split:<firstId>-<lastId>`: after a full first page that held those ids, find
 * the highest id and split the rest of the id space into ranges walked in parallel.
 */
type ListingCursor = { kind: 'ids'; after: number; before?: number } | { kind: 'split'; firstId: number; lastId: number };

function parseListingCursor(cursor: string | undefined): ListingCursor {
  if (cursor === undefined) return { kind: 'ids', after: 0 };
  const split = /^split:(\d+)-(\d+)$/.exec(cursor);
  if (split) return { kind: 'split', firstId: Number(split[1]), lastId: Number(split[2]) };
  const ids = /^(?:ids:)?(\d+)(?:-(\d*))?$/.exec(cursor);
  if (!ids) throw new Error(`invalid GitLab repository cursor ${JSON.stringify(cursor)}`);
  return { kind: 'ids', after: Number(ids[1]), ...(ids[2] ? { before: Number(ids[2]) } : {}) };
}

const idsCursor = (after: number, before?: number) => `ids:${after}-${before ?? ''}`;

/** Id ranges a listing splits the rest of the projects into, at most. */
const MAX_RANGES = 8;

/**
 * The ids after a full first page (`firstId`..`lastId`) up to the highest, split into ranges of
 * about the same number of projects judging by the first page's density; the last range is
 * open-ended so projects created meanwhile are not missed.
 */
function splitRemaining(firstId: number, lastId: number, maxId: number): string[] {
  const estimatedPages = Math.ceil((maxId - lastId) / Math.max(1, lastId - firstId + 1));
  const count = Math.max(1, Math.min(MAX_RANGES, estimatedPages));
  const step = Math.ceil((maxId - lastId) / count);
  return Array.from({ length: count }, (_, i) => {
    const after = lastId + i * step;
    return i === count - 1 ? idsCursor(after) : idsCursor(after, after + step + 1);
  });
}

const isNotFound = (error: unknown) => error instanceof ProviderHttpError && error.status === 404;

export function createGitlabAdapter(target: ProviderTarget, options: GitlabClientOptions): ProviderAdapter {
  if (!target.secret) throw new Error('a GitLab connection needs a token');
  const api = createGitlabClient(target.baseUrl, target.secret, options);
  return {
    provider: 'gitlab',
    async validate(): Promise<ValidationOutcome> {
      let token;
      try {
        token = await api.PersonalAccessTokens.show();
      } catch (error) {
        if (error instanceof ProviderHttpError && error.status === 401) {
          const detail = error.message;
          if (/expired/i.test(detail)) return { ok: false, reason: `token expired: GitLab says "${detail}"` };
          if (/revoked/i.test(detail)) return { ok: false, reason: `token revoked: GitLab says "${detail}"` };
          return { ok: false, reason: `token rejected by GitLab (401): ${detail}` };
        }
        throw error;
      }
      if (token.revoked) return { ok: false, reason: 'token revoked' };
      if (token.expires_at && Date.parse(`${token.expires_at}T23:59:59Z`) < Date.now()) {
        return { ok: false, reason: `token expired on ${token.expires_at}` };
      }
      if (token.active === false) return { ok: false, reason: 'token is not active' };
      const scopes = new Set((token.scopes ?? []) as string[]);
      const missing = GITLAB_REQUIRED_SCOPES.filter((s) => !scopes.has(s));
      if (missing.length > 0) {
        return { ok: false, reason: `token is missing scope${missing.length > 1 ? 's' : ''} ${missing.map((s) => `\`${s}\``).join(', ')}` };
      }
      const user = await api.Users.showCurrentUser();
      return { ok: true, identity: { account: String(user.username), accountId: String(user.id) } };
    },

    /**
     * Keyset pages ordered by id. After a full first page, one call finds the highest id and the
     * rest of the id space is split into ranges (`id_after`/`id_before` are filters of
     * GET /projects), each walked with its own keyset cursor, in parallel.
     */
    async listRepositoriesPage({ cursor }): Promise<RepositoryPage> {
      const parsed = parseListingCursor(cursor);
      // Projects.all would walk every page; the cache refresh wants one page per call and the next link's cursor.
      const projects = (sort: 'asc' | 'desc', perPage: number, after: number, before?: number) =>
        api.requester.get<GitlabProject[]>('projects', {
          searchParams: {
            membership: true,
            minAccessLevel: HOOK_ADMIN_ACCESS_LEVEL,
            simple: true,
            pagination: 'keyset',
            orderBy: 'id',
            sort,
            perPage,
            ...(after > 0 ? { idAfter: after } : {}),
            ...(before !== undefined ? { idBefore: before } : {}),
          },
          signal: AbortSignal.timeout(30_000),
        });
      if (parsed.kind === 'split') {
        const highest = (await projects('desc', 1, parsed.lastId)).body[0]?.id;
        return { repositories: [], ...(highest === undefined ? {} : { fanOut: splitRemaining(parsed.firstId, parsed.lastId, highest) }), apiCalls: 1 };
      }
      const { after, before } = parsed;
      const response = await projects('asc', MAX_PER_PAGE, after, before);
      const page = { ...storableRepositories(response.body.map(toRepository)), apiCalls: 1 };
      const firstId = response.body[0]?.id;
      const lastId = response.body.at(-1)?.id;
      // GitLab links onward from any non-empty page; a range is also done once its last id is reached.
      if (!nextIdAfter(response.headers.link) || firstId === undefined || lastId === undefined) return page;
      if (before !== undefined && lastId >= before - 1) return page;
      if (cursor === undefined && response.body.length === MAX_PER_PAGE) return { ...page, nextCursor: `split:${firstId}-${lastId}` };
      return { ...page, nextCursor: idsCursor(lastId, before) };
    },

    async getRepository(ref) {
      try {
        return toRepository((await api.Projects.show(ref.externalId)) as GitlabProject) ?? null;
      } catch (error) {
        if (isNotFound(error)) return null;
        throw error;
      }
    },

    /**
     * Page by page along the Link header's next page (as gitbeaker's ProjectHooks.all followed it),
     * but capped (HOOK_LISTING_CAPS): gitbeaker follows a server that always links onward for ever,
     * copying the list it holds at each page.
     */
    async listHooks(ref) {
      const path = `projects/${encodeURIComponent(ref.externalId)}/hooks`;
      const hooks = await cappedPages<GitlabHook, number>('gitlab', HOOK_LISTING_CAPS, 1, async (page) => {
        const response = await api.requester.get<GitlabHook[]>(path, { searchParams: { perPage: MAX_PER_PAGE, page }, signal: AbortSignal.timeout(30_000) });
        if (!Array.isArray(response.body)) throw new Error(`GitLab answered the hooks of project ${ref.externalId} with something other than a list`);
        return { values: response.body, next: nextOffsetPage(response.headers.link, page) };
      });
      return hooks.map(toHook);
    },

    async createHook(ref, spec) {
      return toHook((await api.ProjectHooks.add(ref.externalId, spec.url, hookBody(spec))) as GitlabHook);
    },

    async updateHook(ref, hookId, spec) {
      // Saving the whole hook also re-enables one GitLab auto-disabled.
      return toHook((await api.ProjectHooks.edit(ref.externalId, Number(hookId), spec.url, hookBody(spec))) as GitlabHook);
    },

    async deleteHook(ref, hookId) {
      try {
        await api.ProjectHooks.remove(ref.externalId, Number(hookId));
        return true;
      } catch (error) {
        if (isNotFound(error)) return false;
        throw error;
      }
    },
  };
}
