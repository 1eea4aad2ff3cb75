import { type Kysely, type Migration, Migrator, sql } from 'kysely';
import { afterAll, expect, it } from 'vitest';
import { migrations } from '../../lib/db/migrations/index.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

const MIGRATION = '2026-12-07T1300-dispatch-attempt-retry-after';
const names = Object.keys(migrations).sort();
/** The schema the previous release's pods run on while the deploy migrates. */
const PREVIOUS = names[names.indexOf(MIGRATION) - 1]!;
/** Longer than the migration's lock timeout (5 s) with room for a loaded machine; without one it would wait as long as the old transaction lasts. */
const GIVE_UP_MS = 20_000;
/** How long the table's readers may queue behind the migration: its lock timeout and some room. */
const QUEUED_AT_MOST_MS = 10_000;

let own: OwnDatabase | undefined;
afterAll(() => own?.drop());

it("fails fast behind an old pod's open transaction on dispatch_attempts, instead of queueing the table's readers and writers behind it, and succeeds when retried", { timeout: 60_000 }, async () => {
  own = await createOwnDatabase('forgelink_attempts_migration', { migrate: false });
  const database = own;
  /** A pool of one connection to the test's database (each a pod's, or the deploy's). */
  const connect = () => database.pool();
  const deploy = own.db;
  const migrator = new Migrator({ db: deploy, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
  expect((await migrator.migrateTo(PREVIOUS)).error).toBeUndefined();

  // An old pod's transaction that read the table (a slow request, a report) and is still open.
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let holding!: () => void;
  const held = new Promise<void>((resolve) => (holding = resolve));
  const old = connect()
    .transaction()
    .execute(async (trx) => {
      await sql`select count(*) from dispatch_attempts`.execute(trx);
      holding();
      await released;
    });
  await held;
  try {
    const started = Date.now();
    const migrating = migrator.migrateToLatest().then(({ error }) => ({ error: error as { code?: string; message?: string } | undefined, ms: Date.now() - started }));
    // Once the migration waits for its ACCESS EXCLUSIVE lock, every other pod's read or write of the table queues behind it.
    const probe = connect();
    await expect
      .poll(
        async () =>
          (
            await sql<{ waiting: number }>`
              select count(*)::int as waiting from pg_locks l join pg_class c on c.oid = l.relation
              where l.database = (select oid from pg_database where datname = current_database())
                and c.relname = 'dispatch_attempts' and l.mode = 'AccessExclusiveLock' and not l.granted
            `.execute(probe)
          ).rows[0]!.waiting,
        { timeout: 10_000, interval: 20 },
      )
      .toBe(1);
    const reader = connect();
    const readStarted = Date.now();
    const read = sql`select count(*) from dispatch_attempts`.execute(reader).then(() => Date.now() - readStarted);

    const migrated = await Promise.race([migrating, new Promise<'still waiting'>((resolve) => setTimeout(() => resolve('still waiting'), GIVE_UP_MS).unref())]);
    expect(migrated).not.toBe('still waiting');
    const { error, ms } = migrated as Awaited<typeof migrating>;
    // The lock timeout's SQLSTATE: the deploy fails and is retried, the old pods' queries go on.
    expect(error?.code, String(error?.message)).toBe('55P03');
    expect(ms).toBeLessThan(QUEUED_AT_MOST_MS);
    // The queued read went on when the migration gave up, while the old transaction is still open.
    expect(await read).toBeLessThan(QUEUED_AT_MOST_MS);
  } finally {
    release();
    await old;
  }

  // The deploy's retry, once the old pods' transactions are done.
  expect((await migrator.migrateToLatest()).error).toBeUndefined();
  const columns = await sql<{ column_name: string; data_type: string }>`
    select column_name, data_type from information_schema.columns where table_name = 'dispatch_attempts' and column_name like 'retry%'
  `.execute(deploy);
  expect(columns.rows).toEqual([{ column_name: 'retry_not_before', data_type: 'timestamp with time zone' }]);
});
