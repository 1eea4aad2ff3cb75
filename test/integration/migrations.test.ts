import { randomBytes } from 'node:crypto';
import { type Kysely, type Migration, Migrator, NO_MIGRATIONS, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { migrations } from '../../lib/db/migrations/index.ts';

/**
 * Every migration's `down` undoes its `up` on a real PostgreSQL server: from the latest schema,
 * holding data the later schema allows (one delivery recorded for two organizations), all the way
 * down and up again.
 */
describe('migrations', () => {
  const name = `forgelink_migrations_${randomBytes(6).toString('hex')}`;
  const serverUrl = inject('databaseUrl');
  let server: Kysely<any>;
  let db: Kysely<any>;

  beforeAll(async () => {
    server = createDb(serverUrl, { max: 1 });
    await sql`create database ${sql.id(name)}`.execute(server);
    const url = new URL(serverUrl);
    url.pathname = `/${name}`;
    db = createDb(url.toString(), { max: 1 });
  });
  afterAll(async () => {
    await db?.destroy();
    await sql`drop database if exists ${sql.id(name)}`.execute(server);
    await server?.destroy();
  });

  const tables = async () =>
    (await sql<{ tablename: string }>`select tablename from pg_tables where schemaname = 'public' and tablename not like 'kysely_%' order by tablename`.execute(db)).rows.map((r) => r.tablename);

  it('go all the way down and up again', async () => {
    const all = Object.keys(migrations).sort();
    expect(await migrateToLatest(db)).toEqual(all);
    const latest = await tables();

    const [a, b] = (await db.insertInto('organizations').values([{ slug: 'first', name: 'First' }, { slug: 'second', name: 'Second' }]).returning('id').execute()) as { id: string }[];
    const event = { provider: 'gitlab', deliveryId: 'd-1', kind: 'push', repository: { externalId: '1', fullName: 'g/p' } };
    await db
      .insertInto('events')
      .values([a!, b!].map(({ id }) => ({ organization_id: id, provider: 'gitlab', delivery_id: 'd-1', sequence: 0, kind: 'push', event: JSON.stringify(event) })))
      .execute();

    // One step down at a time, each step undone, redone and undone again: a down that leaves
    // something behind makes the redo fail.
    const migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
    for (const migration of [...all].reverse()) {
      for (const step of [() => migrator.migrateDown(), () => migrator.migrateUp(), () => migrator.migrateDown()]) {
        const { error, results } = await step();
        expect(error, `${migration}: ${String(error)}`).toBeUndefined();
        expect(results?.map((r) => `${r.migrationName} ${r.status}`)).toEqual([`${migration} Success`]);
      }
    }
    expect(await tables()).toEqual([]);
    const rest = await migrator.migrateTo(NO_MIGRATIONS);
    expect(rest.results).toEqual([]);

    expect(await migrateToLatest(db)).toEqual(all);
    expect(await tables()).toEqual(latest);
  });
});
