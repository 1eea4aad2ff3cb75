import { sql, type Kysely, type Transaction } from 'kysely';
import type { NormalizedEvent, Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/**
 * The dispatch queue of an event run with a large fan-out: one row per (event, subscriber) pair,
 * keyed by the run's workflow id (`runKey`), drained by the run's drainDispatches activity.
 */
export interface QueuedPair {
  eventId: string;
  subscriberId: string;
}

/** A statement takes at most 65,535 parameters; three per row. */
const QUEUE_BATCH_ROWS = 5000;

/**
 * Queues the pairs for the run, due now. A pair already queued keeps its state (a retried
 * recording, or another hook's run of the same delivery, never sends a delivered pair again); a
 * pair given up on by an earlier run of the same delivery is queued again, as a redelivery
 * dispatches it again.
 */
export async function queueDispatches(db: Executor, runKey: string, pairs: readonly QueuedPair[], now: Date): Promise<void> {
  for (let start = 0; start < pairs.length; start += QUEUE_BATCH_ROWS) {
    await db
      .insertInto('event_dispatches')
      .values(pairs.slice(start, start + QUEUE_BATCH_ROWS).map((p) => ({ event_id: p.eventId, subscriber_id: p.subscriberId, run_key: runKey, status: 'pending' as const, next_attempt_at: now })))
      .onConflict((oc) =>
        oc
          .columns(['event_id', 'subscriber_id'])
          .doUpdateSet({ status: 'pending', run_key: runKey, next_attempt_at: now })
          .where('event_dispatches.status', '=', 'undelivered'),
      )
      .execute();
  }
}

export interface ClaimedPair extends QueuedPair {
  /** Attempts made so far; this one is `attempts + 1`. */
  attempts: number;
}

/**
 * Claims up to `limit` of the run's pending pairs due at `now`, in the order they fell due, by
 * moving their next attempt to `leaseUntil`: a second drain (a retry while a lost worker's attempt
 * still runs) skips them until then, and a drain that dies mid-send leaves them due again after it.
 * With `organizations`, only pairs whose subscriber belongs to one of them.
 */
export async function claimDueDispatches(
  db: Executor,
  runKey: string,
  options: { now: Date; leaseUntil: Date; limit: number; organizations?: readonly string[] },
): Promise<ClaimedPair[]> {
  const ofOrganizations = options.organizations
    ? sql`and subscriber_id in (select id from subscribers where organization_id = any(${[...options.organizations]}::uuid[]))`
    : sql``;
  const { rows } = await sql<{ event_id: string; subscriber_id: string; attempts: number }>`
    update event_dispatches d set next_attempt_at = ${options.leaseUntil}
    from (
      select event_id, subscriber_id from event_dispatches
      where run_key = ${runKey} and status = 'pending' and next_attempt_at <= ${options.now} ${ofOrganizations}
      order by next_attempt_at
      limit ${options.limit}
      for update skip locked
    ) due
    where d.event_id = due.event_id and d.subscriber_id = due.subscriber_id
    returning d.event_id, d.subscriber_id, d.attempts
  `.execute(db);
  return rows.map((r) => ({ eventId: r.event_id, subscriberId: r.subscriber_id, attempts: r.attempts }));
}

/** The organizations whose subscribers the run's pending pairs go to (subscribers' rows: never the delivery's own words). */
export async function pendingDispatchOrganizations(db: Executor, runKey: string): Promise<string[]> {
  const rows = await db
    .selectFrom('event_dispatches as d')
    .innerJoin('subscribers as s', 's.id', 'd.subscriber_id')
    .select('s.organization_id')
    .distinct()
    .where('d.run_key', '=', runKey)
    .where('d.status', '=', 'pending')
    .orderBy('s.organization_id')
    .execute();
  return rows.map((r) => r.organization_id);
}

export type AttemptRecord =
  | { succeeded: true; statusCode: number; durationMs: number }
  | { succeeded: false; statusCode?: number; error: string; durationMs: number; reason: string; nextAttemptAt: Date | null };

/**
 * Records one attempt of a queued pair where the API reads attempts (dispatch_attempts) and, in the
 * same statement, the pair's state: delivered (never claimed again), due again at `nextAttemptAt`,
 * or given up on (`nextAttemptAt` null). One statement, so one round trip per attempt.
 */
/** Records an attempt and the pair's new state; false when the pair was no longer pending (its state stays as another drain left it). */
export async function recordQueuedAttempt(db: Executor, pair: QueuedPair & { attempt: number }, record: AttemptRecord): Promise<boolean> {
  const status = record.succeeded ? 'delivered' : record.nextAttemptAt ? 'pending' : 'undelivered';
  const nextAttemptAt = record.succeeded ? null : record.nextAttemptAt;
  const reason = record.succeeded ? null : record.reason;
  const result = await sql`
    with attempt as (
      insert into dispatch_attempts (subscriber_id, event_id, attempt, succeeded, status_code, error, duration_ms)
      values (${pair.subscriberId}, ${pair.eventId}, ${pair.attempt}, ${record.succeeded}, ${record.statusCode ?? null}, ${record.succeeded ? null : record.error}, ${record.durationMs})
      on conflict (subscriber_id, event_id, attempt) do update
        set succeeded = excluded.succeeded, status_code = excluded.status_code, error = excluded.error, duration_ms = excluded.duration_ms
    )
    update event_dispatches
    set status = ${status}, attempts = ${pair.attempt}, last_reason = ${reason}, next_attempt_at = coalesce(${nextAttemptAt}::timestamptz, next_attempt_at)
    where event_id = ${pair.eventId} and subscriber_id = ${pair.subscriberId} and status = 'pending'
  `.execute(db);
  return Number(result.numAffectedRows ?? 0) > 0;
}

/** Gives up on a pair without an attempt (an address the policy refuses stays refused). */
export async function giveUpDispatch(db: Executor, pair: QueuedPair, reason: string): Promise<void> {
  await db
    .updateTable('event_dispatches')
    .set({ status: 'undelivered', last_reason: reason })
    .where('event_id', '=', pair.eventId)
    .where('subscriber_id', '=', pair.subscriberId)
    .where('status', '=', 'pending')
    .execute();
}

/**
 * A subscriber that failed (or asked to wait, Retry-After) is left alone until `until`: the run's
 * other pending pairs for it wait too, rather than each try it (and each wait out its timeout).
 */
export async function deferSubscriber(db: Executor, runKey: string, subscriberId: string, until: Date, reason: string): Promise<void> {
  // The rows are locked in one order (event_id): two pairs of one subscriber failing at once defer
  // the same rows, and two plain multi-row UPDATEs lock them in whatever order each scan meets them,
  // which deadlocked (40P01, seen in the fan-out test) and failed the drain's attempt.
  await sql`
    update event_dispatches d
    set next_attempt_at = greatest(d.next_attempt_at, ${until}), last_reason = coalesce(d.last_reason, ${reason})
    from (
      select event_id from event_dispatches
      where run_key = ${runKey} and subscriber_id = ${subscriberId} and status = 'pending'
      order by event_id
      for update
    ) pending
    where d.event_id = pending.event_id and d.subscriber_id = ${subscriberId} and d.status = 'pending'
  `.execute(db);
}

/** Hands a claimed pair back unattempted, due at `at` (its subscriber is being left alone until then). */
export async function releaseDispatch(db: Executor, pair: QueuedPair, at: Date): Promise<void> {
  await db
    .updateTable('event_dispatches')
    .set({ next_attempt_at: at })
    .where('event_id', '=', pair.eventId)
    .where('subscriber_id', '=', pair.subscriberId)
    .where('status', '=', 'pending')
    .execute();
}

/** At the dispatch deadline: every pair still pending is given up on, with its last reason. Returns how many (a second call finds none). */
export async function giveUpPendingDispatches(db: Executor, runKey: string, reason: string): Promise<number> {
  // Locked in (event_id, subscriber_id) order, the order deferSubscriber locks a subscriber's rows in.
  const result = await sql`
    update event_dispatches d
    set status = 'undelivered', last_reason = coalesce(d.last_reason, ${reason})
    from (
      select event_id, subscriber_id from event_dispatches
      where run_key = ${runKey} and status = 'pending'
      order by event_id, subscriber_id
      for update
    ) pending
    where d.event_id = pending.event_id and d.subscriber_id = pending.subscriber_id and d.status = 'pending'
  `.execute(db);
  return Number(result.numAffectedRows ?? 0);
}

export interface DispatchCounts {
  pending: number;
  delivered: number;
  undelivered: number;
  /** When the earliest pending pair falls due (claimed pairs: when their lease ends). */
  nextDueAt: Date | null;
}

export async function dispatchCounts(db: Executor, runKey: string): Promise<DispatchCounts> {
  const row = await db
    .selectFrom('event_dispatches')
    .select([
      sql<string>`count(*) filter (where status = 'pending')`.as('pending'),
      sql<string>`count(*) filter (where status = 'delivered')`.as('delivered'),
      sql<string>`count(*) filter (where status = 'undelivered')`.as('undelivered'),
      sql<Date | null>`min(next_attempt_at) filter (where status = 'pending')`.as('nextDueAt'),
    ])
    .where('run_key', '=', runKey)
    .executeTakeFirstOrThrow();
  return { pending: Number(row.pending), delivered: Number(row.delivered), undelivered: Number(row.undelivered), nextDueAt: row.nextDueAt };
}

export interface UndeliveredPair extends QueuedPair {
  reason: string;
}

/** The first `limit` pairs given up on, in a stable order. */
export async function listUndeliveredDispatches(db: Executor, runKey: string, limit: number): Promise<UndeliveredPair[]> {
  const rows = await db
    .selectFrom('event_dispatches')
    .select(['event_id as eventId', 'subscriber_id as subscriberId', 'last_reason as reason'])
    .where('run_key', '=', runKey)
    .where('status', '=', 'undelivered')
    .orderBy('event_id')
    .orderBy('subscriber_id')
    .limit(limit)
    .execute();
  return rows.map((r) => ({ ...r, reason: r.reason ?? 'not delivered before the dispatch deadline' }));
}

/** One organization's part of a delivery's queued dispatches given up on: how many, and the first `limit`. */
export async function undeliveredDispatchesOf(
  db: Executor,
  delivery: { provider: Provider; deliveryId: string; organizationId: string },
  limit: number,
): Promise<{ count: number; first: UndeliveredPair[] }> {
  const base = db
    .selectFrom('event_dispatches as d')
    .innerJoin('events as e', 'e.id', 'd.event_id')
    .where('e.provider', '=', delivery.provider)
    .where('e.delivery_id', '=', delivery.deliveryId)
    .where('e.organization_id', '=', delivery.organizationId)
    .where('d.status', '=', 'undelivered');
  const { count } = await base.select(sql<string>`count(*)`.as('count')).executeTakeFirstOrThrow();
  const first = await base
    .select(['d.event_id as eventId', 'd.subscriber_id as subscriberId', 'd.last_reason as reason'])
    .orderBy('d.event_id')
    .orderBy('d.subscriber_id')
    .limit(limit)
    .execute();
  return { count: Number(count), first: first.map((r) => ({ ...r, reason: r.reason ?? 'not delivered before the dispatch deadline' })) };
}

export interface DispatchableEvent {
  id: string;
  receivedAt: Date;
  event: NormalizedEvent;
}

/** The events of a claimed batch, by id, in one read. */
export async function loadEventsForDispatch(db: Executor, ids: readonly string[]): Promise<Map<string, DispatchableEvent>> {
  if (ids.length === 0) return new Map();
  const rows = await db.selectFrom('events').select(['id', 'received_at as receivedAt', 'event']).where('id', 'in', [...new Set(ids)]).execute();
  return new Map(rows.map((r) => [r.id, r]));
}
