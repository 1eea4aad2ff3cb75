import { sql, type Kysely } from 'kysely';

/**
 * The intake relay's claim reads only rows it may start, and takes them in turns across
 * organizations (lib/db/repositories/deliveries.ts, startPendingDeliveries):
 * - `webhook_deliveries_due`: rows never failed, by task queue, then by the organization whose turn
 *   they wait for (INTAKE_TURN_KEY: the delivery's one organization, else its connection, else its
 *   provider), then oldest first. The claim finds each organization's oldest row (one descent
 *   each) and takes a share of every organization's oldest rows, instead of walking one global
 *   queue in which one tenant's backlog stood before every other tenant's delivery.
 * - `webhook_deliveries_retry_due`: rows put off after a failed start, by task queue and when they
 *   are due: the claim reads only those that are due, where it walked every row put off, and every
 *   other task queue's row, on every round (200,000 of them: ~100 ms a claim).
 * - `webhook_deliveries_connection_backlog`: a connection's rows not started yet, which the
 *   receivers count against webhooks.maxBacklogDeliveries and maxBacklogBytes.
 * Only unstarted rows are in them (a small part of the table), so a delivery's INSERT writes two
 * entries more and the relay's UPDATE none.
 *
 * They are built by lib/db/concurrent-indexes.ts (`create index concurrently`, after the
 * migrations), no longer here: this migration first built them in its transaction, where the build
 * read the whole table under a lock that held every receiver's INSERT (a week of deliveries: each
 * answered 503 after its 2 s lock deadline while it lasted). A database that ran that version has
 * them already, valid, and the concurrent pass leaves them; one that runs this gets them from it.
 */
export async function up(): Promise<void> {}

/** Drops them (the concurrent pass builds them again on the next migration to the latest). */
export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`drop index if exists webhook_deliveries_connection_backlog`.execute(db);
  await sql`drop index if exists webhook_deliveries_retry_due`.execute(db);
  await sql`drop index if exists webhook_deliveries_due`.execute(db);
}
