import { createAppAuth } from '@octokit/auth-app';
import { Octokit } from '@octokit/rest';
import {
  ListingTooLongError,
  MAX_FAN_OUT,
  ProviderHttpError,
  parseRetryAfter,
  type ProviderAdapter,
  type ProviderRepository,
  type ProviderTarget,
  type RepositoryPage,
  type ValidationOutcome,
  storableRepositories,
  storableRepository,
} from './port.ts';
import { checkAnswer, refusedUnparsed } from './answer.ts';
import type { Logger } from '../../lib/logger.ts';
import { cancellableSleep, type Outbound } from '../outbound.ts';

/** GitHub's largest page size for page-number listings. */
const PAGE_SIZE = 100;
const REQUEST_TIMEOUT_MS = 30_000;
/** Below this share of a budget we start spacing requests out. */
const LOW_BUDGET_SHARE = 0.1;
/** Longest pause per request, so a paced page never outlasts an activity heartbeat. */
const MAX_PACING_MS = 5_000;
/** GitHub's advice when a secondary limit response carries no Retry-After. */
const SECONDARY_LIMIT_FALLBACK_SECONDS = 60;

export interface GithubApp {
  appId: string;
  privateKey: string;
  /** REST base URL: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server. */
  baseUrl: string;
}

export interface GithubAdapterOptions {
  /** Every call, token minting included, goes out through it (activities/outbound.ts). */
  outbound: Outbound;
  /** Receives Octokit's warnings (clock-skew corrections, token replication retries, deprecations). */
  logger?: Pick<Logger, 'warn'>;
  /** Injected so tests observe pacing without waiting. */
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

interface OctokitResponseError {
  status: number;
  message: string;
  response: { status: number; headers: Record<string, string | number | undefined>; data: unknown };
}

/** Octokit's RequestError, by shape: @octokit/request-error is not a direct dependency. */
function isResponseError(error: unknown): error is OctokitResponseError {
  return error instanceof Error && typeof (error as { status?: unknown }).status === 'number' && typeof (error as { response?: unknown }).response === 'object';
}

function header(headers: Record<string, string | number | undefined>, name: string): string | undefined {
  const value = headers[name];
  return value === undefined ? undefined : String(value);
}

/**
 * GitHub signals both rate limits with 403 as well as 429. They are reported as 429 so activities
 * retry them after the wait GitHub asks for, instead of treating them as a permission refusal.
 */
function toProviderError(error: unknown, now: number): unknown {
  if (!isResponseError(error)) return error;
  const { status, headers, data } = error.response;
  const message = typeof (data as { message?: unknown })?.message === 'string' ? (data as { message: string }).message : error.message;
  const budgetExhausted = header(headers, 'x-ratelimit-remaining') === '0';
  const secondaryLimit = /secondary rate limit/i.test(message);
  const throttled = (status === 403 || status === 429) && (budgetExhausted || secondaryLimit);
  const resetSeconds = Number(header(headers, 'x-ratelimit-reset'));
  const retryAfterSeconds =
    parseRetryAfter(header(headers, 'retry-after'), now) ??
    (budgetExhausted && Number.isFinite(resetSeconds) ? Math.max(0, Math.ceil(resetSeconds - now / 1000)) : undefined) ??
    (secondaryLimit ? SECONDARY_LIMIT_FALLBACK_SECONDS : undefined);
  if (throttled && status === 403) return new ProviderHttpError('github', 429, `${message} (GitHub answered 403)`, retryAfterSeconds);
  return new ProviderHttpError('github', status, message, retryAfterSeconds);
}

/** The `page` of the Link header's `rel` entry (next, last). */
function pageFromLink(link: string | undefined, rel: 'next' | 'last'): string | undefined {
  const entry = link?.split(',').find((part) => part.includes(`rel="${rel}"`));
  const url = entry && /<([^>]+)>/.exec(entry)?.[1];
  return url ? (new URL(url).searchParams.get('page') ?? undefined) : undefined;
}

/**
 * Pages after the first up to the Link header's last: known once the first page is in, fetched in
 * parallel. A last page beyond MAX_FAN_OUT fails before its cursors are made (they alone would fill memory).
 */
function pagesAfterFirst(link: string | undefined): string[] {
  const last = Number(pageFromLink(link, 'last'));
  if (Number.isSafeInteger(last) && last > MAX_FAN_OUT) throw ListingTooLongError.over('github', MAX_FAN_OUT, `pages of repositories (its Link header names page ${last} as the last)`);
  return Number.isSafeInteger(last) && last > 1 ? Array.from({ length: last - 1 }, (_, i) => String(i + 2)) : [];
}

/** Pages of the user's installations an installation proof reads at most (100 installations each). */
const MAX_INSTALLATION_PAGES = 100;

interface GithubRepository {
  id: number;
  full_name: string;
  default_branch?: string;
  html_url: string;
}

/**
 * Octokit's fetch, through the guarded HTTP layer. Octokit parses a JSON answer whole, so its bytes
 * are read and counted first (activities/providers/answer.ts: one too costly to parse is refused
 * unparsed) and handed on as read. GitHub's base URL is the operator's (GitHub.com or its GitHub
 * Enterprise Server), not a tenant's: counted all the same, at ~2 ms a page of 100 repositories.
 */
function octokitFetch(outbound: Outbound) {
  return async (input: string, init: RequestInit) => {
    const response = await outbound.fetch(input, { method: init.method, headers: init.headers, body: init.body as string | undefined, signal: init.signal, timeoutMs: REQUEST_TIMEOUT_MS });
    if (!response.body || !/json/i.test(response.headers.get('content-type') ?? '')) return response;
    const bytes = new Uint8Array(await response.arrayBuffer());
    try {
      checkAnswer('github', new URL(input).origin, bytes);
    } catch (error) {
      // An error status wins over its body, as with the other clients: one refused unparsed (too
      // costly, or no room in the worker's answer budget) is left out and the status decides (a 404
      // stays not found, a 429 throttled with its Retry-After), not WorkerBusy or a size failure.
      // Except a 403 without Retry-After or x-ratelimit-remaining: 0: only its body can tell a
      // secondary rate limit from a permission refusal, so it stays the (retried) refusal.
      if (response.ok || !refusedUnparsed(error)) throw error;
      if (response.status === 403 && !response.headers.has('retry-after') && response.headers.get('x-ratelimit-remaining') !== '0') throw error;
      const headers = new Headers(response.headers);
      headers.set('content-type', 'text/plain');
      headers.delete('content-length');
      return new Response(`HTTP ${response.status} (its body refused unparsed)`, { status: response.status, statusText: response.statusText, headers });
    }
    return new Response(bytes, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

/** The repository as it can be stored; undefined when its id cannot be (storableRepository). */
function toRepository(repo: GithubRepository): ProviderRepository | undefined {
  return storableRepository({ externalId: String(repo.id), fullName: repo.full_name, defaultBranch: repo.default_branch, webUrl: repo.html_url });
}

/**
 * GitHub through the App installation bound to the connection (`target.externalKey`). auth-app
 * signs App JWTs and mints installation tokens inside this adapter; no token leaves it.
 *
 * Neither plugin-retry nor plugin-throttling is used: the activity's Temporal retry policy is the
 * one retry loop and honours Retry-After, so a 429/5xx surfaces at once as ProviderHttpError
 * instead of being retried blindly in-process or held for up to an hour until a limit resets.
 * What we do in-process is pace: when a rate-limit budget runs low, each request pauses (bounded)
 * so the remaining budget spreads over the time left until the reset.
 */
export function createGithubAdapter(target: ProviderTarget, app: GithubApp, options: GithubAdapterOptions): ProviderAdapter {
  const installationId = Number(target.externalKey);
  if (!Number.isSafeInteger(installationId) || installationId <= 0) {
    throw new Error(`a GitHub connection needs a numeric installation id, got ${JSON.stringify(target.externalKey)}`);
  }
  const sleep = options.sleep ?? cancellableSleep;
  const now = options.now ?? Date.now;
  let apiCalls = 0;

  const viaOutbound = octokitFetch(options.outbound);
  /** Every HTTP call, token minting included: counted, bounded in time, paced when the budget is low. */
  const githubFetch = async (input: string, init: RequestInit) => {
    apiCalls++;
    const response = await viaOutbound(input, init);
    // Each answer reports its own budget (the App's for /app calls, the installation's otherwise).
    await paceForBudget(response.headers);
    return response;
  };

  async function paceForBudget(headers: Headers): Promise<void> {
    const remaining = Number(headers.get('x-ratelimit-remaining'));
    const limit = Number(headers.get('x-ratelimit-limit'));
    const reset = Number(headers.get('x-ratelimit-reset'));
    if (!(remaining > 0 && limit > 0 && reset > 0) || remaining >= limit * LOW_BUDGET_SHARE) return;
    const pause = Math.min(MAX_PACING_MS, Math.ceil((reset * 1000 - now()) / remaining));
    if (pause > 0) await sleep(pause);
  }

  const octokit = new Octokit({
    baseUrl: app.baseUrl,
    userAgent: 'forgelink',
    authStrategy: createAppAuth,
    auth: { appId: app.appId, privateKey: app.privateKey, installationId },
    request: { fetch: githubFetch as typeof fetch },
    // Failed requests surface as ProviderHttpError; Octokit's per-request error lines would only repeat them.
    log: { debug: () => {}, info: () => {}, error: () => {}, warn: (message: string) => (options.logger ?? console).warn(message) },
  });

  async function call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      throw toProviderError(error, now());
    }
  }

  return {
    provider: 'github',

    async validate(): Promise<ValidationOutcome> {
      let installation;
      try {
        ({ data: installation } = await call(() => octokit.rest.apps.getInstallation({ installation_id: installationId })));
      } catch (error) {
        if (error instanceof ProviderHttpError && error.status === 404) {
          return { ok: false, reason: `GitHub App installation ${installationId} not found (uninstalled?)` };
        }
        if (error instanceof ProviderHttpError && error.status === 401) {
          return {
            ok: false,
            reason: `GitHub rejected the App credentials (App ID ${app.appId}): ${error.message}; check that gitProviders.github.appId and privateKey belong to the same App`,
          };
        }
        throw error;
      }
      const account = installation.account;
      const login = account && ('login' in account ? account.login : account.slug);
      if (installation.suspended_at) {
        return { ok: false, reason: `GitHub App installation ${installationId}${login ? ` on ${login}` : ''} is suspended (since ${installation.suspended_at})` };
      }
      if (!account || !login) return { ok: false, reason: `GitHub App installation ${installationId} has no account` };
      return {
        ok: true,
        identity: {
          account: login,
          accountId: String(account.id),
          detail: `${installation.target_type} installation, ${installation.repository_selection} repositories`,
        },
      };
    },

    async listRepositoriesPage({ cursor, etag }): Promise<RepositoryPage> {
      const page = cursor === undefined ? 1 : Number(cursor);
      if (!Number.isSafeInteger(page) || page < 1) throw new Error(`invalid GitHub repository cursor ${JSON.stringify(cursor)}`);
      const callsBefore = apiCalls;
      try {
        const response = await octokit.rest.apps.listReposAccessibleToInstallation({
          per_page: PAGE_SIZE,
          page,
          headers: etag ? { 'if-none-match': etag } : {},
          // Octokit parses bodies with a JavaScript JSON parser that keeps big integers: about 2 ms of
          // CPU per 100-repository page. Nothing here is a big integer, so the native parser reads it.
          request: { parseSuccessResponseBody: false },
        });
        const data = (await new Response(response.data as unknown as ReadableStream).json()) as typeof response.data;
        return {
          ...storableRepositories(data.repositories.map(toRepository)),
          nextCursor: pageFromLink(response.headers.link, 'next'),
          ...(page === 1 ? { fanOut: pagesAfterFirst(response.headers.link) } : {}),
          etag: response.headers.etag,
          apiCalls: apiCalls - callsBefore,
        };
      } catch (error) {
        // A 304 carries no Link header: the page and where it leads are as the listing stored them.
        if (isResponseError(error) && error.status === 304) {
          return { repositories: [], notModified: true, etag: header(error.response.headers, 'etag') ?? etag, apiCalls: apiCalls - callsBefore };
        }
        throw toProviderError(error, now());
      }
    },

    async getRepository(ref) {
      const [owner, repo] = ref.fullName.split('/', 2);
      if (!owner || !repo) throw new Error(`"${ref.fullName}" is not a GitHub owner/name`);
      try {
        // A renamed repository answers 301 to /repositories/{id}; Outbound follows it (same origin).
        const { data } = await call(() => octokit.rest.repos.get({ owner, repo }));
        // The name may now belong to a different repository than the one we know.
        if (ref.externalId && String(data.id) !== ref.externalId) return null;
        return toRepository(data) ?? null;
      } catch (error) {
        if (error instanceof ProviderHttpError && error.status === 404) return null;
        throw error;
      }
    },

    async listHooks() {
      return [];
    },
    async createHook() {
      throw new Error('GitHub has no per-repository hooks in forgelink: the GitHub App delivers events');
    },
    async updateHook() {
      throw new Error('GitHub has no per-repository hooks in forgelink: the GitHub App delivers events');
    },
    async deleteHook() {
      return false;
    },
  };
}

/** The App's OAuth side: its client credentials and where GitHub's web flow runs. */
export interface GithubOAuthApp {
  clientId: string;
  clientSecret: string;
  /** https://github.com, or https://HOST for GitHub Enterprise Server. */
  webUrl: string;
  /** REST base URL (https://api.github.com, or https://HOST/api/v3). */
  baseUrl: string;
}

export type InstallationProof = { proven: true } | { proven: false; reason: string };

/** An installation's account, as GitHub lists it on /user/installations. */
interface InstallationAccount {
  login?: string;
  id?: number;
  type?: string;
}

/** Octokit's errors carry the request (the client secret or user token with it): only the status and message go on. */
function withoutRequest(error: unknown): Error {
  const converted = toProviderError(error, Date.now());
  return converted instanceof ProviderHttpError ? converted : new Error(`GitHub did not answer: ${(error as Error)?.message ?? String(error)}`);
}

const quietOctokitLog = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

/** The REST API version the user-token calls are written against: a membership's `role` and `state` are this version's. */
export const USER_TOKEN_API_VERSION = '2022-11-28';

/** What the proof asked GitHub last, named in a refusal GitHub gave it. */
interface Asking {
  what: string;
}

/**
 * Whether the user who installed the App administers installation `installationId` (GitHub warns the
 * setup URL's installation_id can be spoofed). The web flow `code` is exchanged for a user token;
 * the installation must be on a page of `GET /user/installations`, which alone is not enough: it
 * lists any installation where the user has explicit read on one repository (an outside
 * collaborator), while binding it exposes every repository of the installation. So the user must
 * also administer the installation's account: for a user account, be it (`GET /user`'s id is the
 * account's id); for an organization, be an active owner (`GET /user/memberships/orgs/{org}`: role
 * `admin`, state `active`; GitHub Apps read it with the organization permission Members: read).
 * The user token lives only in this call. A failing GitHub throws ProviderHttpError; a refusal is
 * `proven: false` with a reason the installing user can act on.
 */
export async function proveInstallationAccess(app: GithubOAuthApp, outbound: Outbound, code: string, installationId: string): Promise<InstallationProof> {
  const request = { fetch: octokitFetch(outbound) as typeof fetch };
  const octokit = new Octokit({ userAgent: 'forgelink', request, log: quietOctokitLog });
  let exchanged;
  try {
    exchanged = await octokit.request('POST /login/oauth/access_token', {
      baseUrl: app.webUrl,
      headers: { accept: 'application/json' },
      client_id: app.clientId,
      client_secret: app.clientSecret,
      code,
    });
  } catch (error) {
    throw withoutRequest(error);
  }
  // GitHub answers a bad, used or expired code with 200 and an `error`.
  const grant = exchanged.data as { access_token?: unknown; error?: unknown };
  if (typeof grant.access_token !== 'string') {
    return { proven: false, reason: `GitHub did not accept the authorization code (${typeof grant.error === 'string' ? grant.error : 'no access token'})` };
  }
  const user = new Octokit({ baseUrl: app.baseUrl, auth: grant.access_token, userAgent: 'forgelink', request, log: quietOctokitLog });
  // Pinned: without the header GitHub answers with its default version, which may move on.
  user.hook.before('request', (options) => {
    options.headers['x-github-api-version'] = USER_TOKEN_API_VERSION;
  });
  const asking: Asking = { what: 'GET /user/installations' };
  try {
    const account = await reachableInstallationAccount(user, installationId);
    if (!account) return { proven: false, reason: `the GitHub user who authorized the App cannot reach installation ${installationId}` };
    return await administersAccount(user, installationId, account, asking);
  } catch (error) {
    if (isResponseError(error) && error.status === 401) return { proven: false, reason: 'GitHub refused the user token' };
    const failed = withoutRequest(error);
    // Any other 4xx but a rate limit (429, or a 403 with the budget spent, which arrives as 429) is
    // GitHub's answer about this user, and asking again gets it again: a refusal, in GitHub's words.
    if (failed instanceof ProviderHttpError && failed.status >= 400 && failed.status < 500 && failed.status !== 429) {
      return { proven: false, reason: `GitHub answered ${failed.status} to ${asking.what} for the GitHub user who authorized the App (${failed.message})` };
    }
    throw failed;
  }
}

/** The account of installation `installationId` when it is on a page of the user's /user/installations. */
async function reachableInstallationAccount(user: Octokit, installationId: string): Promise<InstallationAccount | undefined> {
  // Page by page along the Link header (octokit.paginate reads response.url, which the guarded layer's answers lack).
  // A server that always links onward is not followed for ever: past MAX_INSTALLATION_PAGES, or a next page
  // that does not move on, the installation counts as not reachable.
  for (let page: string | undefined = '1', pages = 0; page !== undefined && pages < MAX_INSTALLATION_PAGES; pages++) {
    const { data, headers } = await user.rest.apps.listInstallationsForAuthenticatedUser({ per_page: PAGE_SIZE, page: Number(page) });
    const found = data.installations.find((installation) => String(installation.id) === installationId);
    if (found) return (found.account ?? {}) as InstallationAccount;
    const next = pageFromLink(headers.link, 'next');
    page = next !== undefined && Number(next) > Number(page) ? next : undefined;
  }
  return undefined;
}

/** Whether the token's user administers `account`, the account installation `installationId` is on. */
async function administersAccount(user: Octokit, installationId: string, account: InstallationAccount, asking: Asking): Promise<InstallationProof> {
  asking.what = 'GET /user';
  const { data: me } = await user.rest.users.getAuthenticated();
  const who = `the GitHub user ${me.login} who authorized the App`;
  if (!account.login || typeof account.id !== 'number') return { proven: false, reason: `installation ${installationId} has no account GitHub names` };
  const on = `installation ${installationId} is on the ${account.type === 'Organization' ? 'organization' : 'account'} ${account.login}`;
  if (account.type === 'User') {
    if (account.id === me.id) return { proven: true };
    return { proven: false, reason: `${on}, not on ${who}: only ${account.login} can bind it` };
  }
  if (account.type !== 'Organization') return { proven: false, reason: `${on} of type ${account.type ?? 'unknown'}: only user and organization installations can be bound` };
  let membership;
  asking.what = `GET /user/memberships/orgs/${account.login}`;
  try {
    ({ data: membership } = await user.rest.orgs.getMembershipForAuthenticatedUser({ org: account.login }));
  } catch (error) {
    const refused = toProviderError(error, Date.now());
    // 404: not a member. 403 (not a rate limit, which arrives as 429): the App lacks Members: read,
    // or something else GitHub names (SAML single sign-on the user has no session for, an IP allow list…).
    if (refused instanceof ProviderHttpError && refused.status === 404) {
      return { proven: false, reason: `${on}, of which ${who} is not a member: only an owner of ${account.login} can bind it` };
    }
    if (refused instanceof ProviderHttpError && refused.status === 403) {
      const shown = `${on}, and GitHub would not show ${who}'s membership of it (${refused.message})`;
      if (/resource not accessible by integration/i.test(refused.message)) {
        return { proven: false, reason: `${shown}: the App needs the organization permission Members: read, accepted by ${account.login}` };
      }
      const sso = isResponseError(error) && header(error.response.headers, 'x-github-sso') !== undefined;
      return {
        proven: false,
        reason: sso ? `${shown}: ${account.login} enforces SAML single sign-on; sign in to it with single sign-on, then start again` : shown,
      };
    }
    throw error;
  }
  if (membership.organization.id !== account.id) return { proven: false, reason: `${on}, and GitHub answered with the membership of another organization (${membership.organization.login})` };
  if (membership.role === 'admin' && membership.state === 'active') return { proven: true };
  return {
    proven: false,
    reason: `${on}, where ${who} is ${membership.state === 'active' ? 'a' : `a ${membership.state}`} ${membership.role === 'admin' ? 'owner' : membership.role}: only an active owner (role admin) of ${account.login} can bind it`,
  };
}
