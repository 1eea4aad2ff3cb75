import type { Kysely, Transaction } from 'kysely';
import type { NormalizedEvent, Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** A verified, normalized delivery as the receiver stores it for its event workflow. */
export interface StoredDelivery {
  provider: Provider;
  deliveryId: string;
  events: NormalizedEvent[];
  installationId?: string;
  instanceUrl?: string;
}

/** Stores a delivery once: a redelivery (same provider and delivery id) keeps the row already there. */
export async function storeDelivery(db: Executor, delivery: StoredDelivery): Promise<void> {
  await db
    .insertInto('webhook_deliveries')
    .values({
      provider: delivery.provider,
      delivery_id: delivery.deliveryId,
      events: JSON.stringify(delivery.events),
      installation_id: delivery.installationId ?? null,
      instance_url: delivery.instanceUrl ?? null,
    })
    .onConflict((oc) => oc.columns(['provider', 'delivery_id']).doNothing())
    .execute();
}

export async function loadDelivery(db: Executor, provider: Provider, deliveryId: string): Promise<StoredDelivery | undefined> {
  const row = await db
    .selectFrom('webhook_deliveries')
    .select(['events', 'installation_id', 'instance_url'])
    .where('provider', '=', provider)
    .where('delivery_id', '=', deliveryId)
    .executeTakeFirst();
  if (!row) return undefined;
  return {
    provider,
    deliveryId,
    events: row.events,
    ...(row.installation_id ? { installationId: row.installation_id } : {}),
    ...(row.instance_url ? { instanceUrl: row.instance_url } : {}),
  };
}

/** Removes up to `limit` deliveries received before `cutoff`, oldest first; returns how many. */
export async function deleteDeliveriesReceivedBefore(db: Executor, cutoff: Date, limit: number): Promise<number> {
  const result = await db
    .deleteFrom('webhook_deliveries')
    .where(({ eb, refTuple, selectFrom }) =>
      eb(
        refTuple('provider', 'delivery_id'),
        'in',
        selectFrom('webhook_deliveries').select(['provider', 'delivery_id']).where('received_at', '<', cutoff).orderBy('received_at').limit(limit).$asTuple('provider', 'delivery_id'),
      ),
    )
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
