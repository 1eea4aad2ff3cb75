import type { Kysely } from 'kysely';

/**
 * The Retry-After (seconds, as honoured: capped) a subscriber answered a failed attempt with. An
 * event run's recording that is executed again after its first attempts were made (its local
 * activity timed out or its worker died after the attempts were recorded) reads it, so that a pair
 * the subscriber asked to wait is not sent again before then (activities/dispatch.ts
 * createFirstAttempts). Nullable, no default: adding it rewrites nothing.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('dispatch_attempts').addColumn('retry_after_seconds', 'integer').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('dispatch_attempts').dropColumn('retry_after_seconds').execute();
}
