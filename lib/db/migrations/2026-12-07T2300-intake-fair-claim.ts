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
 * entries more and the relay's UPDATE none. The build reads the table once under a lock that holds
 * the receivers' INSERTs; under a lock timeout a migration waiting behind an old pod's transaction
 * fails (and the deploy retries it) instead of queuing every delivery behind it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`create index webhook_deliveries_due on webhook_deliveries ((start->>'taskQueue'), (coalesce(start->>'organizationId', connection_id::text, provider)), received_at)
    where started_at is null and next_attempt_at is null`.execute(db);
  await sql`create index webhook_deliveries_retry_due on webhook_deliveries ((start->>'taskQueue'), next_attempt_at)
    where started_at is null and next_attempt_at is not null`.execute(db);
  await sql`create index webhook_deliveries_connection_backlog on webhook_deliveries (connection_id)
    where started_at is null and connection_id is not null`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`drop index webhook_deliveries_connection_backlog`.execute(db);
  await sql`drop index webhook_deliveries_retry_due`.execute(db);
  await sql`drop index webhook_deliveries_due`.execute(db);
}
