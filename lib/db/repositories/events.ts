import { type Kysely, sql, type Transaction } from 'kysely';
import type { EventKind, NormalizedEvent, Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';
import { prepared } from '../prepared.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** An attached repository a delivery names, in one organization. */
export interface AttachedRepository {
  organizationId: string;
  organizationSlug: string;
  repositoryId: string;
  connectionId: string;
  externalId: string;
  fullName: string;
  project: string | null;
  /** The connection's base URL: which provider instance the repository lives on. */
  baseUrl: string;
  /** What the connection is bound to: for GitHub, the App installation id. */
  connectionKey: string | null;
}

/**
 * Whose attachments a verified delivery may reach. A connection's own hook (verified with its
 * credential): that connection's only. A legacy hook (verified with the global secret): those
 * holding a legacy hook. GitHub (signed with the App's secret): any.
 */
export type DeliveryScope = { connectionId: string } | { legacyHooks: true } | { app: true };

export function deliveryScope(provider: Provider, connectionId: string | undefined): DeliveryScope {
  if (connectionId) return { connectionId };
  return provider === 'github' ? { app: true } : { legacyHooks: true };
}

/**
 * Repositories attached (status `attached`) within `scope` that match the provider's ids. The
 * receiver asks this on every delivery it has not cached, so it is one indexed read.
 */
export async function findAttachedRepositories(db: Executor, provider: Provider, externalIds: readonly string[], scope: DeliveryScope): Promise<AttachedRepository[]> {
  if (externalIds.length === 0) return [];
  const params = { provider, externalIds: [...new Set(externalIds)] };
  if ('connectionId' in scope) return (await FIND_ATTACHED.ofConnection(db, { ...params, connectionId: scope.connectionId })).rows;
  return (await ('legacyHooks' in scope ? FIND_ATTACHED.ofLegacyHooks : FIND_ATTACHED.any)(db, params)).rows;
}

/** findAttachedRepositories' statement, one a scope: it runs for every delivery. */
const findAttached = (db: Kysely<Database>, p: { provider: Provider; externalIds: string[] }) =>
  db
    .selectFrom('repositories as r')
    .innerJoin('attachments as a', 'a.repository_id', 'r.id')
    .innerJoin('connections as c', 'c.id', 'r.connection_id')
    .innerJoin('organizations as o', 'o.id', 'r.organization_id')
    .select(['r.organization_id as organizationId', 'o.slug as organizationSlug', 'r.id as repositoryId', 'r.connection_id as connectionId', 'r.external_id as externalId', 'r.full_name as fullName', 'r.project', 'c.base_url as baseUrl', 'c.external_key as connectionKey'])
    .where('r.provider', '=', p.provider)
    // One array parameter, not one parameter an id: a GitHub installation event can name more
    // repositories than a statement takes parameters (65,535; pg then fails with 08P01).
    .where(sql<boolean>`r.external_id = any(${p.externalIds}::text[])`)
    .where('a.status', '=', 'attached')
    .orderBy('r.organization_id')
    .orderBy('r.id');

const FIND_ATTACHED = {
  ofConnection: prepared((db, p: { provider: Provider; externalIds: string[]; connectionId: string }) => findAttached(db, p).where('r.connection_id', '=', p.connectionId)),
  ofLegacyHooks: prepared((db, p: { provider: Provider; externalIds: string[] }) =>
    findAttached(db, p).where(({ exists, selectFrom }) => exists(selectFrom('hooks as h').select('h.id').whereRef('h.attachment_id', '=', 'a.id').where('h.credential_version', 'is', null))),
  ),
  any: prepared((db, p: { provider: Provider; externalIds: string[] }) => findAttached(db, p)),
};

/**
 * Claims a delivery body for a connection within its provider's redelivery window. False when the
 * same body was recorded for the connection under another delivery id since `notBefore`: a replay.
 * The same delivery id again (a redelivery, a retried activity) claims it again, and so does any
 * delivery once the holder is older than the window. Other rows older than the window are dropped
 * as it goes. One statement: this runs for every delivery.
 */
export async function claimDeliveryDigest(
  db: Executor,
  claim: { connectionId: string; digest: string; deliveryId: string; receivedAt: Date; notBefore: Date },
): Promise<boolean> {
  const { rows } = await sql<{ delivery_id: string }>`
    with expired as (
      delete from delivery_digests
      where connection_id = ${claim.connectionId} and received_at < ${claim.notBefore} and digest <> ${claim.digest}
    )
    insert into delivery_digests (connection_id, digest, delivery_id, received_at)
    values (${claim.connectionId}, ${claim.digest}, ${claim.deliveryId}, ${claim.receivedAt})
    on conflict (connection_id, digest) do update set delivery_id = excluded.delivery_id, received_at = excluded.received_at
      where delivery_digests.delivery_id = excluded.delivery_id or delivery_digests.received_at < ${claim.notBefore}
    returning delivery_id
  `.execute(db);
  return rows.length === 1;
}

/** Connections (not disconnected) bound to a provider-side key: for GitHub, the App installation id. */
export async function findConnectionsByExternalKey(db: Executor, provider: Provider, externalKey: string) {
  return db
    .selectFrom('connections as c')
    .innerJoin('organizations as o', 'o.id', 'c.organization_id')
    .select(['c.id', 'c.organization_id as organizationId', 'o.slug as organizationSlug'])
    .where('c.provider', '=', provider)
    .where('c.external_key', '=', externalKey)
    .where('c.status', '<>', 'disconnected')
    .orderBy('c.organization_id')
    .orderBy('c.id')
    .execute();
}

/**
 * The cached repository ids of a connection's repositories, by external id: one statement with one
 * array parameter however many (a GitHub installation event can name tens of thousands).
 */
export async function cachedRepositoryIds(db: Executor, connectionId: string, externalIds: readonly string[]): Promise<Map<string, string>> {
  if (externalIds.length === 0) return new Map();
  const rows = await db
    .selectFrom('repositories')
    .select(['id', 'external_id'])
    .where('connection_id', '=', connectionId)
    .where(sql<boolean>`external_id = any(${[...new Set(externalIds)]}::text[])`)
    .execute();
  return new Map(rows.map((r) => [r.external_id, r.id]));
}

/** Follows a rename the provider reported (the event names the repository as it is now). */
export async function renameCachedRepository(db: Executor, repositoryId: string, fullName: string, project: string | null): Promise<boolean> {
  const result = await db
    .updateTable('repositories')
    .set({ full_name: fullName, project, last_seen_at: new Date() })
    .where('id', '=', repositoryId)
    .where((eb) => eb.or([eb('full_name', '<>', fullName), eb('project', 'is distinct from', project)]))
    .executeTakeFirst();
  if (result.numUpdatedRows === 0n) return false;
  // The row no longer is what its listing page last wrote: the next listing writes that page again
  // even if the provider answers it unchanged (an event can carry a name the listing has moved past).
  await sql`
    update repository_listing_pages p set content_hash = null
    from repositories r
    where r.id = ${repositoryId} and p.connection_id = r.connection_id and p.external_ids ? r.external_id
  `.execute(db);
  return true;
}

export interface NewEventRow {
  organizationId: string;
  repositoryId: string | null;
  sequence: number;
  event: NormalizedEvent;
}

export interface RecordedEvent {
  id: string;
  organizationId: string;
  sequence: number;
  kind: EventKind;
  /** With `withEvents`, on rows this call inserted: the event as stored (read back from the jsonb, as a dispatch reads it). */
  event?: NormalizedEvent;
}

/**
 * Records a delivery's events, one row per organization and ref change. A repeat (redelivery,
 * activity retry) inserts nothing and returns the rows already there. The first recording (nearly
 * every one) takes one statement: the inserted rows come back from the insert itself.
 */
export async function insertDeliveryEvents(
  db: Executor,
  delivery: { provider: Provider; deliveryId: string; connectionId?: string; receivedAt: Date },
  rows: readonly NewEventRow[],
  { withEvents = false }: { withEvents?: boolean } = {},
): Promise<RecordedEvent[]> {
  if (rows.length === 0) return [];
  const inserted: RecordedEvent[] = [];
  // In batches: the statement is one array a column (unnest), so no parameter limit applies, but a
  // delivery with thousands of ref changes then sends and returns them a thousand rows at a time.
  for (let start = 0; start < rows.length; start += INSERT_BATCH_ROWS) {
    inserted.push(...(await insertEventRows(db, delivery, rows.slice(start, start + INSERT_BATCH_ROWS), withEvents)));
  }
  // As the read below orders them (uuids compare as their lower-case text does).
  if (inserted.length === rows.length) return inserted.sort((a, b) => a.sequence - b.sequence || (a.organizationId < b.organizationId ? -1 : a.organizationId > b.organizationId ? 1 : 0));
  return db
    .selectFrom('events')
    .select(['id', 'organization_id as organizationId', 'sequence', 'kind'])
    .where('provider', '=', delivery.provider)
    .where('delivery_id', '=', delivery.deliveryId)
    // Only the organizations this run records for: another hook's delivery can carry the same id.
    .where('connection_id', delivery.connectionId ? '=' : 'is', delivery.connectionId ?? null)
    .where('organization_id', 'in', [...new Set(rows.map((r) => r.organizationId))])
    .orderBy('sequence')
    .orderBy('organization_id')
    .execute();
}

const INSERT_BATCH_ROWS = 1000;

/** Inserts the rows not there yet and returns those it inserted. */
async function insertEventRows(
  db: Executor,
  delivery: { provider: Provider; deliveryId: string; connectionId?: string; receivedAt: Date },
  rows: readonly NewEventRow[],
  withEvents: boolean,
): Promise<RecordedEvent[]> {
  const params = {
    organizationIds: rows.map((r) => r.organizationId),
    repositoryIds: rows.map((r) => r.repositoryId),
    sequences: rows.map((r) => r.sequence),
    kinds: rows.map((r) => r.event.kind),
    events: rows.map((r) => JSON.stringify(r.event)),
    provider: delivery.provider,
    deliveryId: delivery.deliveryId,
    connectionId: delivery.connectionId ?? null,
    receivedAt: delivery.receivedAt,
  };
  return (await (withEvents ? INSERT_EVENTS.withEvents : INSERT_EVENTS.plain)(db, params)).rows;
}

/**
 * insertEventRows' statement: the rows as one array a column (unnest), so that its SQL is the same
 * however many rows and it is compiled once (it runs for every delivery).
 */
const insertEvents = (
  db: Kysely<Database>,
  p: { organizationIds: string[]; repositoryIds: (string | null)[]; sequences: number[]; kinds: string[]; events: string[]; provider: Provider; deliveryId: string; connectionId: string | null; receivedAt: Date },
) =>
  db
    .insertInto('events')
    .columns(['organization_id', 'repository_id', 'provider', 'delivery_id', 'connection_id', 'sequence', 'kind', 'event', 'received_at'])
    .expression(
      sql`select r.organization_id, r.repository_id, ${p.provider}::text, ${p.deliveryId}::text, ${p.connectionId}::uuid, r.sequence, r.kind, r.event, ${p.receivedAt}::timestamptz
        from unnest(${p.organizationIds}::uuid[], ${p.repositoryIds}::uuid[], ${p.sequences}::integer[], ${p.kinds}::text[], ${p.events}::jsonb[]) as r(organization_id, repository_id, sequence, kind, event)`,
    )
    .onConflict((oc) => oc.columns(['provider', 'delivery_id', 'sequence', 'organization_id']).doNothing())
    .returning(['id', 'organization_id as organizationId', 'sequence', 'kind']);

const INSERT_EVENTS = {
  plain: prepared(insertEvents),
  withEvents: prepared((db, p: Parameters<typeof insertEvents>[1]) => insertEvents(db, p).returning('event')),
};

export interface EventListItem {
  id: string;
  repositoryId: string | null;
  receivedAt: Date;
  event: NormalizedEvent;
}

export interface EventPageCursor {
  receivedAt: Date;
  id: string;
}

/** An organization's events, newest first, keyset-paged on (received_at, id). */
export async function listEvents(
  db: Executor,
  organizationId: string,
  filter: { repositoryId?: string; repositoryFullName?: string; kind?: EventKind; after?: EventPageCursor; limit: number },
): Promise<EventListItem[]> {
  let query = db
    .selectFrom('events')
    .select(['id', 'repository_id as repositoryId', 'received_at as receivedAt', 'event'])
    .where('organization_id', '=', organizationId);
  if (filter.repositoryId) query = query.where('repository_id', '=', filter.repositoryId);
  if (filter.repositoryFullName) query = query.where(sql<string>`event->'repository'->>'fullName'`, '=', filter.repositoryFullName);
  if (filter.kind) query = query.where('kind', '=', filter.kind);
  if (filter.after) {
    const { receivedAt, id } = filter.after;
    query = query.where((eb) => eb.or([eb('received_at', '<', receivedAt), eb.and([eb('received_at', '=', receivedAt), eb('id', '<', id)])]));
  }
  return query.orderBy('received_at', 'desc').orderBy('id', 'desc').limit(filter.limit).execute();
}

export async function findEvent(db: Executor, organizationId: string, id: string): Promise<EventListItem | undefined> {
  return db
    .selectFrom('events')
    .select(['id', 'repository_id as repositoryId', 'received_at as receivedAt', 'event'])
    .where('organization_id', '=', organizationId)
    .where('id', '=', id)
    .executeTakeFirst();
}

/**
 * An organization's part of a delivery: its event rows, how many (event, subscriber) pairs of them
 * were acknowledged, and whether the delivery recorded events for another organization too (its
 * run's failure is then not the organization's alone). `connectionId`: the delivery came through
 * that connection's own hook (its run is that connection's); without it, GitHub's App or a legacy
 * hook. Only the rows of that very delivery count (`events.connection_id` matches exactly): another
 * hook's delivery under the same id, another tenant's, shows nothing of this run. No rows: the
 * delivery does not concern the organization (nor its run).
 */
export async function deliveryPartOf(
  db: Executor,
  provider: Provider,
  deliveryId: string,
  organizationId: string,
  connectionId?: string,
): Promise<{ eventIds: string[]; delivered: number; shared: boolean }> {
  const events = await db
    .selectFrom('events')
    .select(['id', 'organization_id'])
    .where('provider', '=', provider)
    .where('delivery_id', '=', deliveryId)
    .where('connection_id', connectionId ? '=' : 'is', connectionId ?? null)
    .execute();
  const eventIds = events.filter((e) => e.organization_id === organizationId).map((e) => e.id);
  const shared = events.some((e) => e.organization_id !== organizationId);
  if (eventIds.length === 0) return { eventIds, delivered: 0, shared };
  const acknowledged = await db
    .selectFrom('dispatch_attempts')
    .select(sql<string>`count(distinct (event_id, subscriber_id))`.as('count'))
    .where('event_id', 'in', eventIds)
    .where('succeeded', '=', true)
    .executeTakeFirstOrThrow();
  return { eventIds, delivered: Number(acknowledged.count), shared };
}
