import { sql, type Kysely } from 'kysely';

/**
 * The dispatch state of an event run whose delivery fans out to many (event, subscriber) pairs:
 * kept here rather than in the run's history, so the history stays small whatever the fan-out.
 * One row per pair, written when the run records its events; `run_key` is the event run's
 * workflow id. A deleted event or subscriber takes its rows with it (nothing is sent for them).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('event_dispatches')
    .addColumn('event_id', 'uuid', (c) => c.notNull().references('events.id').onDelete('cascade'))
    .addColumn('subscriber_id', 'uuid', (c) => c.notNull().references('subscribers.id').onDelete('cascade'))
    .addColumn('run_key', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull().defaultTo('pending').check(sql`status in ('pending', 'delivered', 'undelivered')`))
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('next_attempt_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('last_reason', 'text')
    .addPrimaryKeyConstraint('event_dispatches_pkey', ['event_id', 'subscriber_id'])
    .execute();
  // The drain's read: a run's pending pairs in the order they fall due.
  await db.schema.createIndex('event_dispatches_run_due').on('event_dispatches').columns(['run_key', 'status', 'next_attempt_at']).execute();
  // Deleting a subscriber deletes its rows.
  await db.schema.createIndex('event_dispatches_subscriber').on('event_dispatches').column('subscriber_id').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('event_dispatches').execute();
}
