import { type Kysely, sql } from 'kysely';

/**
 * Events are recorded once per organization the delivery concerns (several organizations can attach
 * the same repository), so the delivery key gains the organization. Plus the indexes the webhook
 * receiver, the event workflow and the events / deliveries API read through.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.deleteFrom('events').where('organization_id', 'is', null).execute();
  await db.schema.alterTable('events').alterColumn('organization_id', (c) => c.setNotNull()).execute();
  await db.schema.alterTable('events').dropConstraint('events_provider_delivery_sequence').execute();
  await db.schema
    .alterTable('events')
    .addUniqueConstraint('events_provider_delivery_sequence_org', ['provider', 'delivery_id', 'sequence', 'organization_id'])
    .execute();
  await db.schema.createIndex('events_org_repository_received').on('events').columns(['organization_id', 'repository_id', 'received_at', 'id']).execute();

  // The receiver finds attached repositories by the provider's id for them, on every delivery.
  await db.schema.createIndex('repositories_provider_external_id').on('repositories').columns(['provider', 'external_id']).execute();
  // GitHub installation events name the installation, not a repository the organization attached.
  await db.schema.createIndex('connections_provider_external_key').on('connections').columns(['provider', 'external_key']).execute();

  await db.schema.createIndex('subscribers_org').on('subscribers').columns(['organization_id', 'created_at', 'id']).execute();
  await db.schema.createIndex('dispatch_attempts_event').on('dispatch_attempts').columns(['event_id', 'attempted_at']).execute();
  await db.schema.alterTable('dispatch_attempts').addColumn('duration_ms', 'integer').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('dispatch_attempts').dropColumn('duration_ms').execute();
  for (const index of ['dispatch_attempts_event', 'subscribers_org', 'connections_provider_external_key', 'repositories_provider_external_id', 'events_org_repository_received']) {
    await db.schema.dropIndex(index).ifExists().execute();
  }
  await db.schema.alterTable('events').dropConstraint('events_provider_delivery_sequence_org').execute();
  // The older key holds one row per delivery and sequence: a delivery recorded for several
  // organizations keeps its first row only (the others' delivery attempts go with them).
  await sql`
    delete from events where id in (
      select id from (select id, row_number() over (partition by provider, delivery_id, sequence order by received_at, id) as n from events) ranked where n > 1
    )`.execute(db);
  await db.schema.alterTable('events').addUniqueConstraint('events_provider_delivery_sequence', ['provider', 'delivery_id', 'sequence']).execute();
  await db.schema.alterTable('events').alterColumn('organization_id', (c) => c.dropNotNull()).execute();
}
