import { sql, type Kysely, type Transaction } from 'kysely';
import type { EventKind } from '../../domain.ts';
import type { Database } from '../schema.ts';
import { prepared } from '../prepared.ts';
import { lockOrganization } from './organizations.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** A subscriber as the API shows it: never its secret. */
export interface PublicSubscriber {
  id: string;
  organizationId: string;
  url: string;
  /** Empty: every kind. */
  kinds: EventKind[];
  /** Empty: every ref (and events without one). */
  refGlobs: string[];
  createdAt: Date;
}

const PUBLIC_COLUMNS = ['id', 'organization_id as organizationId', 'url', 'kinds', 'ref_globs as refGlobs', 'created_at as createdAt'] as const;

export async function insertSubscriber(
  db: Executor,
  row: { id: string; organizationId: string; url: string; sealedSecret: string; kinds: EventKind[]; refGlobs: string[] },
): Promise<PublicSubscriber> {
  return db
    .insertInto('subscribers')
    .values({
      id: row.id,
      organization_id: row.organizationId,
      url: row.url,
      secret: row.sealedSecret,
      kinds: JSON.stringify(row.kinds),
      ref_globs: JSON.stringify(row.refGlobs),
    })
    .returning(PUBLIC_COLUMNS)
    .executeTakeFirstOrThrow();
}

/** What the organization's subscribers add up to, holding its row until the transaction ends (lockOrganization). */
export async function lockSubscriberTotals(trx: Transaction<Database>, organizationId: string): Promise<{ subscribers: number; refGlobs: number; refGlobCharacters: number }> {
  await lockOrganization(trx, organizationId);
  const { subscribers, refGlobs, refGlobCharacters } = await trx
    .selectFrom('subscribers')
    .select([
      sql<string>`count(*)`.as('subscribers'),
      sql<string>`coalesce(sum(jsonb_array_length(ref_globs)), 0)`.as('refGlobs'),
      sql<string>`coalesce(sum((select sum(char_length(g)) from jsonb_array_elements_text(ref_globs) g)), 0)`.as('refGlobCharacters'),
    ])
    .where('organization_id', '=', organizationId)
    .executeTakeFirstOrThrow();
  return { subscribers: Number(subscribers), refGlobs: Number(refGlobs), refGlobCharacters: Number(refGlobCharacters) };
}

export async function listSubscribers(db: Executor, organizationId: string): Promise<PublicSubscriber[]> {
  return db.selectFrom('subscribers').select(PUBLIC_COLUMNS).where('organization_id', '=', organizationId).orderBy('created_at').orderBy('id').execute();
}

export async function findSubscriber(db: Executor, organizationId: string, id: string): Promise<PublicSubscriber | undefined> {
  return db.selectFrom('subscribers').select(PUBLIC_COLUMNS).where('organization_id', '=', organizationId).where('id', '=', id).executeTakeFirst();
}

/** Deletes a subscriber and, with it, the record of its dispatch attempts. */
export async function deleteSubscriber(db: Executor, organizationId: string, id: string): Promise<boolean> {
  const result = await db.deleteFrom('subscribers').where('organization_id', '=', organizationId).where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/** Every subscriber of these organizations, with their filters: the event workflow matches events against them. */
export async function listSubscribersOf(db: Executor, organizationIds: readonly string[]): Promise<PublicSubscriber[]> {
  if (organizationIds.length === 0) return [];
  return (await LIST_SUBSCRIBERS_OF(db, { organizationIds: [...new Set(organizationIds)] })).rows;
}

/**
 * listSubscribersOf with each subscriber's sealed secret, for a recording that makes the first
 * attempts itself (activities/events.ts recordEventAndDispatch): the secret stays in the worker's
 * memory, opened only to sign.
 */
export async function listSubscribersForDispatchOf(db: Executor, organizationIds: readonly string[]): Promise<(PublicSubscriber & { secret: string })[]> {
  if (organizationIds.length === 0) return [];
  return (await LIST_SUBSCRIBERS_FOR_DISPATCH_OF(db, { organizationIds: [...new Set(organizationIds)] })).rows;
}

/** The subscribers of organizations (one array parameter: one statement, compiled once, however many): it runs for every delivery. */
const subscribersOf = (db: Kysely<Database>, p: { organizationIds: string[] }) =>
  db.selectFrom('subscribers').where(sql<boolean>`organization_id = any(${p.organizationIds}::uuid[])`).orderBy('created_at').orderBy('id');

const LIST_SUBSCRIBERS_OF = prepared((db, p: { organizationIds: string[] }) => subscribersOf(db, p).select(PUBLIC_COLUMNS));
const LIST_SUBSCRIBERS_FOR_DISPATCH_OF = prepared((db, p: { organizationIds: string[] }) => subscribersOf(db, p).select([...PUBLIC_COLUMNS, 'secret']));

/**
 * What one dispatch attempt needs, in one read (it runs for every event and subscriber): the
 * subscriber with its sealed secret (undefined: deleted), the event in the subscriber's
 * organization (undefined: deleted), and whether the subscriber already acknowledged it.
 */
export async function loadDispatch(db: Executor, subscriberId: string, eventId: string) {
  const row = await db
    .selectFrom('subscribers as s')
    .leftJoin('events as e', (join) => join.onRef('e.organization_id', '=', 's.organization_id').on('e.id', '=', eventId))
    .select((eb) => [
      's.id',
      's.organization_id',
      's.url',
      's.secret',
      'e.id as event_id',
      'e.received_at',
      'e.event',
      eb
        .exists(eb.selectFrom('dispatch_attempts as d').select('d.id').where('d.subscriber_id', '=', subscriberId).where('d.event_id', '=', eventId).where('d.succeeded', '=', true))
        .as('delivered'),
    ])
    .where('s.id', '=', subscriberId)
    .executeTakeFirst();
  if (!row) return undefined;
  const { event_id, received_at, event, delivered, ...subscriber } = row;
  return { subscriber, event: event_id && received_at && event ? { id: event_id, receivedAt: received_at, event } : undefined, delivered };
}

/** A subscriber with its sealed secret, for the dispatch queue's drain (which reads the events in bulk). */
export async function loadSubscriberForDispatch(db: Executor, id: string) {
  return db.selectFrom('subscribers').select(['id', 'organization_id', 'url', 'secret']).where('id', '=', id).executeTakeFirst();
}

export interface DispatchAttempt {
  subscriberId: string;
  attempt: number;
  succeeded: boolean;
  statusCode: number | null;
  error: string | null;
  durationMs: number | null;
  attemptedAt: Date;
}

/**
 * Records one attempt's outcome; a re-run of the same attempt (worker crash) overwrites it. A failed
 * attempt's `retryAfterSeconds` (the subscriber's Retry-After as honoured: whole seconds, bounded)
 * is kept as the time it ends, reckoned from this write on the database's clock: a rewrite of the
 * attempt reckons it from its own answer.
 */
export async function recordDispatchAttempt(
  db: Executor,
  row: { subscriberId: string; eventId: string; attempt: number; succeeded: boolean; statusCode?: number; error?: string; retryAfterSeconds?: number; durationMs: number },
): Promise<void> {
  await RECORD_DISPATCH_ATTEMPT(db, {
    subscriberId: row.subscriberId,
    eventId: row.eventId,
    attempt: row.attempt,
    succeeded: row.succeeded,
    statusCode: row.statusCode ?? null,
    error: row.error ?? null,
    durationMs: row.durationMs,
    retryAfterSeconds: row.retryAfterSeconds ?? null,
  });
}

/** recordDispatchAttempt's statement, compiled once: it runs for every attempt. */
const RECORD_DISPATCH_ATTEMPT = prepared(
  (
    db,
    p: { subscriberId: string; eventId: string; attempt: number; succeeded: boolean; statusCode: number | null; error: string | null; durationMs: number; retryAfterSeconds: number | null },
  ) => {
    const values = {
      status_code: p.statusCode,
      error: p.error,
      succeeded: p.succeeded,
      duration_ms: p.durationMs,
      // No Retry-After (null): make_interval of null is null.
      retry_not_before: sql<Date | null>`now() + make_interval(secs => ${p.retryAfterSeconds})`,
    };
    return db
      .insertInto('dispatch_attempts')
      .values({ subscriber_id: p.subscriberId, event_id: p.eventId, attempt: p.attempt, ...values })
      .onConflict((oc) =>
        // A late write of an attempt (a timed-out or cancelled execution's, landing after its retry's)
        // never turns an acknowledged attempt back into a failure: a later attempt would resend it.
        oc.columns(['subscriber_id', 'event_id', 'attempt']).doUpdateSet(values).where('dispatch_attempts.succeeded', '=', false),
      );
  },
);

/** A pair's latest failed attempt, for a pair no attempt of which succeeded. */
export interface FailedDispatchAttempt {
  attempt: number;
  statusCode: number | null;
  error: string | null;
  /** Whole seconds left of the subscriber's Retry-After (0: none, or over). */
  waitSeconds: number;
}

/**
 * The latest failed attempt of a pair none of whose attempts succeeded, if any (undefined: no
 * attempt recorded, or one succeeded). The wait is reckoned on the database's clock, which wrote
 * retry_not_before.
 */
export async function failedDispatchAttempt(db: Executor, subscriberId: string, eventId: string): Promise<FailedDispatchAttempt | undefined> {
  const rows = await db
    .selectFrom('dispatch_attempts')
    .select((eb) => [
      'attempt',
      'succeeded',
      'status_code as statusCode',
      'error',
      sql<number>`coalesce(greatest(0, ceil(extract(epoch from ${eb.ref('retry_not_before')} - now())))::integer, 0)`.as('waitSeconds'),
    ])
    .where('subscriber_id', '=', subscriberId)
    .where('event_id', '=', eventId)
    .orderBy('attempt', 'desc')
    .execute();
  if (rows.length === 0 || rows.some((r) => r.succeeded)) return undefined;
  const { succeeded: _failed, ...latest } = rows[0]!;
  return latest;
}

export async function listDispatchAttempts(db: Executor, eventId: string): Promise<DispatchAttempt[]> {
  return db
    .selectFrom('dispatch_attempts')
    .select(['subscriber_id as subscriberId', 'attempt', 'succeeded', 'status_code as statusCode', 'error', 'duration_ms as durationMs', 'attempted_at as attemptedAt'])
    .where('event_id', '=', eventId)
    .orderBy('attempted_at')
    .orderBy('subscriber_id')
    .orderBy('attempt')
    .execute();
}
