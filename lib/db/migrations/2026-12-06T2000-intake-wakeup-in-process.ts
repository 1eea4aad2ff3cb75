import { sql, type Kysely } from 'kysely';

/**
 * No NOTIFY per stored delivery: a transaction that notifies takes PostgreSQL's one notify lock
 * (cluster-wide, held through its commit and WAL flush), so every acknowledging insert committed
 * one after another. Measured with pgbench, 50 clients inserting a row like the receiver's on this
 * machine's PostgreSQL 15: 211-219 commits a second with the trigger against 2,237-2,279 without;
 * paced at 120 a second, p50 126 ms / p99 842 ms against 13 / 109 ms. The receivers now wake their
 * own process's relay in memory (api/intake-relay.ts, IntakeSignal), and every relay still sweeps.
 * API processes from before this change no longer hear of other replicas' deliveries until their
 * sweep (5 s) during a rolling upgrade; their own receivers' rows are started by the new replicas'
 * sweeps or their own.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`drop trigger webhook_deliveries_notify on webhook_deliveries`.execute(db);
  await sql`drop function webhook_deliveries_notify()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
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
