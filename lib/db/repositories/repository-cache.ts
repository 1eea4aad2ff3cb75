import { createHash } from 'node:crypto';
import { type Kysely, sql, type Transaction } from 'kysely';
import type { Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

export interface CachedRepository {
  externalId: string;
  fullName: string;
  project?: string;
  defaultBranch?: string;
  webUrl?: string;
}

/**
 * Inserts new repositories and updates changed ones (renamed, moved, new default branch, back from
 * vanished); an unchanged row is not written at all. Returns the number of rows written. `partial`
 * rows (from an event, which names a repository without its default branch or URL) leave what they
 * do not carry as it was; a listing's rows are complete, so an absent value is cleared.
 */
export async function upsertRepositories(
  db: Executor,
  scope: { organizationId: string; connectionId: string; provider: Provider },
  repositories: CachedRepository[],
  { partial = false } = {},
): Promise<number> {
  if (repositories.length === 0) return 0;
  const unique = [...new Map(repositories.map((r) => [r.externalId, r])).values()];
  const incoming = (column: 'project' | 'default_branch' | 'web_url') =>
    partial ? sql`coalesce(excluded.${sql.ref(column)}, repositories.${sql.ref(column)})` : sql`excluded.${sql.ref(column)}`;
  // One array per column (unnest): the statement and its parameters stay the same size however
  // many rows a page holds, which costs far less to build, send and parse than a VALUES row each.
  const column = (pick: (r: CachedRepository) => string | undefined) => unique.map((r) => pick(r) ?? null);
  // A written row is visible again: an attachment flagged when it vanished is unflagged with it.
  const result = await sql<{ written: number }>`
    with written as (
    insert into repositories (organization_id, connection_id, provider, external_id, full_name, project, default_branch, web_url)
    select ${scope.organizationId}::uuid, ${scope.connectionId}::uuid, ${scope.provider}, r.external_id, r.full_name, r.project, r.default_branch, r.web_url
    from unnest(
      ${column((r) => r.externalId)}::text[], ${column((r) => r.fullName)}::text[], ${column((r) => r.project)}::text[],
      ${column((r) => r.defaultBranch)}::text[], ${column((r) => r.webUrl)}::text[]
    ) as r(external_id, full_name, project, default_branch, web_url)
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
    )
    select count(*)::int as written from written
  `.execute(db);
  return result.rows[0]?.written ?? 0;
}

/**
 * Ends a complete listing in the database: forgets the pages this listing did not visit, makes the
 * repositories the remaining pages hold visible (unflagging their attachments), then marks the
 * connection's repositories that no remaining page holds as vanished, and flags their attachments
 * (an attached repository is never dropped silently). Returns how many vanished.
 * Runs in SQL: the ids never travel to the worker.
 */
export async function finishListingInDb(db: Kysely<Database>, connectionId: string, visitedPageKeys: string[]): Promise<{ vanished: number }> {
  return db.transaction().execute(async (trx) => {
    await trx
      .deleteFrom('repository_listing_pages')
      .where('connection_id', '=', connectionId)
      .$if(visitedPageKeys.length > 0, (q) => q.where('page_key', 'not in', visitedPageKeys))
      .execute();
    const seenIds = sql<string>`(select jsonb_array_elements_text(p.external_ids) from repository_listing_pages p where p.connection_id = ${connectionId})`;
    // The listing is the truth: a repository it saw is visible, even one an event marked vanished
    // since and whose page answered 304 (so no upsert brought it back).
    const back = await trx
      .updateTable('repositories')
      .set({ vanished_at: null })
      .where('connection_id', '=', connectionId)
      .where('vanished_at', 'is not', null)
      .where(sql<boolean>`external_id in ${seenIds}`)
      .returning('id')
      .execute();
    if (back.length > 0) {
      await trx.updateTable('attachments').set({ repository_vanished: false, updated_at: new Date() }).where('repository_id', 'in', back.map((r) => r.id)).execute();
    }
    const gone = await trx
      .updateTable('repositories')
      .set({ vanished_at: sql<Date>`now()` })
      .where('connection_id', '=', connectionId)
      .where('vanished_at', 'is', null)
      .where(sql<boolean>`external_id not in ${seenIds}`)
      .returning('id')
      .execute();
    if (gone.length > 0) {
      await trx.updateTable('attachments').set({ repository_vanished: true, updated_at: new Date() }).where('repository_id', 'in', gone.map((r) => r.id)).execute();
    }
    return { vanished: gone.length };
  });
}

/** The cache row of a connection's repository, if there is one. */
export async function cachedRepositoryId(db: Executor, connectionId: string, externalId: string): Promise<string | undefined> {
  const row = await db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).where('external_id', '=', externalId).executeTakeFirst();
  return row?.id;
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

/** What one page of a connection's last listing held, and where it led. */
export interface StoredListingPage {
  etag: string | null;
  externalIds: string[];
  nextCursor: string | null;
  fanOut: string[];
  /** Digest of the repositories the page held (see repositoriesDigest). */
  contentHash: string | null;
}

/** A digest of a page's repositories, as the provider adapter mapped them: equal when nothing changed. */
export function repositoriesDigest(repositories: CachedRepository[]): string {
  return createHash('sha256').update(JSON.stringify(repositories)).digest('base64url');
}

/** Every page the connection's last listing stored, by page key: one query per listing, not per page. */
export async function listingPages(db: Executor, connectionId: string): Promise<Map<string, StoredListingPage>> {
  const rows = await db
    .selectFrom('repository_listing_pages')
    .select(['page_key', 'etag', 'external_ids', 'next_cursor', 'fan_out', 'content_hash'])
    .where('connection_id', '=', connectionId)
    .execute();
  return new Map(
    rows.map((r) => [r.page_key, { etag: r.etag, externalIds: r.external_ids, nextCursor: r.next_cursor, fanOut: r.fan_out, contentHash: r.content_hash }]),
  );
}

/** Remembers what a page held and where it led; an unchanged page is not written. */
export async function saveListingPage(
  db: Executor,
  connectionId: string,
  pageKey: string,
  page: { etag?: string; externalIds: string[]; nextCursor?: string; fanOut?: string[]; contentHash?: string },
): Promise<void> {
  await db
    .insertInto('repository_listing_pages')
    .values({
      connection_id: connectionId,
      page_key: pageKey,
      etag: page.etag ?? null,
      external_ids: JSON.stringify(page.externalIds),
      next_cursor: page.nextCursor ?? null,
      fan_out: JSON.stringify(page.fanOut ?? []),
      content_hash: page.contentHash ?? null,
    })
    .onConflict((oc) =>
      oc
        .columns(['connection_id', 'page_key'])
        .doUpdateSet((eb) => ({
          etag: eb.ref('excluded.etag'),
          external_ids: eb.ref('excluded.external_ids'),
          next_cursor: eb.ref('excluded.next_cursor'),
          fan_out: eb.ref('excluded.fan_out'),
          content_hash: eb.ref('excluded.content_hash'),
        }))
        .where(
          sql<boolean>`(repository_listing_pages.etag, repository_listing_pages.external_ids, repository_listing_pages.next_cursor, repository_listing_pages.fan_out, repository_listing_pages.content_hash)
            is distinct from (excluded.etag, excluded.external_ids, excluded.next_cursor, excluded.fan_out, excluded.content_hash)`,
        ),
    )
    .execute();
}

export async function recordRefreshOutcome(db: Executor, connectionId: string, error: string | null): Promise<void> {
  await db.updateTable('connections').set({ refreshed_at: sql<Date>`now()`, refresh_error: error }).where('id', '=', connectionId).execute();
}

/** Active connections in id order: all of them, or (with `limit`) one page after the id `after`. */
export async function activeConnectionIds(
  db: Executor,
  organizationId?: string,
  page: { after?: string; limit?: number } = {},
): Promise<{ id: string; organizationId: string; provider: Provider }[]> {
  const rows = await db
    .selectFrom('connections')
    .select(['id', 'organization_id', 'provider'])
    .where('status', '=', 'active')
    .where('disconnect_requested_at', 'is', null)
    .$if(organizationId !== undefined, (q) => q.where('organization_id', '=', organizationId!))
    .$if(page.after !== undefined, (q) => q.where('id', '>', page.after!))
    .orderBy('id')
    .$if(page.limit !== undefined, (q) => q.limit(page.limit!))
    .execute();
  return rows.map((r) => ({ id: r.id, organizationId: r.organization_id, provider: r.provider }));
}
