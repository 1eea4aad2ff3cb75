import { type Kysely, sql } from 'kysely';

/**
 * When a failed attempt's subscriber may be sent the event again: the time of the attempt's write,
 * on the database's clock, plus the Retry-After it answered (bounded as honoured: whole seconds, at
 * most an hour). An event run's recording that is executed again after its first attempts were made
 * (its local activity timed out or its worker died after the attempts were recorded) reads it, so
 * that a pair the subscriber asked to wait is not sent again before then (activities/dispatch.ts
 * createFirstAttempts). An absolute time, so that an attempt written again (another execution's
 * send of it) is reckoned from its latest answer, not from the row's first write (attempted_at).
 * Nullable, no default: adding it rewrites nothing.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table dispatch_attempts add column retry_not_before timestamptz`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table dispatch_attempts drop column retry_not_before`.execute(db);
}
