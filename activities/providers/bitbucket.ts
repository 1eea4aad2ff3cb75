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
  type NameCheck,
  type ProviderAdapter,
  type ProviderHook,
  type ProviderRepository,
  type ProviderTarget,
  type RepositoryRef,
  RepositoryNameTakenError,
  type ValidationOutcome,
  storableRepositories,
  storableRepository,
} from './port.ts';

/** The events of forgelink's one repository webhook: pushes, and pull requests opened, source-updated, merged, declined. */
export const BITBUCKET_HOOK_EVENTS = ['repo:refs_changed', 'pr:opened', 'pr:from_ref_updated', 'pr:merged', 'pr:declined'] as const;
export const BITBUCKET_HOOK_NAME = 'forgelink';

/** Bitbucket's default `page.max.*`; a server configured lower clamps and echoes its own limit. */
const PAGE_LIMIT = 1000;
/** Below this many tokens left in the server's rate-limit bucket, calls are spaced out until it refills. */
const RATE_LIMIT_LOW_WATER = 5;

/** The paged envelope of every Bitbucket list (provider-contracts.md §3.2). */
export interface BitbucketPage<T> {
  size: number;
  limit: number;
  isLastPage: boolean;
  start: number;
  nextPageStart?: number;
  values: T[];
}

export interface BitbucketRepository {
  id: number;
  slug: string;
  name: string;
  defaultBranch?: string;
  project: { key: string; id: number; name: string };
  links?: { self?: Array<{ href: string }> };
}

export interface BitbucketWebhook {
  id: number;
  name: string;
  url: string;
  active?: boolean;
  events?: string[];
  configuration?: Record<string, string>;
  sslVerificationRequired?: boolean;
  createdDate?: number;
  updatedDate?: number;
  scopeType?: string;
}

export interface BitbucketApplicationProperties {
  version: string;
  buildNumber?: string;
  displayName?: string;
}

export interface BitbucketResponse<T> {
  body: T;
  /** The authenticated user (X-AUSERNAME, decoded); absent when Bitbucket treated the call as anonymous. */
  username?: string;
}

export interface BitbucketClientOptions {
  /** Every call goes out through it (activities/outbound.ts). */
  outbound: Outbound;
  /** Waits between calls while the rate-limit bucket is low (injected by tests). */
  sleep?: (ms: number) => Promise<void>;
  timeoutMs?: number;
}

export interface BitbucketClient {
  request<T>(method: string, path: string, init?: { query?: Record<string, string | number>; body?: unknown }): Promise<BitbucketResponse<T>>;
  /** Every value of a paged list, following nextPageStart until isLastPage, failing past `caps` (ListingTooLongError). */
  all<T>(path: string, caps: { what: string; maxPages: number; maxValues: number; maxParseCost: number }, query?: Record<string, string | number>): Promise<T[]>;
}

function errorMessage(body: unknown, status: number): string {
  const first = (body as { errors?: Array<{ message?: unknown }> } | null)?.errors?.[0]?.message;
  if (typeof first === 'string' && first) return messageExcerpt(first);
  if (typeof body === 'string' && body.trim()) return body.trim().slice(0, 500);
  return `HTTP ${status}`;
}

/**
 * The answer's JSON, or its text when it is not JSON; counted first (parseAnswer: one too costly to
 * parse is refused unparsed). An error status wins over its body: one too costly to parse is left
 * unparsed and the status decides (a 429/503 stays throttled/unavailable and is retried).
 */
async function readBody(response: Response, origin: string): Promise<unknown> {
  if (response.status === 204) return undefined;
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length === 0) return undefined;
  try {
    return parseAnswer('bitbucket', origin, bytes);
  } catch (error) {
    if (refusedUnparsed(error)) {
      if (response.ok) throw error;
      return undefined;
    }
    return new TextDecoder().decode(bytes);
  }
}

/**
 * Where the next page after the one asked from `start` starts, or undefined on the last one. A
 * nextPageStart that does not move forward would list the same pages forever: it fails.
 */
function nextPageStart(page: BitbucketPage<unknown>, start: number): number | undefined {
  if (page.isLastPage) return undefined;
  // Never infer the end from size < limit: the server clamps limit, and isLastPage is the only truth.
  if (typeof page.nextPageStart !== 'number') throw new Error('Bitbucket said more pages follow but gave no nextPageStart');
  if (!Number.isSafeInteger(page.nextPageStart) || page.nextPageStart <= start) {
    throw new ListingTooLongError(`bitbucket's listing does not move on: nextPageStart ${page.nextPageStart} after the page at ${start} would list the same pages forever`);
  }
  return page.nextPageStart;
}

/**
 * A minimal Bitbucket Data Center REST client over fetch: Bearer auth, one attempt per call (the
 * activity's retry policy decides about 429/5xx, with Retry-After), and pacing when the
 * server's X-RateLimit-Remaining runs low (a pause longer than a few seconds ends the call as
 * throttled: see rateLimitPause).
 */
export function createBitbucketClient(baseUrl: string, token: string, options: BitbucketClientOptions): BitbucketClient {
  const root = `${baseUrl.replace(/\/+$/, '')}/rest/api/latest`;
  const sleep = options.sleep ?? cancellableSleep;
  const timeoutMs = options.timeoutMs ?? 30_000;
  let pauseMs = 0;

  /** Time for the bucket to regain what it lacks below the low-water mark, from the server's fill rate. */
  function pauseAfter(headers: Headers): number {
    const remaining = Number(headers.get('x-ratelimit-remaining') ?? Number.NaN);
    if (!Number.isFinite(remaining) || remaining >= RATE_LIMIT_LOW_WATER) return 0;
    const fillRate = Number(headers.get('x-ratelimit-fillrate')) || 1;
    const intervalSeconds = Number(headers.get('x-ratelimit-interval-seconds')) || 1;
    return Math.ceil(((RATE_LIMIT_LOW_WATER - Math.max(0, remaining)) * intervalSeconds * 1000) / fillRate);
  }

  async function request<T>(method: string, path: string, init: { query?: Record<string, string | number>; body?: unknown } = {}): Promise<BitbucketResponse<T>> {
    const wait = pauseMs;
    pauseMs = 0;
    await rateLimitPause('bitbucket', wait, sleep);
    const url = new URL(`${root}${path}`);
    for (const [key, value] of Object.entries(init.query ?? {})) url.searchParams.set(key, String(value));
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' };
    if (init.body !== undefined) headers['content-type'] = 'application/json';
    const response = await options.outbound.fetch(url, {
      method,
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      timeoutMs,
    });
    pauseMs = pauseAfter(response.headers);
    const body = await readBody(response, url.origin);
    if (!response.ok) {
      throw new ProviderHttpError('bitbucket', response.status, errorMessage(body, response.status), parseRetryAfter(response.headers.get('retry-after')));
    }
    const username = response.headers.get('x-ausername');
    return { body: body as T, ...(username ? { username: decodeURIComponent(username) } : {}) };
  }

  return {
    request,
    async all<T>(path: string, caps: { what: string; maxPages: number; maxValues: number; maxParseCost: number }, query: Record<string, string | number> = {}) {
      return cappedPages<T, number>('bitbucket', caps, 0, async (start) => {
        const { body } = await request<BitbucketPage<T>>('GET', path, { query: { ...query, limit: PAGE_LIMIT, start } });
        return { values: body.values, next: nextPageStart(body, start) };
      });
    },
  };
}

/** "KEY/slug" → the parts of a repository's REST path, encoded. */
function repositoryPath(ref: RepositoryRef): string {
  const slash = ref.fullName.indexOf('/');
  if (slash <= 0 || slash === ref.fullName.length - 1) throw new Error(`Bitbucket repository name "${ref.fullName}" is not PROJECT/slug`);
  const projectKey = ref.fullName.slice(0, slash);
  const slug = ref.fullName.slice(slash + 1);
  return `/projects/${encodeURIComponent(projectKey)}/repos/${encodeURIComponent(slug)}`;
}

/** The repository as it can be stored; undefined when its id cannot be (storableRepository). */
function toRepository(repo: BitbucketRepository): ProviderRepository | undefined {
  const webUrl = repo.links?.self?.[0]?.href;
  return storableRepository({
    externalId: String(repo.id),
    fullName: `${repo.project.key}/${repo.slug}`,
    project: repo.project.key,
    ...(repo.defaultBranch ? { defaultBranch: repo.defaultBranch.replace(/^refs\/heads\//, '') } : {}),
    ...(webUrl ? { webUrl } : {}),
  });
}

/** The hook as forgelink sees it: never its configuration, which holds the secret. */
function toHook(hook: BitbucketWebhook): ProviderHook {
  const healthy = hook.active !== false;
  return { id: String(hook.id), url: hook.url, events: hook.events ?? [], healthy, ...(healthy ? {} : { disabledReason: 'active false' }) };
}

/** The full webhook body: always active, so an update also re-enables a hook someone switched off. */
function webhookBody(spec: HookSpec) {
  return {
    name: BITBUCKET_HOOK_NAME,
    url: spec.url,
    active: true,
    events: spec.events,
    configuration: spec.secret ? { secret: spec.secret } : {},
    sslVerificationRequired: true,
  };
}

function isStatus(error: unknown, status: number): boolean {
  return error instanceof ProviderHttpError && error.status === status;
}

export function createBitbucketAdapter(target: ProviderTarget, options: BitbucketClientOptions): ProviderAdapter {
  if (!target.secret) throw new Error('a Bitbucket connection needs an HTTP access token');
  const api = createBitbucketClient(target.baseUrl, target.secret, options);
  /** The repository the name answers now (any id); null when it answers 404. */
  const atName = async (ref: RepositoryRef): Promise<BitbucketRepository | null> => {
    try {
      return (await api.request<BitbucketRepository>('GET', repositoryPath(ref))).body;
    } catch (error) {
      if (isStatus(error, 404)) return null;
      throw error;
    }
  };

  /** The id of the repository the name answers now; null when it answers 404. */
  const idAt = async (ref: RepositoryRef): Promise<string | null> => {
    const body = await atName(ref);
    return body ? String(body.id) : null;
  };

  /**
   * A save (POST/PUT) goes out only while the name answers the recorded id (the caller's lookup,
   * made after its listing, or one here): a repository renamed or deleted since its listing leaves
   * its name to another, which would get our hook and secret while we record it on ours. Another id
   * fails RepositoryNameTaken; none answers 404 as the save would, sending nothing.
   */
  const nameIsOurs = async (ref: RepositoryRef, checked: NameCheck | undefined, what: string): Promise<void> => {
    const idAtName = checked ? checked.idAtName : await idAt(ref);
    if (idAtName === null) throw new ProviderHttpError('bitbucket', 404, `Repository ${ref.fullName} does not exist (looked up before ${what}).`);
    if (idAtName !== ref.externalId) throw new RepositoryNameTakenError('bitbucket', ref, idAtName, what);
  };

  return {
    provider: 'bitbucket',

    /**
     * Bitbucket has no "token self" endpoint: the permission-filtered listings show what the token
     * may do, and X-AUSERNAME on them proves Bitbucket authenticated it (an anonymous caller also
     * gets 200 with empty lists).
     */
    async validate(): Promise<ValidationOutcome> {
      let projects: BitbucketResponse<BitbucketPage<unknown>>;
      let repos: BitbucketResponse<BitbucketPage<unknown>>;
      try {
        projects = await api.request('GET', '/projects', { query: { permission: 'PROJECT_READ', limit: 1 } });
        repos = await api.request('GET', '/repos', { query: { permission: 'REPO_ADMIN', limit: 1 } });
      } catch (error) {
        if (isStatus(error, 401)) return { ok: false, reason: `token rejected by Bitbucket (401): ${(error as Error).message}` };
        throw error;
      }
      const account = projects.username ?? repos.username;
      if (!account) return { ok: false, reason: 'Bitbucket answered the token as an anonymous caller (no X-AUSERNAME): it is not a valid HTTP access token' };
      const missing: string[] = [];
      if (projects.body.values.length === 0) missing.push('PROJECT_READ (Bitbucket lists no project it can read)');
      if (repos.body.values.length === 0) missing.push('REPO_ADMIN (Bitbucket lists no repository it administers; webhooks need it)');
      if (missing.length > 0) return { ok: false, reason: `token lacks ${missing.join(' and ')}` };
      const { body: properties } = await api.request<BitbucketApplicationProperties>('GET', '/application-properties');
      return { ok: true, identity: { account, detail: `Bitbucket Data Center ${properties.version}` } };
    },

    async listRepositoriesPage({ cursor }) {
      const start = cursor === undefined ? 0 : Number(cursor);
      if (!Number.isInteger(start) || start < 0) throw new Error(`invalid Bitbucket repository cursor "${cursor}"`);
      const { body } = await api.request<BitbucketPage<BitbucketRepository>>('GET', '/repos', { query: { permission: 'REPO_ADMIN', limit: PAGE_LIMIT, start } });
      const next = nextPageStart(body, start);
      return { ...storableRepositories(body.values.map(toRepository)), ...(next === undefined ? {} : { nextCursor: String(next) }), apiCalls: 1 };
    },

    async getRepository(ref) {
      const body = await atName(ref);
      // Another repository can take a deleted one's name: the id tells them apart.
      return body && String(body.id) === ref.externalId ? (toRepository(body) ?? null) : null;
    },

    repositoryIdAtName: idAt,

    async listHooks(ref) {
      const hooks = await api.all<BitbucketWebhook>(`${repositoryPath(ref)}/webhooks`, HOOK_LISTING_CAPS);
      return hooks.map(toHook);
    },

    async createHook(ref, spec, checked) {
      await nameIsOurs(ref, checked, 'creating a hook');
      const { body } = await api.request<BitbucketWebhook>('POST', `${repositoryPath(ref)}/webhooks`, { body: webhookBody(spec) });
      return toHook(body);
    },

    async updateHook(ref, hookId, spec, checked) {
      await nameIsOurs(ref, checked, `saving hook ${hookId}`);
      const { body } = await api.request<BitbucketWebhook>('PUT', `${repositoryPath(ref)}/webhooks/${encodeURIComponent(hookId)}`, { body: webhookBody(spec) });
      return toHook(body);
    },

    async deleteHook(ref, hookId, checked) {
      // The path names the repository, and a deleted or renamed one leaves its name to another: a
      // DELETE goes out only while the name answers the recorded id (the caller's lookup, made
      // after its listing, or one here). The one guard of every deletion at Bitbucket DC.
      const idAtName = checked ? checked.idAtName : await idAt(ref);
      if (idAtName === null) return false;
      if (idAtName !== ref.externalId) throw new RepositoryNameTakenError('bitbucket', ref, idAtName, `deleting hook ${hookId}`);
      try {
        await api.request('DELETE', `${repositoryPath(ref)}/webhooks/${encodeURIComponent(hookId)}`);
        return true;
      } catch (error) {
        if (isStatus(error, 404)) return false;
        throw error;
      }
    },
  };
}
