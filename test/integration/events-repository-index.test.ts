import { randomBytes } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureConcurrentIndexes } from '../../lib/db/concurrent-indexes.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

/**
 * events.repository_id references repositories(id) ON DELETE SET NULL, so deleting a repository row
 * (the vanished-row purge, a disconnect's purge of its cache) makes PostgreSQL look for events that
 * name it. Without an index on the column each deleted row read the whole events table. A database
 * of its own: the test counts the sequential scans of events, which other test files would add to.
 */
describe('events_repository: deleting repository rows reads no whole events table', () => {
  let own: OwnDatabase;
  let db: Kysely<any>;

  beforeAll(async () => {
    own = await createOwnDatabase('forgelink_events_index');
    db = own.db;
  });
  afterAll(() => own?.drop());

  const indexState = async () =>
    (
      await sql<{ valid: boolean; definition: string }>`
        select i.indisvalid as valid, pg_get_indexdef(i.indexrelid) as definition
        from pg_index i join pg_class c on c.oid = i.indexrelid where c.relname = 'events_repository'`.execute(db)
    ).rows;

  it('is built by the migrations, valid', async () => {
    const [index] = await indexState();
    expect(index).toEqual({ valid: true, definition: expect.stringMatching(/\(repository_id\) WHERE \(repository_id IS NOT NULL\)/) });
    expect(await ensureConcurrentIndexes(db)).toEqual([]);
  });

  it('is built again when a build was cut short (left invalid)', async () => {
    await sql`drop index events_repository`.execute(db);
    const [org] = (await db.insertInto('organizations').values({ slug: `o-${randomBytes(4).toString('hex')}`, name: 'O' }).returning('id').execute()) as { id: string }[];
    const event = (deliveryId: string) => ({ organization_id: org!.id, provider: 'gitlab', delivery_id: deliveryId, sequence: 0, kind: 'push', event: JSON.stringify({ kind: 'push' }) });
    await db.insertInto('events').values([event('same'), { ...event('same'), sequence: 1 }]).execute();
    // A unique build that fails leaves its index behind, invalid, under the name.
    await expect(sql`create unique index concurrently events_repository on events (delivery_id)`.execute(db)).rejects.toThrow(/could not create unique index/);
    expect(await indexState()).toEqual([{ valid: false, definition: expect.stringContaining('(delivery_id)') }]);
    expect(await ensureConcurrentIndexes(db)).toEqual(['events_repository']);
    expect(await indexState()).toEqual([{ valid: true, definition: expect.stringContaining('(repository_id)') }]);
  });

  it('lets rows be deleted without a sequential scan of events per row', async () => {
    const [org] = (await db.insertInto('organizations').values({ slug: `p-${randomBytes(4).toString('hex')}`, name: 'P' }).returning('id').execute()) as { id: string }[];
    const [connection] = (await db.insertInto('connections').values({ organization_id: org!.id, provider: 'gitlab', base_url: 'https://gitlab.example', status: 'disconnected' }).returning('id').execute()) as { id: string }[];
    const repositories = async (prefix: string, count: number) =>
      (
        await sql<{ id: string }>`
          insert into repositories (organization_id, connection_id, provider, external_id, full_name)
          select ${org!.id}::uuid, ${connection!.id}::uuid, 'gitlab', ${prefix} || i, 'g/' || ${prefix} || i from generate_series(1, ${count}) as i
          returning id`.execute(db)
      ).rows.map((r) => r.id);
    // 20,000 events naming one repository that stays; the 50 rows deleted are named by none.
    const [kept] = await repositories('kept-', 1);
    await sql`
      insert into events (organization_id, repository_id, provider, delivery_id, sequence, kind, event)
      select ${org!.id}::uuid, ${kept!}::uuid, 'gitlab', 'd-' || i, 0, 'push', '{}'::jsonb from generate_series(1, 20000) as i`.execute(db);
    await sql`analyze events`.execute(db);
    const gone = await repositories('gone-', 50);
    const sequentialScans = async () => {
      await sql`select pg_stat_force_next_flush()`.execute(db);
      return Number((await sql<{ n: string }>`select seq_scan as n from pg_stat_user_tables where relname = 'events'`.execute(db)).rows[0]!.n);
    };
    const before = await sequentialScans();
    // One row at a time, as a purge's batches may: each deletion runs the foreign key's lookup.
    for (const id of gone) await db.deleteFrom('repositories').where('id', '=', id).execute();
    expect(await sequentialScans()).toBe(before);
    expect(Number((await sql<{ n: string }>`select count(*) as n from events where repository_id = ${kept!}::uuid`.execute(db)).rows[0]!.n)).toBe(20000);
  });
});
