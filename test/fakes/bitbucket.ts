import { randomBytes } from 'node:crypto';
import { FakeHttpServer, type FakeHandler, type FakeRequest, type FakeResponse } from './base.ts';

/**
 * A Bitbucket Data Center instance on loopback, following provider-contracts.md §3 and the §5
 * checklist: Bearer-only HTTP access tokens with X-AUSERNAME, the anonymous application-properties,
 * the start/limit paged envelope clamped to a maximum page size, permission-filtered repository and
 * project listings, 401 for insufficient permission, and repository webhooks.
 */

export type ProjectPermission = 'PROJECT_READ' | 'PROJECT_WRITE' | 'PROJECT_ADMIN';
export type RepoPermission = 'REPO_READ' | 'REPO_WRITE' | 'REPO_ADMIN';

/** The Data Center event keys a webhook may subscribe to (§3.5); Cloud keys such as `repo:push` are not among them. */
export const WEBHOOK_EVENT_KEYS = [
  'repo:refs_changed',
  'repo:modified',
  'repo:forked',
  'repo:comment:added',
  'repo:comment:edited',
  'repo:comment:deleted',
  'mirror:repo_synchronized',
  'project:modified',
  'pr:opened',
  'pr:from_ref_updated',
  'pr:to_ref_updated',
  'pr:modified',
  'pr:merged',
  'pr:declined',
  'pr:deleted',
  'pr:reviewer:updated',
  'pr:reviewer:approved',
  'pr:reviewer:unapproved',
  'pr:reviewer:needs_work',
  'pr:comment:added',
  'pr:comment:edited',
  'pr:comment:deleted',
] as const;

/** A stored repository webhook, with its configuration as given (the real secret). */
export interface StoredWebhook {
  id: number;
  name: string;
  url: string;
  active: boolean;
  events: string[];
  configuration: Record<string, string>;
  sslVerificationRequired: boolean;
  createdDate: number;
  updatedDate: number;
  scopeType: 'repository';
}

/** Token-bucket limiter state. It never refills on its own, so tests stay deterministic: call `rateLimit` again to refill. */
export interface RateLimitBucket {
  tokens: number;
  capacity?: number;
  /** Tokens added per interval (reported in X-RateLimit-FillRate). */
  fillRate?: number;
  intervalSeconds?: number;
}

export interface FakeBitbucket {
  /** The instance base URL, e.g. http://127.0.0.1:PORT[/ctx]; REST lives under /rest/api/latest and /rest/api/1.0. */
  url: string;
  server: FakeHttpServer;
  /**
   * An HTTP access token. A project permission implies the same repository level on every
   * repository (PROJECT_READ gives REPO_READ …); `projectPermission: null` makes a repository token.
   * Defaults: PROJECT_READ and REPO_ADMIN, what forgelink needs.
   */
  addToken(token: { token: string; username: string; projectPermission?: ProjectPermission | null; repoPermission?: RepoPermission }): void;
  addProject(project: { key: string; name: string }): { id: number; key: string };
  addRepository(repo: { projectKey: string; slug: string; name?: string; id?: number; defaultBranch?: string }): { id: number; slug: string; projectKey: string };
  removeRepository(id: number): void;
  renameRepository(id: number, newSlug: string): void;
  /** The repository's webhooks as stored, secrets included. */
  webhooks(projectKey: string, slug: string): StoredWebhook[];
  deleteWebhookByHand(projectKey: string, slug: string, id: number): void;
  /** Switches a webhook on or off, as an administrator does in the repository settings. */
  setWebhookActiveByHand(projectKey: string, slug: string, id: number, active: boolean): void;
  /** Turns the admin-enabled rate limiter on (every authenticated call takes a token) or off (null). */
  rateLimit(bucket: RateLimitBucket | null): void;
  /**
   * Fault mode: the listing `operation` never ends. Each page is full (the real items, then made-up
   * ones: repositories of the first project with ids from 1,000,000, or webhooks) and says
   * `isLastPage: false`, its nextPageStart moving on (`onward`) or naming the page's own start
   * (`same`); `empty` pages hold no values and move on. null turns it off.
   */
  listEndlessly(operation: 'listRepos' | 'listWebhooks' | null, mode?: 'onward' | 'same' | 'empty'): void;
  close(): Promise<void>;
}

interface Token {
  token: string;
  username: string;
  projectPermission: ProjectPermission | null;
  repoPermission: RepoPermission;
}
interface Project {
  id: number;
  key: string;
  name: string;
}
interface Repository {
  id: number;
  slug: string;
  name: string;
  projectKey: string;
  hierarchyId: string;
  defaultBranch?: string;
  webhooks: StoredWebhook[];
}

const DEFAULT_PAGE_LIMIT = 25;
const API_VERSIONS = ['latest', '1.0'];
const REPO_LEVELS: readonly string[] = ['REPO_READ', 'REPO_WRITE', 'REPO_ADMIN'];
const PROJECT_LEVELS: readonly string[] = ['PROJECT_READ', 'PROJECT_WRITE', 'PROJECT_ADMIN'];
const NOT_PERMITTED = 'You are not permitted to access this resource';

/** Bitbucket's error envelope (RestErrorMessage). */
export function bitbucketError(status: number, message: string, exceptionName: string | null, context: string | null = null, headers?: Record<string, string>): FakeResponse {
  return { status, headers, body: { errors: [{ context, message, exceptionName }] } };
}

function rateLimitHeaders(bucket: Required<RateLimitBucket>): Record<string, string> {
  return {
    'X-RateLimit-Limit': String(bucket.capacity),
    'X-RateLimit-Remaining': String(bucket.tokens),
    'X-RateLimit-Interval-Seconds': String(bucket.intervalSeconds),
    'X-RateLimit-FillRate': String(bucket.fillRate),
  };
}

/** A rate-limited answer, for `server.failNext(operation, n, tooManyRequests(30))`. */
export function tooManyRequests(retryAfterSeconds: number): FakeResponse {
  return bitbucketError(429, 'You have been rate limited: too many requests. Try again later.', null, null, {
    'Retry-After': String(retryAfterSeconds),
    ...rateLimitHeaders({ tokens: 0, capacity: 60, fillRate: 5, intervalSeconds: 1 }),
  });
}

export async function startFakeBitbucket(options: { maxPageSize?: number; version?: string; contextPath?: string } = {}): Promise<FakeBitbucket> {
  const maxPageSize = options.maxPageSize ?? 1000;
  const version = options.version ?? '8.19.1';
  const contextPath = options.contextPath ? `/${options.contextPath.replace(/^\/+|\/+$/g, '')}` : '';
  const tokens = new Map<string, Token>();
  const projects: Project[] = [];
  const repositories = new Map<number, Repository>();
  let nextProjectId = 1;
  let nextRepositoryId = 1;
  let nextWebhookId = 1;
  let bucket: Required<RateLimitBucket> | null = null;

  const server = new FakeHttpServer(() => bitbucketError(404, 'No resource was found at this path.', null));
  await server.start();
  const baseUrl = `${server.url}${contextPath}`;

  const projectByKey = (key: string) => projects.find((p) => p.key.toLowerCase() === key.toLowerCase());
  const repositoryByName = (projectKey: string, slug: string) =>
    [...repositories.values()].find((r) => r.projectKey.toLowerCase() === projectKey.toLowerCase() && r.slug === slug.toLowerCase());

  /** Index in REPO_LEVELS of what the token may do on a repository; -1 for anonymous. */
  function repoLevel(caller: Token | null): number {
    if (!caller) return -1;
    return Math.max(REPO_LEVELS.indexOf(caller.repoPermission), caller.projectPermission ? PROJECT_LEVELS.indexOf(caller.projectPermission) : -1);
  }

  /** The caller of a request: a token, anonymous (null), or the refusal for bad credentials. */
  function authenticate(req: FakeRequest): { caller: Token | null } | FakeResponse {
    const header = req.headers.authorization;
    if (header === undefined) return { caller: null };
    // Project and repository tokens work only with Bearer: as a Basic password they fail like a wrong password.
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const token = bearer ? tokens.get(bearer[1]!) : undefined;
    if (token) return { caller: token };
    return bitbucketError(401, 'Authentication failed. Please check your credentials and try again.', 'com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException');
  }

  /**
   * Wraps a handler with authentication, the rate limiter and X-AUSERNAME. An anonymous endpoint
   * (application-properties) answers whatever the credentials are.
   */
  function api(handler: (req: FakeRequest, caller: Token | null) => FakeResponse, { anonymousEndpoint = false } = {}): FakeHandler {
    return (req) => {
      const auth = authenticate(req);
      if (!('caller' in auth) && !anonymousEndpoint) return auth;
      const caller = 'caller' in auth ? auth.caller : null;
      if (!caller) return handler(req, null);
      const headers: Record<string, string> = { 'X-AUSERNAME': encodeURIComponent(caller.username) };
      if (bucket) {
        if (bucket.tokens <= 0) {
          const limited = tooManyRequests(Math.ceil(bucket.intervalSeconds / bucket.fillRate));
          return { ...limited, headers: { ...limited.headers, ...rateLimitHeaders(bucket), ...headers } };
        }
        bucket.tokens -= 1;
        Object.assign(headers, rateLimitHeaders(bucket));
      }
      const response = handler(req, caller);
      return { ...response, headers: { ...response.headers, ...headers } };
    };
  }

  let endless: { operation: string; mode: 'onward' | 'same' | 'empty' } | null = null;

  /**
   * The paged envelope (§3.2): `limit` clamped to the maximum page size and echoed; `nextPageStart`
   * only while more remain. Listed endlessly (listEndlessly), `madeUp` fills each page past the real items.
   */
  function page<T>(req: FakeRequest, items: T[], listing?: { operation: string; madeUp: (index: number) => T }): FakeResponse {
    const start = integerParam(req.query.get('start'), 0) ?? 0;
    const limit = Math.min(integerParam(req.query.get('limit'), 1) ?? DEFAULT_PAGE_LIMIT, maxPageSize);
    if (listing && endless?.operation === listing.operation) {
      const { mode } = endless;
      const values = mode === 'empty' ? [] : Array.from({ length: limit }, (_, i) => items[start + i] ?? listing.madeUp(start + i));
      return { status: 200, body: { size: values.length, limit, isLastPage: false, start, values, nextPageStart: mode === 'same' ? start : start + limit } };
    }
    const values = items.slice(start, start + limit);
    const isLastPage = start + values.length >= items.length;
    return { status: 200, body: { size: values.length, limit, isLastPage, start, values, ...(isLastPage ? {} : { nextPageStart: start + values.length }) } };
  }

  function projectJson(p: Project) {
    return { key: p.key, id: p.id, name: p.name, public: false, type: 'NORMAL', links: { self: [{ href: `${baseUrl}/projects/${p.key}` }] } };
  }

  function repositoryJson(r: Repository) {
    const project = projectByKey(r.projectKey)!;
    const scmPath = `${project.key.toLowerCase()}/${r.slug}.git`;
    return {
      id: r.id,
      slug: r.slug,
      name: r.name,
      hierarchyId: r.hierarchyId,
      scmId: 'git',
      state: 'AVAILABLE',
      statusMessage: 'Available',
      forkable: true,
      public: false,
      archived: false,
      ...(r.defaultBranch ? { defaultBranch: r.defaultBranch } : {}),
      project: projectJson(project),
      links: {
        clone: [
          { href: `${baseUrl}/scm/${scmPath}`, name: 'http' },
          { href: `ssh://git@${new URL(baseUrl).hostname}:7999/${scmPath}`, name: 'ssh' },
        ],
        self: [{ href: `${baseUrl}/projects/${project.key}/repos/${r.slug}/browse` }],
      },
    };
  }

  const invalidPermission = (permission: string, kind: 'project' | 'repository') =>
    bitbucketError(400, `'${permission}' is not a valid ${kind} permission.`, 'com.atlassian.bitbucket.validation.ArgumentValidationException', 'permission');
  const notPermitted = () => bitbucketError(401, NOT_PERMITTED, 'com.atlassian.bitbucket.AuthorisationException');

  /** The repository a request's path names, or Bitbucket's 404/401 when it is unknown or below `minimum`. */
  function addressedRepository(req: FakeRequest, caller: Token | null, minimum: RepoPermission): Repository | FakeResponse {
    const { projectKey, slug } = req.params as { projectKey: string; slug: string };
    if (!projectByKey(projectKey)) return bitbucketError(404, `Project ${projectKey} does not exist.`, 'com.atlassian.bitbucket.project.NoSuchProjectException');
    const repo = repositoryByName(projectKey, slug);
    if (!repo) return bitbucketError(404, `Repository ${projectKey}/${slug} does not exist.`, 'com.atlassian.bitbucket.repository.NoSuchRepositoryException');
    return repoLevel(caller) >= REPO_LEVELS.indexOf(minimum) ? repo : notPermitted();
  }

  function addressedWebhook(req: FakeRequest, repo: Repository): StoredWebhook | FakeResponse {
    const id = req.params.webhookId!;
    const hook = /^\d+$/.test(id) ? repo.webhooks.find((h) => h.id === Number(id)) : undefined;
    return hook ?? bitbucketError(404, `No webhook with id ${id} exists for this repository.`, 'com.atlassian.bitbucket.webhook.NoSuchWebhookException');
  }

  const webhookJson = (h: StoredWebhook) => ({ ...structuredClone(h), statistics: {} });

  for (const apiVersion of API_VERSIONS) {
    const prefix = `${contextPath}/rest/api/${apiVersion}`;
    const hooksPath = `${prefix}/projects/:projectKey/repos/:slug/webhooks`;
    server
      .route('GET', `${prefix}/application-properties`, 'applicationProperties', api(() => ({
        status: 200,
        body: { version, buildNumber: versionBuildNumber(version), buildDate: '1718000000000', displayName: 'Bitbucket' },
      }), { anonymousEndpoint: true }))
      .route('GET', `${prefix}/repos`, 'listRepos', api((req, caller) => {
        const permission = req.query.get('permission') ?? 'REPO_READ';
        const required = REPO_LEVELS.indexOf(permission);
        if (required < 0) return invalidPermission(permission, 'repository');
        const visible = repoLevel(caller) >= required ? [...repositories.values()] : [];
        visible.sort((a, b) => a.projectKey.localeCompare(b.projectKey) || a.name.localeCompare(b.name) || a.id - b.id);
        return page(req, visible.map(repositoryJson), {
          operation: 'listRepos',
          madeUp: (index) => repositoryJson({ id: 1_000_000 + index, slug: `endless-${index}`, name: `endless-${index}`, projectKey: projects[0]!.key, hierarchyId: 'endless', webhooks: [] }),
        });
      }))
      .route('GET', `${prefix}/projects`, 'listProjects', api((req, caller) => {
        const permission = req.query.get('permission') ?? 'PROJECT_VIEW';
        let allowed: boolean;
        // PROJECT_VIEW is what anyone who can see a repository of the project has.
        if (permission === 'PROJECT_VIEW') allowed = repoLevel(caller) >= 0;
        else if (PROJECT_LEVELS.includes(permission)) allowed = !!caller?.projectPermission && PROJECT_LEVELS.indexOf(caller.projectPermission) >= PROJECT_LEVELS.indexOf(permission);
        else return invalidPermission(permission, 'project');
        return page(req, allowed ? [...projects].sort((a, b) => a.key.localeCompare(b.key)).map(projectJson) : []);
      }))
      .route('GET', `${prefix}/projects/:projectKey/repos/:slug`, 'getRepo', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_READ');
        return isResponse(repo) ? repo : { status: 200, body: repositoryJson(repo) };
      }))
      .route('GET', hooksPath, 'listWebhooks', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_ADMIN');
        const madeUp = (index: number) =>
          webhookJson({ id: 1_000_000 + index, name: `endless-${index}`, url: `https://hooks.example/${index}`, active: true, events: ['repo:refs_changed'], configuration: {}, sslVerificationRequired: true, createdDate: 0, updatedDate: 0, scopeType: 'repository' });
        return isResponse(repo) ? repo : page(req, repo.webhooks.map(webhookJson), { operation: 'listWebhooks', madeUp });
      }))
      .route('POST', hooksPath, 'createWebhook', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_ADMIN');
        if (isResponse(repo)) return repo;
        const input = parseWebhook(req.body);
        if (isResponse(input)) return input;
        const now = Date.now();
        const hook: StoredWebhook = { id: nextWebhookId++, ...input, createdDate: now, updatedDate: now, scopeType: 'repository' };
        repo.webhooks.push(hook);
        return { status: 200, body: webhookJson(hook) };
      }))
      .route('GET', `${hooksPath}/:webhookId`, 'getWebhook', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_ADMIN');
        if (isResponse(repo)) return repo;
        const hook = addressedWebhook(req, repo);
        return isResponse(hook) ? hook : { status: 200, body: webhookJson(hook) };
      }))
      .route('PUT', `${hooksPath}/:webhookId`, 'updateWebhook', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_ADMIN');
        if (isResponse(repo)) return repo;
        const hook = addressedWebhook(req, repo);
        if (isResponse(hook)) return hook;
        const input = parseWebhook(req.body, hook);
        if (isResponse(input)) return input;
        Object.assign(hook, input, { updatedDate: Math.max(Date.now(), hook.updatedDate + 1) });
        return { status: 200, body: webhookJson(hook) };
      }))
      .route('DELETE', `${hooksPath}/:webhookId`, 'deleteWebhook', api((req, caller) => {
        const repo = addressedRepository(req, caller, 'REPO_ADMIN');
        if (isResponse(repo)) return repo;
        const hook = addressedWebhook(req, repo);
        if (isResponse(hook)) return hook;
        repo.webhooks.splice(repo.webhooks.indexOf(hook), 1);
        return { status: 204 };
      }));
  }

  function requireRepository(id: number): Repository {
    const repo = repositories.get(id);
    if (!repo) throw new Error(`no repository ${id}`);
    return repo;
  }

  function requireRepositoryByName(projectKey: string, slug: string): Repository {
    const repo = repositoryByName(projectKey, slug);
    if (!repo) throw new Error(`no repository ${projectKey}/${slug}`);
    return repo;
  }

  return {
    url: baseUrl,
    server,
    listEndlessly(operation, mode = 'onward') {
      endless = operation === null ? null : { operation, mode };
    },
    addToken({ token, username, projectPermission = 'PROJECT_READ', repoPermission = 'REPO_ADMIN' }) {
      tokens.set(token, { token, username, projectPermission, repoPermission });
    },
    addProject({ key, name }) {
      if (projectByKey(key)) throw new Error(`project ${key} exists`);
      const project = { id: nextProjectId++, key: key.toUpperCase(), name };
      projects.push(project);
      return { id: project.id, key: project.key };
    },
    addRepository({ projectKey, slug, name = slug, id, defaultBranch }) {
      const project = projectByKey(projectKey);
      if (!project) throw new Error(`no project ${projectKey}`);
      if (repositoryByName(projectKey, slug)) throw new Error(`repository ${projectKey}/${slug} exists`);
      const repoId = id ?? nextRepositoryId;
      if (repositories.has(repoId)) throw new Error(`repository id ${repoId} is taken`);
      nextRepositoryId = Math.max(nextRepositoryId, repoId + 1);
      const repo: Repository = { id: repoId, slug: slug.toLowerCase(), name, projectKey: project.key, hierarchyId: randomBytes(10).toString('hex'), webhooks: [], ...(defaultBranch ? { defaultBranch } : {}) };
      repositories.set(repoId, repo);
      return { id: repoId, slug: repo.slug, projectKey: project.key };
    },
    removeRepository(id) {
      repositories.delete(requireRepository(id).id);
    },
    renameRepository(id, newSlug) {
      const repo = requireRepository(id);
      repo.slug = newSlug.toLowerCase();
      repo.name = newSlug;
    },
    webhooks(projectKey, slug) {
      return requireRepositoryByName(projectKey, slug).webhooks.map((h) => structuredClone(h));
    },
    deleteWebhookByHand(projectKey, slug, id) {
      const repo = requireRepositoryByName(projectKey, slug);
      const index = repo.webhooks.findIndex((h) => h.id === id);
      if (index < 0) throw new Error(`no webhook ${id} on ${projectKey}/${slug}`);
      repo.webhooks.splice(index, 1);
    },
    setWebhookActiveByHand(projectKey, slug, id, active) {
      const hook = requireRepositoryByName(projectKey, slug).webhooks.find((h) => h.id === id);
      if (!hook) throw new Error(`no webhook ${id} on ${projectKey}/${slug}`);
      hook.active = active;
    },
    rateLimit(next) {
      bucket = next && { capacity: 60, fillRate: 5, intervalSeconds: 1, ...next };
    },
    close: () => server.close(),
  };
}

type WebhookInput = Pick<StoredWebhook, 'name' | 'url' | 'active' | 'events' | 'configuration' | 'sslVerificationRequired'>;

/** Checks a create body, or an update body merged over the stored hook (fields left out keep their value). */
function parseWebhook(body: unknown, existing?: StoredWebhook): WebhookInput | FakeResponse {
  const invalid = (context: string | null, message: string) => bitbucketError(400, message, 'com.atlassian.bitbucket.validation.ArgumentValidationException', context);
  if (!body || typeof body !== 'object' || Array.isArray(body)) return invalid(null, 'A webhook is required in the request body.');
  const b = body as Record<string, unknown>;
  const name = b.name ?? existing?.name;
  const url = b.url ?? existing?.url;
  const events = b.events ?? existing?.events;
  const active = b.active ?? existing?.active ?? true;
  const configuration = b.configuration ?? existing?.configuration ?? {};
  const sslVerificationRequired = b.sslVerificationRequired ?? existing?.sslVerificationRequired ?? true;
  if (typeof name !== 'string' || !name.trim()) return invalid('name', 'A webhook name is required.');
  if (typeof url !== 'string' || !url.trim()) return invalid('url', 'A webhook URL is required.');
  if (!isHttpUrl(url)) return invalid('url', `'${url}' is not a valid http or https URL.`);
  if (!Array.isArray(events) || events.length === 0 || !events.every((e) => typeof e === 'string')) return invalid('events', 'At least one event is required.');
  const unknown = events.filter((e) => !(WEBHOOK_EVENT_KEYS as readonly string[]).includes(e));
  if (unknown.length > 0) return invalid('events', `Unknown event ${unknown.map((e) => `'${e}'`).join(', ')}.`);
  const duplicate = events.find((e, i) => events.indexOf(e) !== i);
  if (duplicate) return invalid('events', `Duplicate event '${duplicate}'.`);
  if (typeof active !== 'boolean') return invalid('active', 'active must be a boolean.');
  if (typeof sslVerificationRequired !== 'boolean') return invalid('sslVerificationRequired', 'sslVerificationRequired must be a boolean.');
  if (!configuration || typeof configuration !== 'object' || Array.isArray(configuration) || !Object.values(configuration).every((v) => typeof v === 'string')) {
    return invalid('configuration', 'configuration must be an object of strings.');
  }
  return { name, url, active, events: [...events] as string[], configuration: { ...(configuration as Record<string, string>) }, sslVerificationRequired };
}

function isHttpUrl(value: string): boolean {
  try {
    return ['http:', 'https:'].includes(new URL(value).protocol);
  } catch {
    return false;
  }
}

/** A non-negative integer query parameter at least `minimum`, or undefined when absent or unusable. */
function integerParam(value: string | null, minimum: number): number | undefined {
  if (value === null || !/^\d+$/.test(value)) return undefined;
  const n = Number(value);
  return n >= minimum ? n : undefined;
}

/** 8.19.1 → "8019001", the shape of Bitbucket's build numbers. */
function versionBuildNumber(version: string): string {
  const [major = 0, minor = 0, patch = 0] = version.split('.').map((part) => Number.parseInt(part, 10) || 0);
  return String(major * 1_000_000 + minor * 1_000 + patch);
}

function isResponse(value: object): value is FakeResponse {
  return typeof (value as { status?: unknown }).status === 'number';
}
