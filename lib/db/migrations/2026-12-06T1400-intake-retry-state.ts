import type { Kysely } from 'kysely';

/**
 * Each intake row keeps its own retry state, so one delivery whose start Temporal refuses (or
 * that times out alone) is retried on its own schedule instead of at the head of every round:
 * `attempts` counts failed starts, `next_attempt_at` is when the relay may try it again (null: at
 * once), `last_error` says why the last one failed (a gRPC status and a short message; never a
 * secret). The relay still reads through the backlog index (received_at where started_at is null).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('webhook_deliveries')
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('next_attempt_at', 'timestamptz')
    .addColumn('last_error', 'text')
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('webhook_deliveries').dropColumn('attempts').dropColumn('next_attempt_at').dropColumn('last_error').execute();
}
