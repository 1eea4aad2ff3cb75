import type { ConnectionIdentity, Provider } from '../../lib/domain.ts';
import { excerpt } from '../outbound.ts';
import { listingBudget, withinListingBudget } from './answer.ts';
import { redactSecrets } from '../../lib/secret-redaction.ts';
import { isStorableText, nameWithinLimit, toStorableText } from '../../lib/text.ts';

/**
 * The seam between forgelink and a Git provider. Each provider (GitHub App, GitLab, Bitbucket Data
 * Center, Azure DevOps) implements it with its own client library; activities only ever talk to this
 * interface, so retries, compensation and bookkeeping are written once.
 *
 * Implementations throw ProviderHttpError for HTTP failures (with the status and any Retry-After),
 * so activities can classify them into retryable and non-retryable failures in one place.
 */
export interface ProviderAdapter {
  readonly provider: Provider;
  /** Proves the credential works and carries what forgelink needs; a refusal is an outcome, not a throw. */
  validate(): Promise<ValidationOutcome>;
  /**
   * One page of the repositories the connection can reach (for the cache), using the provider's
   * largest page size. `cursor` is opaque and comes from the previous page's `nextCursor`; absent
   * on the first call. `etag` enables conditional requests where the provider supports them
   * (GitHub): an unchanged page answers `{ notModified: true }` without repositories.
   */
  listRepositoriesPage(request: { cursor?: string; etag?: string }): Promise<RepositoryPage>;
  /** One repository by its provider external id, or null when it is gone or not visible. */
  getRepository(ref: RepositoryRef): Promise<ProviderRepository | null>;
  /**
   * Providers that address a repository by its name (Bitbucket DC): the id of the repository the
   * name (`ref.fullName`) answers now, which may be another than `ref.externalId`'s; null when it answers 404.
   */
  repositoryIdAtName?(ref: RepositoryRef): Promise<string | null>;
  /** Every hook of the repository (all pages). GitHub (App-delivered) returns []. */
  listHooks(ref: RepositoryRef): Promise<ProviderHook[]>;
  /**
   * Creates one hook; returns it as stored by the provider. Addressed by name (Bitbucket DC), as
   * deleteHook: sent only while the name answers `ref.externalId` (`checked`, or looked up), else
   * RepositoryNameTakenError (another id) or a 404 ProviderHttpError (none), nothing sent.
   */
  createHook(ref: RepositoryRef, spec: HookSpec, checked?: NameCheck): Promise<ProviderHook>;
  /** Saves the whole spec over an existing hook: re-enables it and fixes URL, events, filters and secret. Guarded as createHook. */
  updateHook(ref: RepositoryRef, hookId: string, spec: HookSpec, checked?: NameCheck): Promise<ProviderHook>;
  /**
   * Deletes a hook; a hook that is already gone is not an error (returns false). Addressed by name
   * (Bitbucket DC), a DELETE goes out only while the name answers `ref.externalId`: the adapter
   * looks the name up first, or takes `checked`, a lookup the caller's step made after the listing
   * that found the hook; another id there fails RepositoryNameTakenError (nothing deleted), none
   * (404) returns false without a DELETE.
   */
  deleteHook(ref: RepositoryRef, hookId: string, checked?: NameCheck): Promise<boolean>;
}

/** What the repository's name answered in the caller's step (repositoryIdAtName): the id, or null for 404. */
export interface NameCheck {
  idAtName: string | null;
}

/**
 * A call refused before it went out: the repository's name (Bitbucket DC addresses repositories by
 * name) answers another repository's id than the one recorded, so the recorded one was deleted or
 * renamed and its name taken; what the call would reach is that other repository's. Permanent.
 */
export class RepositoryNameTakenError extends Error {
  override name = 'RepositoryNameTakenError';
  constructor(
    readonly provider: Provider,
    readonly ref: RepositoryRef,
    readonly idAtName: string,
    what: string,
  ) {
    super(`${provider} repository ${ref.fullName} is repository ${idAtName} now, not ${ref.externalId} as recorded (deleted or renamed, its name taken by another): ${what} refused, as it would reach that other repository`);
  }
}

export interface ProviderRepository {
  externalId: string;
  fullName: string;
  /** Azure DevOps project name (the picker groups by it); Bitbucket project key. */
  project?: string;
  /** Azure DevOps project id, needed to scope service hook subscriptions. */
  projectId?: string;
  defaultBranch?: string;
  webUrl?: string;
}

/**
 * A repository as PostgreSQL can store it (lib/text.ts): its names with each NUL and lone UTF-16
 * surrogate replaced by U+FFFD; undefined when its id has one, since a mended id could be another
 * repository's (a tenant's server chooses both), or when its name or project is over MAX_NAME_LENGTH
 * bytes of UTF-8 (lib/text.ts, as the webhook receivers count them): the picker's index refuses a row
 * over ~2,700 bytes (54000), which failed the whole listing page. One odd repository no longer fails a
 * whole listing; those left out are counted (storableRepositories' `unstorable`).
 */
export function storableRepository(repo: ProviderRepository): ProviderRepository | undefined {
  if (!isStorableText(repo.externalId)) return undefined;
  const mended: ProviderRepository = { ...repo, fullName: toStorableText(repo.fullName) };
  for (const key of ['project', 'projectId', 'defaultBranch', 'webUrl'] as const) {
    const value = repo[key];
    if (value !== undefined) mended[key] = toStorableText(value);
  }
  if (!nameWithinLimit(mended.fullName) || !nameWithinLimit(mended.project ?? '')) return undefined;
  return mended;
}

/** A page's repositories as storableRepository makes them, those left out counted (`unstorable`). */
export function storableRepositories(repositories: Array<ProviderRepository | undefined>): Pick<RepositoryPage, 'repositories' | 'unstorable'> {
  const kept = repositories.filter((repo): repo is ProviderRepository => repo !== undefined);
  return kept.length === repositories.length ? { repositories: kept } : { repositories: kept, unstorable: repositories.length - kept.length };
}

export interface RepositoryPage {
  repositories: ProviderRepository[];
  /** Repositories the provider listed on this page and the page leaves out: their ids cannot be stored, or their names are over MAX_NAME_LENGTH bytes (storableRepository). */
  unstorable?: number;
  nextCursor?: string;
  /**
   * Cursors of further pages that can be fetched right away, independently of each other (GitHub
   * page numbers up to the Link header's last page, GitLab id ranges, Azure DevOps projects): the
   * listing fetches them in parallel. Each is its own chain: its pages carry their own nextCursor.
   */
  fanOut?: string[];
  /** A conditional request answered 304: the page, its nextCursor and fanOut are as stored. */
  notModified?: boolean;
  etag?: string;
  /** Calls made to produce this page (for the refresh benchmark). */
  apiCalls?: number;
}

/** Enough to address one repository at its provider. */
export interface RepositoryRef {
  externalId: string;
  fullName: string;
  projectId?: string;
}

/** The hook forgelink wants: where it delivers, which events, and the delivery credential. */
export interface HookSpec {
  url: string;
  /** Provider-native event names (GitLab flags, Bitbucket event keys, Azure DevOps eventType). */
  events: string[];
  /** GitLab token / Bitbucket secret / Azure DevOps basic-auth password: lives only in activity memory. */
  secret?: string;
  basicAuthUser?: string;
  /** Azure DevOps: extra publisher inputs (e.g. notificationType filter). */
  filters?: Record<string, string>;
}

export interface ProviderHook {
  id: string;
  url: string;
  events: string[];
  /** False when the provider disabled it (GitLab alert_status, Azure DevOps disabledBySystem/onProbation, Bitbucket active). */
  healthy: boolean;
  /** When not healthy: the provider's own words for the state, e.g. `alert_status temporarily_disabled until …`. */
  disabledReason?: string;
  filters?: Record<string, string>;
}

export type ValidationOutcome =
  | { ok: true; identity: ConnectionIdentity }
  | { ok: false; reason: string };

/** What an adapter needs to reach one connection's provider. The secret lives only in activity memory. */
export interface ProviderTarget {
  connectionId: string;
  /**
   * The connection's organization: its calls' parsed answers count against its share of the worker's
   * answer budget (activities/providers/answer-budget.ts). Absent, the connection's own share.
   */
  organizationId?: string;
  provider: Provider;
  baseUrl: string;
  /** GitHub installation id, Azure DevOps organization URL: what the connection is bound to. */
  externalKey: string | null;
  /** Plaintext credential (PAT, access token); undefined for GitHub, whose tokens are minted per call. */
  secret?: string;
}

export type ProviderFactory = (target: ProviderTarget) => ProviderAdapter;

/** A provider's HTTP failure. Its message, often the provider's own text, is kept to a short printable excerpt. */
export class ProviderHttpError extends Error {
  override name = 'ProviderHttpError';
  constructor(
    readonly provider: Provider,
    readonly status: number,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    // Redacted before it is cut: a cut could leave part of a secret the server echoed.
    super(excerpt(redactSecrets(message)));
  }
}

/**
 * A listing a provider never ends. A tenant chooses its provider's base URL, and a server that
 * answers "more follow" page after page would fill the worker's memory (the listing collects every
 * page) or the database (the repository cache writes every page). So each listing is capped, and
 * the provider listing more than the cap fails the step for good (the failure type
 * `ProviderListingTooLong`, never retried: the same server lists as much again), with the reason
 * recorded on the step or the connection.
 */
export class ListingTooLongError extends Error {
  override name = 'ListingTooLongError';
  /** "the provider listed more than N …". */
  static over(provider: Provider, limit: number, what: string): ListingTooLongError {
    return new ListingTooLongError(`${provider} listed more than ${limit.toLocaleString('en-US')} ${what}: forgelink caps a listing there`);
  }
}

/** A hook listing's caps: forgelink keeps one hook a repository, and GitLab allows 100 (its plan limit). */
export const MAX_HOOK_PAGES = 20;
export const MAX_HOOKS = 2_000;
/**
 * Most pages one repository-listing answer may say follow at once (GitHub's Link `last`): beyond
 * this the cursors alone would fill memory. The listing's own caps (repositoryCache.*PerConnection)
 * are lower by default.
 */
export const MAX_FAN_OUT = 10_000;

/**
 * Every value of a paged list, calling `page` with each page's cursor until it gives none, failing
 * past the caps. The values are held until the listing ends, so the answers parsed for its pages
 * count against `caps.maxParseCost` together (activities/providers/answer.ts): a page that would take
 * more than the listing has left is refused before it is parsed (AnswerTooCostlyError, for good).
 */
export async function cappedPages<T, C>(
  provider: Provider,
  caps: { what: string; maxPages: number; maxValues: number; maxParseCost: number },
  first: C,
  page: (cursor: C) => Promise<{ values: T[]; next?: C }>,
): Promise<T[]> {
  const values: T[] = [];
  const budget = listingBudget(caps.maxParseCost);
  let cursor: C | undefined = first;
  for (let pages = 0; cursor !== undefined; pages++) {
    if (pages === caps.maxPages) throw ListingTooLongError.over(provider, caps.maxPages, `pages of ${caps.what}`);
    const at: C = cursor;
    const answer: { values: T[]; next?: C } = await withinListingBudget(budget, () => page(at));
    if (values.length + answer.values.length > caps.maxValues) throw ListingTooLongError.over(provider, caps.maxValues, caps.what);
    for (const value of answer.values) values.push(value);
    cursor = answer.next;
  }
  return values;
}

/**
 * What one hook listing's answers may take of the heap together, as parseCost counts them: 16 MiB.
 * Legitimate hook pages count ~3.1-3.6 a byte (bench/provider-answer-cost.ts): GitLab's 100 hooks
 * ~0.1 MiB, Bitbucket's 1,000 webhooks ~0.8 MiB, so the 2,000 hooks of MAX_HOOKS are ~1-2 MiB, 8 to
 * 16 times below it. A server answering every page with costly JSON (`[[[…]]]`, 232 MiB for 8 MiB) took
 * one listing from 235 to 907 MiB of heap and crashed the worker (1 GiB): now refused at 16 MiB.
 */
export const MAX_HOOK_LISTING_PARSE_COST = 16 * 1024 * 1024;

/** A hook listing's caps (cappedPages). */
export const HOOK_LISTING_CAPS = { what: 'hooks of one repository', maxPages: MAX_HOOK_PAGES, maxValues: MAX_HOOKS, maxParseCost: MAX_HOOK_LISTING_PARSE_COST } as const;

/**
 * Longest rate-limit pause taken inside a call. A call runs inside the worker-wide listing limiter
 * and between heartbeats, so a longer pause (whatever a provider's headers ask) ends the attempt
 * instead, as a throttled failure whose retry waits it out (capped in activities/errors.ts).
 */
export const MAX_INLINE_PAUSE_MS = 5_000;

export async function rateLimitPause(provider: Provider, ms: number, sleep: (ms: number) => Promise<void>): Promise<void> {
  if (!(ms > 0)) return;
  if (ms > MAX_INLINE_PAUSE_MS) {
    const seconds = Math.ceil(ms / 1000);
    throw new ProviderHttpError(provider, 429, `rate limit nearly spent: waiting ${seconds} s before the next call`, seconds);
  }
  await sleep(ms);
}

/**
 * Parses Retry-After (seconds or HTTP date) into whole seconds, rounded up; undefined when absent
 * or unparsable. The header is a tenant's server's: HTTP allows whole seconds only, but a server
 * may say `1.5` or `1e-7`, and a fraction passed on to Temporal as a duration ("1e-7s") failed the
 * whole worker.
 */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds);
  const date = Date.parse(value);
  if (!Number.isNaN(date)) return Math.max(0, Math.ceil((date - now) / 1000));
  return undefined;
}
