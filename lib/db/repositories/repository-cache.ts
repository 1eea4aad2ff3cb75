import { createHash } from 'node:crypto';
import { CompiledQuery, type Kysely, sql, type Transaction } from 'kysely';
import type { ListingCounts, Provider, RoundPlace } from '../../domain.ts';
import type { Database } from '../schema.ts';

import { namedStatement } from '../index.ts';

type Executor = Kysely<Database> | Transaction<Database>;

export interface CachedRepository {
  externalId: string;
  fullName: string;
  project?: string;
  defaultBranch?: string;
  webUrl?: string;
}

type RepositoryScope = { organizationId: string; connectionId: string; provider: Provider };

/**
 * Inserts new repositories and updates changed ones (renamed, moved, new default branch, back from
 * vanished); an unchanged row is not written at all. Returns the number of rows written. `partial`
 * rows (from an event, which names a repository without its default branch or URL) leave what they
 * do not carry as it was; a listing's rows are complete, so an absent value is cleared.
 */
export async function upsertRepositories(db: Executor, scope: RepositoryScope, repositories: CachedRepository[], { partial = false } = {}): Promise<number> {
  if (repositories.length === 0) return 0;
  const result = await db.executeQuery<{ written: number }>(CompiledQuery.raw(partial ? UPSERT_PARTIAL : UPSERT, upsertParameters(scope, repositories)));
  return result.rows[0]?.written ?? 0;
}

/**
 * A part of a `with` (`gate`: one row while the connection ($2) is not disconnected) that every
 * write of the cache (a listing's page, an event's repositories) inserts through. It holds the
 * connection row FOR SHARE until the write commits, which the disconnect's status update waits
 * for; a write that reaches the gate after that update (even one whose snapshot is older: READ
 * COMMITTED reads the locked row's newest version again) finds no row and writes nothing. So every
 * row written is committed before the connection is marked disconnected, where the disconnect's
 * purge (purgeDisconnectedCache) finds it, and a listing or event racing a disconnect never adds
 * rows after it. (FOR KEY SHARE, which each inserted row's foreign key check takes, would not do:
 * it does not conflict with the update, and a write that locks after it is not checked again.)
 */
const GATE = `gate as (select 1 from connections where id = $2::uuid and status <> 'disconnected' for share)`;

/**
 * A part of a `with` (`cache_commit`, read by the statement's final select as CACHE_COMMITTED: a
 * select part nobody reads is not run, and a scalar subquery of a select without FROM always is) that
 * commits the statement's transaction without waiting for its WAL to reach the disk
 * (synchronous_commit off for this transaction only). For a listing's writes alone (its lease, its
 * pages, its end): what they write is the repository cache and the listing's bookkeeping, which the
 * next listing writes again, so a database crash in the next few hundred milliseconds
 * (wal_writer_delay, 200 ms by default, at most three times that) loses at most writes a refresh
 * redoes; nothing else is lost and nothing is corrupted (PostgreSQL's asynchronous commit). Any
 * later transaction that commits synchronously flushes the WAL up to its own commit, these writes
 * included: so does makeListingDurable before a listing tells Temporal which pages it wrote. The
 * caller must not run these statements inside a transaction holding other writes: the setting
 * would cover them too.
 */
const CACHE_COMMIT = `cache_commit as (select set_config('synchronous_commit', 'off', true) as off)`;
const CACHE_COMMITTED = `(select off from cache_commit) as cache_commit`;

/**
 * The upsert's parts of a `with` (`written`: the ids of the rows written), for a statement that
 * selects from `written` and has GATE; parameters $1-$8 (upsertParameters). Written out once: a listing sends it
 * for every page, and building and compiling it with the query builder each time was ~0.2-0.3 ms of
 * the worker's CPU a page.
 */
function upsertParts(partial: boolean): string {
  const incoming = (column: 'project' | 'default_branch' | 'web_url') => (partial ? `coalesce(excluded.${column}, repositories.${column})` : `excluded.${column}`);
  // One array per column (unnest): the statement and its parameters stay the same size however
  // many rows a page holds, which costs far less to build, send and parse than a VALUES row each.
  // A written row is visible again: an attachment flagged when it vanished is unflagged with it.
  return `
    written as (
    insert into repositories (organization_id, connection_id, provider, external_id, full_name, project, default_branch, web_url)
    select $1::uuid, $2::uuid, $3, r.external_id, r.full_name, r.project, r.default_branch, r.web_url
    from unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) as r(external_id, full_name, project, default_branch, web_url)
    where exists (select from gate)
    on conflict (connection_id, external_id) do update set
      full_name = excluded.full_name,
      project = ${incoming('project')},
      default_branch = ${incoming('default_branch')},
      web_url = ${incoming('web_url')},
      vanished_at = null,
      last_seen_at = now()
    where (repositories.full_name, repositories.project, repositories.default_branch, repositories.web_url, repositories.vanished_at)
      is distinct from (excluded.full_name, ${incoming('project')}, ${incoming('default_branch')}, ${incoming('web_url')}, null::timestamptz)
    returning id
    ), unflagged as (
      update attachments set repository_vanished = false, updated_at = now()
      where repository_vanished and repository_id in (select id from written)
    )`;
}

/** $1-$8 of upsertParts: the scope, then one array per column of the repositories (the last of each external id). */
function upsertParameters(scope: RepositoryScope, repositories: CachedRepository[]): unknown[] {
  const unique = [...new Map(repositories.map((r) => [r.externalId, r])).values()];
  const column = (pick: (r: CachedRepository) => string | undefined) => unique.map((r) => pick(r) ?? null);
  return [
    scope.organizationId,
    scope.connectionId,
    scope.provider,
    column((r) => r.externalId),
    column((r) => r.fullName),
    column((r) => r.project),
    column((r) => r.defaultBranch),
    column((r) => r.webUrl),
  ];
}

/** The page's memory as a part of a `with` (`saved`, after GATE): the connection is $2, the page's own values $first to $first+5 (pageParameters). */
const savedPart = (first: number) => `saved as (
    insert into repository_listing_pages (connection_id, page_key, etag, external_ids, next_cursor, fan_out, content_hash)
    select $2::uuid, $${first}, $${first + 1}, $${first + 2}::jsonb, $${first + 3}, $${first + 4}::jsonb, $${first + 5}
    where exists (select from gate)
    on conflict (connection_id, page_key) do update set
      etag = excluded.etag, external_ids = excluded.external_ids, next_cursor = excluded.next_cursor, fan_out = excluded.fan_out, content_hash = excluded.content_hash
    where (repository_listing_pages.etag, repository_listing_pages.external_ids, repository_listing_pages.next_cursor, repository_listing_pages.fan_out, repository_listing_pages.content_hash)
      is distinct from (excluded.etag, excluded.external_ids, excluded.next_cursor, excluded.fan_out, excluded.content_hash)
  )`;

type PageMemory = { etag?: string; externalIds: string[]; nextCursor?: string; fanOut?: string[]; contentHash?: string };
const pageParameters = (pageKey: string, page: PageMemory): unknown[] => [
  pageKey,
  page.etag ?? null,
  JSON.stringify(page.externalIds),
  page.nextCursor ?? null,
  JSON.stringify(page.fanOut ?? []),
  page.contentHash ?? null,
];

const UPSERT = `with ${GATE}, ${upsertParts(false)} select count(*)::int as written from written`;
const UPSERT_PARTIAL = `with ${GATE}, ${upsertParts(true)} select count(*)::int as written from written`;
/** A listing's page of repositories whose memory is as stored: UPSERT, committed as CACHE_COMMIT says. */
const LISTING_UPSERT = `with ${GATE}, ${upsertParts(false)}, ${CACHE_COMMIT} select count(*)::int as written, ${CACHE_COMMITTED} from written`;
/** A page's repositories and its memory: $1-$8 as upsertParts, $9-$14 the page. */
const UPSERT_AND_SAVE_PAGE = `with ${GATE}, ${upsertParts(false)}, ${savedPart(9)}, ${CACHE_COMMIT} select count(*)::int as written, ${CACHE_COMMITTED} from written`;
/** A page's memory alone: $1 is unused but typed, so the page part's numbering is the same. */
const SAVE_PAGE = `with ${GATE}, ${savedPart(3)}, ${CACHE_COMMIT} select $1::uuid as organization_id, ${CACHE_COMMITTED}`;
/**
 * A page of repositories none of which the cache holds, and its memory: UPSERT_AND_SAVE_PAGE's
 * parameters, a plain insert instead of the upsert. PostgreSQL's upsert checks the conflict index
 * before each row's insert and confirms each inserted row with a second WAL record; a plain insert
 * does neither (1.6-4.3 us of the 14-20 us a row cost, in a loop of 100-row pages on this machine). A
 * row already there fails the whole statement (unique violation, nothing written), and the page is
 * written again as an upsert. New rows have no attachment to unflag.
 */
const INSERT_AND_SAVE_PAGE = `with ${GATE}, written as (
    insert into repositories (organization_id, connection_id, provider, external_id, full_name, project, default_branch, web_url)
    select $1::uuid, $2::uuid, $3, r.external_id, r.full_name, r.project, r.default_branch, r.web_url
    from unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) as r(external_id, full_name, project, default_branch, web_url)
    where exists (select from gate)
    returning 1
  ), ${savedPart(9)}, ${CACHE_COMMIT} select count(*)::int as written, ${CACHE_COMMITTED} from written`;

/**
 * Whether a listing's pages are likely to bring only repositories the cache does not hold (a first
 * listing into an empty cache): they are then written with a plain insert (INSERT_AND_SAVE_PAGE).
 * `likely` is cleared when a page's rows turn out not to be new (a repository listed twice, an event
 * that cached one meanwhile): that page and the rest are upserted.
 */
export interface NewRows {
  likely: boolean;
}

const isUniqueViolation = (error: unknown) =>
  (error as { code?: string; constraint?: string }).code === '23505' && (error as { constraint?: string }).constraint === 'repositories_connection_external_id';

/**
 * Writes what one page of a listing brought: its repositories (`undefined` when they are the ones
 * already stored: no upsert, which would lock every row it met) and the page's memory (`undefined`
 * when it is as stored), in one statement, so a page costs one round trip and its stored digest is
 * committed with the rows it vouches for. Returns the number of repository rows written. Committed
 * without waiting for the disk (CACHE_COMMIT): the listing calls makeListingDurable before it
 * heartbeats or returns the pages it wrote, so no retry or later chunk skips a page whose write a
 * crash lost. Not inside a transaction with other writes.
 */
export async function writeListingPage(
  db: Executor,
  scope: RepositoryScope,
  pageKey: string,
  repositories: CachedRepository[] | undefined,
  page: PageMemory | undefined,
  { newRows }: { newRows?: NewRows } = {},
): Promise<number> {
  if (!page) {
    if (!repositories || repositories.length === 0) return 0;
    const result = await db.executeQuery<{ written: number }>(CompiledQuery.raw(LISTING_UPSERT, upsertParameters(scope, repositories)));
    return result.rows[0]?.written ?? 0;
  }
  if (!repositories || repositories.length === 0) {
    await db.executeQuery(CompiledQuery.raw(SAVE_PAGE, [scope.organizationId, scope.connectionId, ...pageParameters(pageKey, page)]));
    return 0;
  }
  const parameters = [...upsertParameters(scope, repositories), ...pageParameters(pageKey, page)];
  if (newRows?.likely) {
    try {
      const inserted = await db.executeQuery<{ written: number }>(CompiledQuery.raw(INSERT_AND_SAVE_PAGE, parameters));
      return inserted.rows[0]?.written ?? 0;
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      newRows.likely = false;
    }
  }
  const result = await db.executeQuery<{ written: number }>(CompiledQuery.raw(UPSERT_AND_SAVE_PAGE, parameters));
  return result.rows[0]?.written ?? 0;
}

// A listing sends these for every page (LISTING_UPSERT: a page whose repositories changed and whose
// memory did not): each pooled connection parses them once (namedStatement). An event's upsert is not one.
namedStatement('forgelink_listing_page', UPSERT_AND_SAVE_PAGE);
namedStatement('forgelink_listing_page_new', INSERT_AND_SAVE_PAGE);
namedStatement('forgelink_listing_page_memory', SAVE_PAGE);
namedStatement('forgelink_listing_upsert', LISTING_UPSERT);

/**
 * Ends a complete listing in the database: forgets the pages this listing did not visit, makes the
 * repositories the remaining pages hold visible (unflagging their attachments), then marks the
 * connection's repositories that no remaining page holds as vanished, flags their attachments (an
 * attached repository is never dropped silently), records the refresh as succeeded and the
 * listing's counts as the connection's last listing, and gives its lease back (`holder`). Returns
 * how many vanished, and whether the connection has rows purgeVanishedRepositories would delete
 * (vanished longer than `retentionDays` ago, nothing referring to them; false without
 * `retentionDays`), so that a listing with none (nearly every one) sends no purge. One statement
 * (atomic, as a transaction of its steps was): the last step of every listing costs one round
 * trip, and the ids never travel to the worker. Committed without waiting for the disk
 * (CACHE_COMMIT: all of it is the cache and the listing's bookkeeping, which the next listing
 * writes again); not inside a transaction with other writes.
 */
export async function finishListingInDb(
  db: Executor,
  connectionId: string,
  visitedPageKeys: string[],
  listing: { holder?: string; counts?: Omit<ListingCounts, 'vanished'>; retentionDays?: number } = {},
): Promise<{ vanished: number; expired: boolean }> {
  const result = await finishListingStatement(connectionId, visitedPageKeys, listing).execute(db);
  return { vanished: result.rows[0]?.vanished ?? 0, expired: result.rows[0]?.expired ?? false };
}

/** finishListingInDb's statement, unsent (a test reads its plan). */
export function finishListingStatement(
  connectionId: string,
  visitedPageKeys: string[],
  listing: { holder?: string; counts?: Omit<ListingCounts, 'vanished'>; retentionDays?: number } = {},
) {
  // Every part reads the snapshot the statement started with: the pages that remain are the visited ones.
  return sql<{ vanished: number; expired: boolean }>`
    with forgotten as (
      delete from repository_listing_pages
      where connection_id = ${connectionId} and not (page_key = any(${visitedPageKeys}::text[]))
    ), seen as (
      select jsonb_array_elements_text(p.external_ids) as external_id
      from repository_listing_pages p
      where p.connection_id = ${connectionId} and p.page_key = any(${visitedPageKeys}::text[])
    ), cached as materialized (
      -- The connection's rows, read once through its key. No condition on vanished_at here or in the
      -- updates' scans: it let the planner read the picker's partial index (every visible row of
      -- every organization) beside the key whenever the table's statistics lagged behind the rows a
      -- first listing had just written, ~30 ms for 20,000 rows at the end of every such listing.
      select id, external_id, vanished_at is null as visible from repositories where connection_id = ${connectionId}
    ), back as (
      -- The listing is the truth: a repository it saw is visible, even one an event marked vanished
      -- since and whose page answered 304 (so no upsert brought it back).
      update repositories set vanished_at = null
      where id in (select id from cached where not visible and external_id in (select external_id from seen))
      returning id
    ), gone as (
      update repositories set vanished_at = now()
      where id in (select id from cached where visible and external_id not in (select external_id from seen))
      returning id
    ), unflagged as (
      update attachments set repository_vanished = false, updated_at = now() where repository_id in (select id from back)
    ), flagged as (
      update attachments set repository_vanished = true, updated_at = now() where repository_id in (select id from gone)
    ), succeeded as (
      update connections set refreshed_at = now(), refresh_error = null where id = ${connectionId}
    ), listed as (
      insert into repository_listings (connection_id, last_listing, listed_at)
      values (${connectionId}, ${JSON.stringify(listing.counts ?? {})}::jsonb || jsonb_build_object('vanished', (select count(*) from gone)), now())
      on conflict (connection_id) do update set
        last_listing = excluded.last_listing, listed_at = excluded.listed_at,
        holder = ${releasedHolder(listing.holder)}, held_until = ${releasedUntil(listing.holder)}
    ), ${sql.raw(CACHE_COMMIT)}
    select (select count(*)::int from gone) as vanished,
      ${listing.retentionDays === undefined ? sql`false` : purgeableExists(connectionId, listing.retentionDays)} as expired,
      ${sql.raw(CACHE_COMMITTED)}
  `;
}

/** Which of a connection's rows a purge deletes: those vanished longer than `vanishedForDays` ago, or (its connection disconnected) all of them. */
type PurgeScope = { vanishedForDays: number } | { disconnected: true };

/**
 * A repository row `r` a purge deletes: in its scope (PurgeScope), and nothing refers to it (no
 * attachment in any status, no event).
 */
const purgeableRow = (scope: PurgeScope) => sql`${'vanishedForDays' in scope ? sql`r.vanished_at < now() - make_interval(days => ${scope.vanishedForDays}) and` : sql``}
  not exists (select 1 from attachments a where a.repository_id = r.id)
  and not exists (select 1 from events e where e.organization_id = r.organization_id and e.repository_id = r.id)`;

/** Whether the connection has a row purgeVanishedRepositories would delete (read through the vanished rows' index). */
const purgeableExists = (connectionId: string, retentionDays: number) =>
  sql`exists (select 1 from repositories r where r.connection_id = ${connectionId} and ${purgeableRow({ vanishedForDays: retentionDays })})`;

/**
 * How long a listing's lease holds unless renewed: longer than the listing activity's retry backoff
 * (at most 2 minutes) and its heartbeat timeout, so a retried listing keeps it; a refresh that was
 * terminated mid-listing holds the connection for at most this long.
 */
export const LISTING_LEASE_SECONDS = 300;

/**
 * Takes (or renews) the lease on listing a connection for `holder`: granted when no one holds it,
 * `holder` already does, or the holder's lease ran out. False when another refresh is listing it
 * (or the connection is gone: its listing fails on that). Committed without waiting for the disk
 * (CACHE_COMMIT), before the listing's first call: a database crash that loses it also ends every
 * connection the listing holds, and a listing that goes on after it is one whose lease ran out,
 * which finishListingInDb already allows for (it gives back only its own).
 */
export async function takeListingLease(db: Executor, connectionId: string, holder: string): Promise<boolean> {
  const result = await sql<{ granted: number }>`
    with ${sql.raw(CACHE_COMMIT)}, taken as (
      insert into repository_listings as l (connection_id, holder, held_until)
      select c.id, ${holder}, now() + make_interval(secs => ${LISTING_LEASE_SECONDS}) from connections c where c.id = ${connectionId}
      on conflict (connection_id) do update set holder = excluded.holder, held_until = excluded.held_until
      where l.holder is null or l.holder = excluded.holder or l.held_until < now()
      returning 1 as granted
    )
    select (select count(*)::int from taken) as granted, ${sql.raw(CACHE_COMMITTED)}
  `.execute(db);
  return (result.rows[0]?.granted ?? 0) > 0;
}

/**
 * The listing's durable point: a transaction that always writes (the connection's listing row:
 * `holder`'s lease extended, anyone else's left as it is) and commits as the server is configured,
 * so its commit flushes the WAL up to itself, every page the listing wrote before it included
 * (their commits were asynchronous, CACHE_COMMIT). A listing calls it before it heartbeats the
 * pages it wrote or returns them to its run: what Temporal holds never names a page a database
 * crash lost. (A transaction that wrote no WAL, such as an update that found no row or
 * `select txid_current()`, commits without flushing.) Returns whether the lease is still
 * `holder`'s; without `holder` (runs from before the lease) it only flushes.
 */
export async function makeListingDurable(db: Executor, connectionId: string, holder: string | undefined): Promise<boolean> {
  const result = await sql<{ renewed: boolean }>`
    insert into repository_listings as l (connection_id) values (${connectionId})
    on conflict (connection_id) do update set
      held_until = case when l.holder = ${holder ?? null} then now() + make_interval(secs => ${LISTING_LEASE_SECONDS}) else l.held_until end
    returning l.holder is not distinct from ${holder ?? null} as renewed
  `.execute(db);
  return result.rows[0]?.renewed ?? false;
}

/** Set-clauses that give `holder`'s lease back and leave anyone else's as it is (a lease taken over after it ran out). */
const releasedHolder = (holder: string | undefined) =>
  holder === undefined ? sql`repository_listings.holder` : sql`case when repository_listings.holder = ${holder} then null else repository_listings.holder end`;
const releasedUntil = (holder: string | undefined) =>
  holder === undefined ? sql`repository_listings.held_until` : sql`case when repository_listings.holder = ${holder} then null else repository_listings.held_until end`;

/** The counts of the connection's last complete listing, if it had one. */
export async function lastListing(db: Executor, connectionId: string): Promise<ListingCounts | undefined> {
  const row = await db.selectFrom('repository_listings').select('last_listing').where('connection_id', '=', connectionId).executeTakeFirst();
  return row?.last_listing ?? undefined;
}

/** How many rows the connection's cache holds, vanished ones included. */
export async function cachedRepositoryCount(db: Executor, connectionId: string): Promise<number> {
  const row = await db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('connection_id', '=', connectionId).executeTakeFirstOrThrow();
  return Number(row.n);
}

/** Rows one purge batch deletes at most: one short transaction each, so no statement holds many row locks for long. */
export const PURGE_BATCH_ROWS = 1000;

type PurgeOptions = {
  batchRows?: number;
  maxBatches?: number;
  /** Called between batches (a heartbeat). */
  between?: () => void;
  /** No batch starts after this time (Date.now()): the purge returns unfinished. */
  stopAt?: number;
};

/**
 * Deletes the connection's repository rows that have been vanished for longer than `retentionDays`
 * and that nothing refers to: no attachment row (in any status: deleting the repository would
 * cascade to it and its hooks) and no event (whose repository_id would be set null, losing which
 * repository it was for). Without it a connection whose provider creates and deletes repositories
 * would keep every one it ever listed, and pass the cache's refusal bound (twice
 * repositoryCache.maxRepositoriesPerConnection rows, vanished ones included) for good.
 * At most `maxBatches` batches (purgeRepositories); returns how many rows were deleted.
 */
export async function purgeVanishedRepositories(db: Kysely<Database>, connectionId: string, retentionDays: number, options: PurgeOptions = {}): Promise<number> {
  return (await purgeRepositories(db, connectionId, { vanishedForDays: retentionDays }, options)).repositories;
}

/**
 * Deletes what a disconnected connection's cache holds that nothing else needs: every repository
 * row no attachment or event refers to (purgeVanishedRepositories' rule, whatever the row's
 * vanished_at), and its listing pages. Deletes nothing unless the connection is disconnected, which
 * is final; rows written by a listing or an event racing the disconnect are committed before it is
 * marked so (GATE), and none are written after. Safe to repeat: a retry deletes what is left.
 * `done` is false when it stopped at `maxBatches` or `stopAt` with rows left.
 */
export async function purgeDisconnectedCache(
  db: Kysely<Database>,
  connectionId: string,
  options: PurgeOptions = {},
): Promise<{ repositories: number; listingPages: number; done: boolean }> {
  return purgeRepositories(db, connectionId, { disconnected: true }, options);
}

/**
 * In batches of `batchRows`, each its own transaction: the candidates are locked first (FOR UPDATE
 * SKIP LOCKED: a row an upsert or an attach is writing is left for next time; a disconnected
 * connection's purge waits for it instead, since no next listing comes), then deleted by a
 * second statement whose fresh snapshot sees any attachment or event committed before the lock, and
 * none can be added while it is held (their foreign key check waits for it). So an attach racing
 * the purge either keeps the row or fails on a repository already gone; it never loses its
 * attachment to the cascade. A disconnected connection's batches also delete up to `batchRows` of
 * its listing pages. At most `maxBatches` batches, none started after `stopAt`.
 */
async function purgeRepositories(
  db: Kysely<Database>,
  connectionId: string,
  scope: PurgeScope,
  { batchRows = PURGE_BATCH_ROWS, maxBatches = 100, between, stopAt }: PurgeOptions = {},
): Promise<{ repositories: number; listingPages: number; done: boolean }> {
  const purged = { repositories: 0, listingPages: 0, done: false };
  for (let batch = 0; batch < maxBatches && !(stopAt !== undefined && Date.now() >= stopAt); batch++) {
    if (batch > 0) between?.();
    const { found, gone, pages } = await db.transaction().execute(async (trx) => {
      if ('disconnected' in scope) {
        const disconnected = await trx.selectFrom('connections').select('id').where('id', '=', connectionId).where('status', '=', 'disconnected').executeTakeFirst();
        if (!disconnected) return { found: 0, gone: 0, pages: 0 };
      }
      const pages =
        'disconnected' in scope
          ? Number(
              (
                await sql`
                  delete from repository_listing_pages
                  where connection_id = ${connectionId}
                    and page_key in (select page_key from repository_listing_pages where connection_id = ${connectionId} limit ${batchRows})
                `.execute(trx)
              ).numAffectedRows ?? 0n,
            )
          : 0;
      const candidates = await sql<{ id: string }>`
        select r.id from repositories r
        where r.connection_id = ${connectionId} and ${purgeableRow(scope)}
        limit ${batchRows}
        for update of r ${'disconnected' in scope ? sql`` : sql`skip locked`}
      `.execute(trx);
      if (candidates.rows.length === 0) return { found: 0, gone: 0, pages };
      const ids = candidates.rows.map((r) => r.id);
      const removed = await sql`
        delete from repositories r
        where r.id = any(${ids}::uuid[]) and ${purgeableRow(scope)}
      `.execute(trx);
      return { found: ids.length, gone: Number(removed.numAffectedRows ?? 0n), pages };
    });
    purged.repositories += gone;
    purged.listingPages += pages;
    if (found < batchRows && pages < batchRows) {
      purged.done = true;
      break;
    }
  }
  return purged;
}

/** The cache row of a connection's repository, if there is one. */
export async function cachedRepositoryId(db: Executor, connectionId: string, externalId: string): Promise<string | undefined> {
  const row = await db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).where('external_id', '=', externalId).executeTakeFirst();
  return row?.id;
}

/**
 * Whether the connection's last complete listing did not find the repository's id: the row is
 * vanished and was marked no later than that listing ended (a listing that found it made it
 * visible again). A mark by an event or a hook-health check alone, since the listing, does not count.
 */
export async function missedByLastListing(db: Executor, repositoryId: string): Promise<boolean> {
  const row = await db
    .selectFrom('repositories as r')
    .innerJoin('repository_listings as l', 'l.connection_id', 'r.connection_id')
    .select('r.id')
    .where('r.id', '=', repositoryId)
    .where('r.vanished_at', 'is not', null)
    .whereRef('l.listed_at', '>=', 'r.vanished_at')
    .executeTakeFirst();
  return row !== undefined;
}

/** Marks single repositories vanished (an access change event said so). */
export async function markRepositoriesVanished(db: Executor, connectionId: string, externalIds: string[]): Promise<number> {
  if (externalIds.length === 0) return 0;
  const rows = await db
    .updateTable('repositories')
    .set({ vanished_at: sql<Date>`now()` })
    .where('connection_id', '=', connectionId)
    .where('external_id', 'in', externalIds)
    .where('vanished_at', 'is', null)
    .returning('id')
    .execute();
  if (rows.length > 0) {
    await db.updateTable('attachments').set({ repository_vanished: true, updated_at: new Date() }).where('repository_id', 'in', rows.map((r) => r.id)).execute();
  }
  return rows.length;
}

/**
 * Where one page of a connection's last listing led, and what it held (as a digest: the page's
 * repository ids stay in the database, where only the listing's end reads them).
 */
export interface StoredListingPage {
  etag: string | null;
  nextCursor: string | null;
  fanOut: string[];
  /** Digest of the repositories the page held (see repositoriesDigest). */
  contentHash: string | null;
}

/** A digest of a page's repositories, as the provider adapter mapped them: equal when nothing changed. */
export function repositoriesDigest(repositories: CachedRepository[]): string {
  return createHash('sha256').update(JSON.stringify(repositories)).digest('base64url');
}

/**
 * Every page the connection's last listing stored, by page key: one query per listing, not per page.
 * Without the pages' repository ids, which the worker never uses: an unchanged listing of 10,000
 * repositories read and parsed every one of them before its first call.
 */
export async function listingPages(db: Executor, connectionId: string): Promise<Map<string, StoredListingPage>> {
  const rows = await db
    .selectFrom('repository_listing_pages')
    .select(['page_key', 'etag', 'next_cursor', 'fan_out', 'content_hash'])
    .where('connection_id', '=', connectionId)
    .execute();
  return new Map(rows.map((r) => [r.page_key, { etag: r.etag, nextCursor: r.next_cursor, fanOut: r.fan_out, contentHash: r.content_hash }]));
}

/** Records a failed refresh of the connection and gives `holder`'s lease back, in one statement. */
export async function recordRefreshOutcome(db: Executor, connectionId: string, error: string | null, holder?: string): Promise<void> {
  await sql`
    with released as (
      update repository_listings set holder = null, held_until = null where connection_id = ${connectionId} and holder = ${holder ?? null}
    )
    update connections set refreshed_at = now(), refresh_error = ${error} where id = ${connectionId}
  `.execute(db);
}

/** Active connections in id order: all of them, or (with `limit`) one page after the id `after`. */
export async function activeConnectionIds(
  db: Executor,
  organizationId?: string,
  page: { after?: string; limit?: number } = {},
): Promise<{ id: string; organizationId: string; organizationSlug: string; provider: Provider }[]> {
  const rows = await db
    .selectFrom('connections as c')
    .innerJoin('organizations as o', 'o.id', 'c.organization_id')
    .select(['c.id', 'c.organization_id', 'o.slug', 'c.provider'])
    .where('c.status', '=', 'active')
    .where('c.disconnect_requested_at', 'is', null)
    .$if(organizationId !== undefined, (q) => q.where('c.organization_id', '=', organizationId!))
    .$if(page.after !== undefined, (q) => q.where('c.id', '>', page.after!))
    .orderBy('c.id')
    .$if(page.limit !== undefined, (q) => q.limit(page.limit!))
    .execute();
  return rows.map((r) => ({ id: r.id, organizationId: r.organization_id, organizationSlug: r.slug, provider: r.provider }));
}

/**
 * One page of the active connections of every organization in rounds (RoundPlace): each
 * organization's first connection, then each one's second, …, so that an organization's connections
 * beyond another's count come after all of that one's, whatever their ids. A connection created
 * during the night comes after its organization's others; one that leaves it moves its
 * organization's later ones a round up, so one of them already passed over may wait for the next night.
 */
export async function activeConnectionsInRounds(
  db: Executor,
  page: { after?: RoundPlace; limit: number },
): Promise<{ id: string; organizationId: string; organizationSlug: string; provider: Provider; round: number }[]> {
  const after = page.after;
  const { rows } = await sql<{ id: string; organization_id: string; slug: string; provider: Provider; round: number }>`
    select id, organization_id, slug, provider, round from (
      select c.id, c.organization_id, o.slug, c.provider,
             (row_number() over (partition by c.organization_id order by c.created_at, c.id))::int as round
      from connections c join organizations o on o.id = c.organization_id
      where c.status = 'active' and c.disconnect_requested_at is null
    ) ranked
    ${after === undefined ? sql`` : sql`where (round, organization_id, id) > (${after.round}, ${after.organizationId}::uuid, ${after.connectionId}::uuid)`}
    order by round, organization_id, id
    limit ${page.limit}
  `.execute(db);
  return rows.map((r) => ({ id: r.id, organizationId: r.organization_id, organizationSlug: r.slug, provider: r.provider, round: r.round }));
}
