import { sql, type Kysely } from 'kysely';

/**
 * A delivery to a connection's own hook is stored under that connection. Providers give the
 * deliveries of two hooks for one event the same id (Azure DevOps' event id, older GitLab's event
 * UUID), and Bitbucket's X-Request-Id is the sender's to choose: keyed by provider and delivery id
 * alone, one connection's delivery could take the row another connection's run then reads.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('webhook_deliveries').addColumn('connection_id', 'uuid', (c) => c.references('connections.id').onDelete('cascade')).execute();
  await db.schema.alterTable('webhook_deliveries').dropConstraint('webhook_deliveries_pkey').execute();
  // GitHub and legacy hooks' deliveries name no connection: one row per provider and delivery id among them too.
  await sql`alter table webhook_deliveries add constraint webhook_deliveries_key unique nulls not distinct (provider, delivery_id, connection_id)`.execute(db);
}

/**
 * Back to one row per provider and delivery id: only the rows that would collide go (a connection's
 * row beside a row of no connection, or beside an earlier one of another connection), not every
 * connection's row, many of them deliveries whose runs are still owed (not started yet) or still
 * to read them. A row kept is started by the older relay under its run id of that version.
 */
export async function down(db: Kysely<any>): Promise<void> {
  await sql`
    delete from webhook_deliveries w using webhook_deliveries o
    where w.provider = o.provider and w.delivery_id = o.delivery_id and w.ctid <> o.ctid
      and w.connection_id is not null
      and (o.connection_id is null or (o.received_at, o.ctid) < (w.received_at, w.ctid))`.execute(db);
  await db.schema.alterTable('webhook_deliveries').dropConstraint('webhook_deliveries_key').execute();
  await db.schema.alterTable('webhook_deliveries').dropColumn('connection_id').execute();
  await db.schema.alterTable('webhook_deliveries').addPrimaryKeyConstraint('webhook_deliveries_pkey', ['provider', 'delivery_id']).execute();
}
