import { sql, type Kysely } from 'kysely';

/**
 * The intake table: a delivery's normalized events are stored here by the webhook receiver, before
 * its event workflow starts, and the workflow's input names the row (provider, delivery id) instead
 * of carrying the events, so no history grows with the delivery. Rows are removed after
 * `webhooks.deliveryRetentionDays`.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('webhook_deliveries')
    .addColumn('provider', 'text', (c) => c.notNull())
    .addColumn('delivery_id', 'text', (c) => c.notNull())
    .addColumn('events', 'jsonb', (c) => c.notNull())
    .addColumn('installation_id', 'text')
    .addColumn('instance_url', 'text')
    .addColumn('received_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint('webhook_deliveries_pkey', ['provider', 'delivery_id'])
    .execute();
  await db.schema.createIndex('webhook_deliveries_received_at').on('webhook_deliveries').column('received_at').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('webhook_deliveries').execute();
}
