import { sql, type Kysely, type Transaction } from 'kysely';
import type { NormalizedEvent, Provider } from '../../domain.ts';
import type { Database, DeliveryStart } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** A verified, normalized delivery as the receiver stores it for its event workflow. */
export interface StoredDelivery {
  provider: Provider;
  deliveryId: string;
  /** The connection whose own hook delivered (its deliveries are its own, whatever their id). */
  connectionId?: string;
  events: NormalizedEvent[];
  installationId?: string;
  instanceUrl?: string;
  /** What the intake relay needs to start the run (absent when the caller starts it itself). */
  start?: DeliveryStart;
}

/** Stores a delivery once: a redelivery (same provider, connection and delivery id) keeps the row already there. Returns whether this call stored it. */
export async function storeDelivery(db: Executor, delivery: StoredDelivery): Promise<boolean> {
  const result = await db
    .insertInto('webhook_deliveries')
    .values({
      provider: delivery.provider,
      delivery_id: delivery.deliveryId,
      connection_id: delivery.connectionId ?? null,
      events: JSON.stringify(delivery.events),
      installation_id: delivery.installationId ?? null,
      instance_url: delivery.instanceUrl ?? null,
      start: delivery.start ? JSON.stringify(delivery.start) : null,
    })
    .onConflict((oc) => oc.constraint('webhook_deliveries_key').doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0n) > 0;
}

export async function loadDelivery(db: Executor, key: { provider: Provider; deliveryId: string; connectionId?: string }): Promise<StoredDelivery | undefined> {
  const { provider, deliveryId, connectionId } = key;
  const row = await db
    .selectFrom('webhook_deliveries')
    .select(['events', 'installation_id', 'instance_url'])
    .where('provider', '=', provider)
    .where('delivery_id', '=', deliveryId)
    .where('connection_id', connectionId ? '=' : 'is', connectionId ?? null)
    .executeTakeFirst();
  if (!row) return undefined;
  return {
    provider,
    deliveryId,
    ...(connectionId ? { connectionId } : {}),
    events: row.events,
    ...(row.installation_id ? { installationId: row.installation_id } : {}),
    ...(row.instance_url ? { instanceUrl: row.instance_url } : {}),
  };
}

/** Removes up to `limit` deliveries received before `cutoff` whose runs were started (an unstarted one is still owed its run), oldest first; returns how many. */
export async function deleteDeliveriesReceivedBefore(db: Executor, cutoff: Date, limit: number): Promise<number> {
  const result = await db
    .deleteFrom('webhook_deliveries')
    .where(sql<string>`ctid`, 'in', db.selectFrom('webhook_deliveries').select(sql<string>`ctid`.as('ctid')).where('received_at', '<', cutoff).where('started_at', 'is not', null).orderBy('received_at').limit(limit))
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

/** A stored delivery whose event workflow has not been started yet. */
export interface PendingDelivery {
  provider: Provider;
  deliveryId: string;
  receivedAt: Date;
  start: DeliveryStart;
  /** The connection whose own hook delivered it (absent: GitHub, or a legacy hook). */
  connectionId?: string;
  /** Starts of it that failed so far. */
  attempts: number;
}

/** What became of one start: the run is there, or the start failed (`error`: short, no secret) and the row is tried again after `retryInMs` (null: at the relay's next round). */
export type StartOutcome = { started: true } | { started: false; error: string; retryInMs: number | null };

/**
 * Locks up to `limit` unstarted deliveries for `taskQueue` that are due (never failed, or past
 * their `next_attempt_at`), oldest first, skipping rows another relay holds, and hands them to
 * `startAll`, which says for each one whether its run started. When the transaction commits, the
 * started ones are marked started and the failed ones carry one more attempt, the error and when
 * to try again. Several relays (one per API replica) never start the same row twice.
 */
export async function startPendingDeliveries(
  db: Kysely<Database>,
  taskQueue: string,
  limit: number,
  startAll: (pending: PendingDelivery[]) => Promise<StartOutcome[]>,
): Promise<{ locked: number; started: number }> {
  return db.transaction().execute(async (trx) => {
    const rows = await trx
      .selectFrom('webhook_deliveries')
      .select(['provider', 'delivery_id', 'connection_id', 'received_at', 'start', 'attempts', sql<string>`ctid::text`.as('row')])
      .where('started_at', 'is', null)
      .where(sql<string>`start->>'taskQueue'`, '=', taskQueue)
      .where((eb) => eb.or([eb('next_attempt_at', 'is', null), eb('next_attempt_at', '<=', sql<Date>`now()`)]))
      .orderBy('received_at')
      .limit(limit)
      .forUpdate()
      .skipLocked()
      .execute();
    if (rows.length === 0) return { locked: 0, started: 0 };
    const pending = rows.map((r) => ({
      provider: r.provider,
      deliveryId: r.delivery_id,
      receivedAt: r.received_at,
      start: r.start!,
      attempts: r.attempts,
      ...(r.connection_id ? { connectionId: r.connection_id } : {}),
    }));
    const outcomes = await startAll(pending);
    // The rows are locked, so their physical ids stand until the transaction ends.
    const startedRows = rows.filter((_, i) => outcomes[i]?.started).map((r) => r.row);
    if (startedRows.length > 0) {
      // clock_timestamp(), not now(): the moment the starts returned, not the transaction's beginning.
      await trx.updateTable('webhook_deliveries').set({ started_at: sql`clock_timestamp()` }).where(sql<boolean>`ctid = any(${startedRows}::tid[])`).execute();
    }
    const failed = rows.flatMap((r, i) => {
      const outcome = outcomes[i];
      return outcome && !outcome.started ? [{ row: r.row, error: outcome.error, retryInMs: outcome.retryInMs }] : [];
    });
    if (failed.length > 0) {
      await sql`
        update webhook_deliveries w
        set attempts = w.attempts + 1,
            last_error = f.error,
            next_attempt_at = now() + f.retry_in_ms * interval '1 millisecond'
        from unnest(${failed.map((f) => f.row)}::tid[], ${failed.map((f) => f.error)}::text[], ${failed.map((f) => f.retryInMs)}::bigint[]) as f(row, error, retry_in_ms)
        where w.ctid = f.row`.execute(trx);
    }
    return { locked: rows.length, started: startedRows.length };
  });
}

/** The intake table's backlog: deliveries acknowledged whose runs have not started yet. */
export interface IntakeBacklog {
  /** Rows not started yet, whatever their task queue. */
  pending: number;
  /** When the oldest of them was acknowledged, and how long ago that is (by the database's clock). */
  oldestReceivedAt?: Date;
  oldestAgeSeconds?: number;
  /** Those of them whose start failed at least once (Temporal unreachable, or refusing them). */
  failing: number;
  /** The oldest failing row: its run, how often it failed, why last, and when it is tried again. */
  oldestFailure?: { provider: Provider; deliveryId: string; attempts: number; lastError: string; nextAttemptAt?: Date };
  /** Pending rows per task queue (a relay starts only its own deployment's; rows of a queue no deployment serves any more wait here). */
  byTaskQueue: Record<string, number>;
}

/**
 * Deliveries acknowledged but not yet handed to Temporal: how many, since when, how many failing.
 * Cheap (the partial backlog index), for /readyz and the metrics.
 */
export async function intakeBacklog(db: Executor): Promise<IntakeBacklog> {
  const [totals, queues, failure] = await Promise.all([
    db
      .selectFrom('webhook_deliveries')
      .select(({ fn }) => [
        fn.countAll<string>().as('pending'),
        fn.min('received_at').as('oldest'),
        sql<number | null>`extract(epoch from now() - min(received_at))::float8`.as('oldest_age'),
        sql<string>`count(*) filter (where attempts > 0)`.as('failing'),
      ])
      .where('started_at', 'is', null)
      .executeTakeFirstOrThrow(),
    db
      .selectFrom('webhook_deliveries')
      .select(({ fn }) => [sql<string | null>`start->>'taskQueue'`.as('task_queue'), fn.countAll<string>().as('pending')])
      .where('started_at', 'is', null)
      .groupBy(sql`start->>'taskQueue'`)
      .execute(),
    db
      .selectFrom('webhook_deliveries')
      .select(['provider', 'delivery_id', 'attempts', 'last_error', 'next_attempt_at'])
      .where('started_at', 'is', null)
      .where('attempts', '>', 0)
      .orderBy('received_at')
      .limit(1)
      .executeTakeFirst(),
  ]);
  return {
    pending: Number(totals.pending),
    ...(totals.oldest ? { oldestReceivedAt: totals.oldest as Date, oldestAgeSeconds: Math.round(Number(totals.oldest_age) * 1000) / 1000 } : {}),
    failing: Number(totals.failing),
    ...(failure
      ? {
          oldestFailure: {
            provider: failure.provider,
            deliveryId: failure.delivery_id,
            attempts: failure.attempts,
            lastError: failure.last_error ?? '',
            ...(failure.next_attempt_at ? { nextAttemptAt: failure.next_attempt_at } : {}),
          },
        }
      : {}),
    byTaskQueue: Object.fromEntries(queues.map((q) => [q.task_queue ?? '(none)', Number(q.pending)])),
  };
}
