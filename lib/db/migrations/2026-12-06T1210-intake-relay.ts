import { sql, type Kysely } from 'kysely';

/**
 * Store first, start after: the receiver acknowledges a delivery once its row is written, and the
 * intake relay starts its event workflow. `start` holds what the start needs beyond the events (the
 * run's summary and search attributes), `started_at` marks a row the relay has handed on. An
 * insert notifies `forgelink_intake`, so a relay waiting on LISTEN starts the run at once. Rows
 * written before this migration were started by the receiver itself: they count as started.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('webhook_deliveries')
    .addColumn('start', 'jsonb')
    .addColumn('started_at', 'timestamptz')
    .execute();
  await sql`update webhook_deliveries set started_at = received_at`.execute(db);
  await sql`create index webhook_deliveries_backlog on webhook_deliveries (received_at) where started_at is null`.execute(db);
  await sql`
    create function webhook_deliveries_notify() returns trigger language plpgsql as $$
    begin
      perform pg_notify('forgelink_intake', '');
      return null;
    end $$`.execute(db);
  await sql`
    create trigger webhook_deliveries_notify after insert on webhook_deliveries
    for each statement execute function webhook_deliveries_notify()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger webhook_deliveries_notify on webhook_deliveries`.execute(db);
  await sql`drop function webhook_deliveries_notify()`.execute(db);
  await sql`drop index webhook_deliveries_backlog`.execute(db);
  await db.schema.alterTable('webhook_deliveries').dropColumn('start').dropColumn('started_at').execute();
}
