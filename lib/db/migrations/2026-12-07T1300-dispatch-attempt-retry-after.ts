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
 *
 * Every pending migration runs in one transaction (lib/db/migrate.ts) while the previous release's
 * pods still read and write dispatch_attempts (every attempt's write, the API's attempt list).
 * Adding a column takes an ACCESS EXCLUSIVE lock: behind an old pod's open transaction it would
 * wait, and queue every reader and writer of the table behind it, for as long as that transaction
 * lasts. Under a lock timeout the migration fails instead (and the deploy retries it), holding the
 * table at most that long.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table dispatch_attempts add column retry_not_before timestamptz`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table dispatch_attempts drop column retry_not_before`.execute(db);
}
