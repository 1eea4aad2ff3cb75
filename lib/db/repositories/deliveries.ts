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

/** Stores a delivery once: a redelivery (same provider, connection and delivery id) keeps the row already there. */
export async function storeDelivery(db: Executor, delivery: StoredDelivery): Promise<void> {
  await db
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
    .execute();
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
}

/**
 * Locks up to `limit` unstarted deliveries for `taskQueue`, oldest first, skipping rows another relay holds, and
 * hands them to `startAll`, which returns the ones it started; those are marked started when the
 * transaction commits. Several relays (one per API replica) never start the same row twice.
 */
export async function startPendingDeliveries(
  db: Kysely<Database>,
  taskQueue: string,
  limit: number,
  startAll: (pending: PendingDelivery[]) => Promise<PendingDelivery[]>,
): Promise<{ locked: number; started: number }> {
  return db.transaction().execute(async (trx) => {
    const rows = await trx
      .selectFrom('webhook_deliveries')
      .select(['provider', 'delivery_id', 'connection_id', 'received_at', 'start', sql<string>`ctid::text`.as('row')])
      .where('started_at', 'is', null)
      .where(sql<string>`start->>'taskQueue'`, '=', taskQueue)
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
      ...(r.connection_id ? { connectionId: r.connection_id } : {}),
    }));
    const started = new Set(await startAll(pending));
    // The rows are locked, so their physical ids stand until the transaction ends.
    const startedRows = rows.filter((_, i) => started.has(pending[i]!)).map((r) => r.row);
    if (startedRows.length > 0) {
      await trx.updateTable('webhook_deliveries').set({ started_at: sql`now()` }).where(sql<boolean>`ctid = any(${startedRows}::tid[])`).execute();
    }
    return { locked: rows.length, started: startedRows.length };
  });
}

/** Deliveries acknowledged but not yet handed to Temporal: how many, and since when. */
export async function intakeBacklog(db: Executor): Promise<{ pending: number; oldestReceivedAt?: Date }> {
  const row = await db
    .selectFrom('webhook_deliveries')
    .select(({ fn }) => [fn.countAll<string>().as('pending'), fn.min('received_at').as('oldest')])
    .where('started_at', 'is', null)
    .executeTakeFirstOrThrow();
  return { pending: Number(row.pending), ...(row.oldest ? { oldestReceivedAt: row.oldest as Date } : {}) };
}
