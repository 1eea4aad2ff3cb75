import { type Kysely, type Migration, Migrator, NO_MIGRATIONS, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { migrations } from '../../lib/db/migrations/index.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

/**
 * Every migration's `down` undoes its `up` on a real PostgreSQL server: from the latest schema,
 * holding data the later schema allows (one delivery recorded for two organizations), all the way
 * down and up again.
 */
describe('migrations', () => {
  let own: OwnDatabase;
  let db: Kysely<any>;

  beforeAll(async () => {
    own = await createOwnDatabase('forgelink_migrations', { migrate: false });
    db = own.db;
  });
  afterAll(() => own?.drop());

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

  it("tells which hook delivered the event rows already there (events.connection_id), and its down drops it", async () => {
    const migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
    expect((await migrator.migrateTo('2026-12-07T0720-repository-connection-key')).error).toBeUndefined();
    const org = (await db.insertInto('organizations').values({ slug: 'hooks', name: 'Hooks' }).returning('id').executeTakeFirstOrThrow()) as { id: string };
    const connection = (await db.insertInto('connections').values({ organization_id: org.id, provider: 'gitlab', base_url: 'https://gitlab.test', account: 'a', status: 'active' }).returning('id').executeTakeFirstOrThrow()) as { id: string };
    await db.insertInto('webhook_credentials').values({ connection_id: connection.id, version: 1, secret: 'sealed' }).execute();
    const repository = async (externalId: string, credentialVersion: number | null) => {
      const r = (await db.insertInto('repositories').values({ organization_id: org.id, connection_id: connection.id, provider: 'gitlab', external_id: externalId, full_name: `g/${externalId}` }).returning('id').executeTakeFirstOrThrow()) as { id: string };
      const at = (await db.insertInto('attachments').values({ organization_id: org.id, repository_id: r.id, status: 'attached' }).returning('id').executeTakeFirstOrThrow()) as { id: string };
      await db.insertInto('hooks').values({ attachment_id: at.id, provider_hook_id: `h-${externalId}`, events: JSON.stringify(['push']), credential_version: credentialVersion }).execute();
      return r.id;
    };
    const ownHook = await repository('1', 1);
    const legacyHook = await repository('2', null);
    const event = (provider: string, deliveryId: string, repositoryId: string | null) => ({
      organization_id: org.id, repository_id: repositoryId, provider, delivery_id: deliveryId, sequence: 0, kind: 'push',
      event: JSON.stringify({ provider, deliveryId, kind: 'push', repository: { externalId: '1', fullName: 'g/1' } }),
    });
    await db.insertInto('events').values([event('gitlab', 'own', ownHook), event('gitlab', 'legacy', legacyHook), event('gitlab', 'stored', legacyHook), event('github', 'app', null)]).execute();
    // The intake table still holds one delivery through the connection's hook: it says so, whatever the repository's hooks now are.
    await db.insertInto('webhook_deliveries').values({ provider: 'gitlab', delivery_id: 'stored', connection_id: connection.id, events: JSON.stringify([]) }).execute();

    expect((await migrator.migrateUp()).error).toBeUndefined();
    const rows = await db.selectFrom('events').select(['delivery_id', 'connection_id']).orderBy('delivery_id').execute();
    expect(rows).toEqual([
      { delivery_id: 'app', connection_id: null },
      { delivery_id: 'legacy', connection_id: null },
      { delivery_id: 'own', connection_id: connection.id },
      { delivery_id: 'stored', connection_id: connection.id },
    ]);
    expect((await migrator.migrateDown()).error).toBeUndefined();
    const columns = await sql<{ column_name: string }>`select column_name from information_schema.columns where table_name = 'events'`.execute(db);
    expect(columns.rows.map((c) => c.column_name)).not.toContain('connection_id');
  });

  it("keeps, going below per-connection deliveries, every intake row but those that would collide (its down dropped every connection's row, owed runs among them)", async () => {
    const migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
    expect((await migrator.migrateTo('2026-12-06T1215-deliveries-per-connection')).error).toBeUndefined();
    const org = (await db.insertInto('organizations').values({ slug: 'intake-down', name: 'Intake down' }).returning('id').executeTakeFirstOrThrow()) as { id: string };
    const connection = async (account: string) =>
      ((await db.insertInto('connections').values({ organization_id: org.id, provider: 'gitlab', base_url: 'https://gitlab.test', account, status: 'active' }).returning('id').executeTakeFirstOrThrow()) as { id: string }).id;
    const [one, two] = [await connection('one'), await connection('two')];
    const row = (deliveryId: string, connectionId: string | null, receivedAgoS: number) => ({
      provider: 'gitlab', delivery_id: deliveryId, connection_id: connectionId, events: JSON.stringify([]), received_at: new Date(Date.now() - receivedAgoS * 1000),
      start: JSON.stringify({ taskQueue: 'q', summary: {} }), started_at: null,
    });
    await db.deleteFrom('webhook_deliveries').execute();
    await db
      .insertInto('webhook_deliveries')
      .values([row('owed', one, 10), row('beside-legacy', null, 10), row('beside-legacy', one, 20), row('two-hooks', two, 30), row('two-hooks', one, 20)])
      .execute();
    expect((await migrator.migrateDown()).error).toBeUndefined();
    const left = await db.selectFrom('webhook_deliveries').select(['delivery_id', sql<number>`extract(epoch from now() - received_at)::int`.as('age')]).orderBy('delivery_id').execute();
    expect(left).toEqual([
      { delivery_id: 'beside-legacy', age: 10 },
      { delivery_id: 'owed', age: 10 },
      { delivery_id: 'two-hooks', age: 30 },
    ]);
  });
});
