import { randomBytes } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb, type Db } from '../../lib/db/index.ts';
import {
  finishListingInDb,
  finishListingStatement,
  makeListingDurable,
  recordRefreshOutcome,
  takeListingLease,
  upsertRepositories,
  writeListingPage,
} from '../../lib/db/repositories/repository-cache.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

type Scope = { organizationId: string; connectionId: string; provider: 'gitlab' };

async function scopeIn(db: Kysely<any>, organizationId?: string): Promise<Scope> {
  const slug = `commit-${randomBytes(4).toString('hex')}`;
  const org = organizationId ?? (await db.insertInto('organizations').values({ slug, name: slug }).returning('id').executeTakeFirstOrThrow()).id;
  const connection = await db
    .insertInto('connections')
    .values({ organization_id: org, provider: 'gitlab', base_url: 'https://gitlab.example', external_key: slug, account: 'commit', status: 'active' })
    .returning('id')
    .executeTakeFirstOrThrow();
  return { organizationId: org, connectionId: connection.id, provider: 'gitlab' };
}

const repositoriesOf = (prefix: string, count: number) =>
  Array.from({ length: count }, (_, i) => ({ externalId: `${prefix}-${i}`, fullName: `group/${prefix}-${i}`, defaultBranch: 'main', webUrl: `https://gitlab.example/group/${prefix}-${i}` }));

/**
 * A listing's writes (its lease, its pages, its end) commit without waiting for the WAL to reach the
 * disk (synchronous_commit off for their transaction alone): all they write is the repository cache
 * and the listing's bookkeeping, which the next listing writes again. Nothing else does, and the
 * listing's durable point (makeListingDurable, before it heartbeats the pages it wrote) commits as
 * the server is configured and writes WAL, so its commit flushes theirs. A page's statements are
 * prepared once per connection; a listing that ends says whether the purge has anything to do.
 */
describe("a listing's writes commit without waiting for the disk", () => {
  let db: Db;
  beforeAll(() => {
    db = createDb(inject('databaseUrl'), { max: 2 });
  });
  afterAll(async () => {
    await db?.destroy();
  });

  /** synchronous_commit as `statement` leaves it in its transaction (rolled back: what is read is the setting at its commit). */
  async function commitAfter(statement: (trx: Kysely<any>) => Promise<unknown>): Promise<string> {
    return db.connection().execute(async (conn) => {
      await sql`begin`.execute(conn);
      try {
        await statement(conn);
        return (await sql<{ setting: string }>`select current_setting('synchronous_commit') as setting`.execute(conn)).rows[0]!.setting;
      } finally {
        await sql`rollback`.execute(conn);
      }
    });
  }

  it("sets it for the listing's lease, pages and end only, and each still answers as before", async () => {
    const s = await scopeIn(db);
    const [one, two] = repositoriesOf('r', 2);
    await writeListingPage(db, s, 'first', [one!, two!], { externalIds: ['r-0', 'r-1'], contentHash: 'h1' });
    expect(await commitAfter(async () => undefined)).toBe('on');

    expect(await commitAfter((c) => takeListingLease(c, s.connectionId, 'refresh:x/run').then((granted) => expect(granted).toBe(true)))).toBe('off');
    // Another holder's lease is not taken, and the answer says so.
    await takeListingLease(db, s.connectionId, 'refresh:x/run');
    expect(await commitAfter((c) => takeListingLease(c, s.connectionId, 'refresh:y/run').then((granted) => expect(granted).toBe(false)))).toBe('off');
    expect(await commitAfter((c) => finishListingInDb(c, s.connectionId, ['first'], { holder: 'refresh:x/run' }).then((r) => expect(r.vanished).toBe(0)))).toBe('off');
    // The end marks what no page holds, in that transaction too.
    expect(await commitAfter((c) => finishListingInDb(c, s.connectionId, [], { holder: 'refresh:x/run' }).then((r) => expect(r.vanished).toBe(2)))).toBe('off');

    // A page's write, whichever of its statements it takes (rows and memory, memory alone, rows alone).
    expect(await commitAfter((c) => writeListingPage(c, s, 'first', [one!], { externalIds: ['r-0'], contentHash: 'h2' }))).toBe('off');
    expect(await commitAfter((c) => writeListingPage(c, s, 'first', undefined, { externalIds: ['r-0'], contentHash: 'h3' }))).toBe('off');
    expect(await commitAfter((c) => writeListingPage(c, s, 'first', [{ ...one!, fullName: 'group/renamed' }], undefined).then((n) => expect(n).toBe(1)))).toBe('off');
    // A page of new rows (a listing into an empty cache: the plain insert).
    const [fresh] = repositoriesOf('fresh', 1);
    expect(await commitAfter((c) => writeListingPage(c, s, 'fresh', [fresh!], { externalIds: ['fresh-0'] }, { newRows: { likely: true } }).then((n) => expect(n).toBe(1)))).toBe('off');

    // Not an event's upsert (it shares its transaction with the event's rows), nor a failure's record.
    expect(await commitAfter((c) => upsertRepositories(c, s, [{ externalId: 'r-0', fullName: 'group/moved' }], { partial: true }))).toBe('on');
    expect(await commitAfter((c) => recordRefreshOutcome(c, s.connectionId, 'failed', 'refresh:x/run'))).toBe('on');

    // The durable point commits as configured and writes WAL (a transaction that wrote none would
    // commit without flushing), whether or not the lease is still the listing's; it renews only its own.
    await takeListingLease(db, s.connectionId, 'refresh:x/run');
    // It wrote when the listing's row has a new version (a new xmin): then its transaction had an xid and WAL to flush.
    const xmin = async () => (await sql<{ xmin: string }>`select xmin::text from repository_listings where connection_id = ${s.connectionId}`.execute(db)).rows[0]!.xmin;
    const walAfter = async (statement: () => Promise<unknown>) => {
      const before = await xmin();
      await statement();
      return (await xmin()) !== before;
    };
    expect(await commitAfter((c) => makeListingDurable(c, s.connectionId, 'refresh:x/run').then((renewed) => expect(renewed).toBe(true)))).toBe('on');
    const heldUntil = async () => (await db.selectFrom('repository_listings').select('held_until').where('connection_id', '=', s.connectionId).executeTakeFirstOrThrow()).held_until;
    expect(await walAfter(() => db.connection().execute((c) => makeListingDurable(c, s.connectionId, 'refresh:y/run').then((renewed) => expect(renewed).toBe(false))))).toBe(true);
    expect(await walAfter(() => db.connection().execute((c) => makeListingDurable(c, s.connectionId, undefined)))).toBe(true);
    const held = await heldUntil();
    await makeListingDurable(db, s.connectionId, 'refresh:y/run');
    expect(await heldUntil()).toEqual(held);
  });

  it("sends a page's statements as named prepared statements, parsed once per connection", async () => {
    const s = await scopeIn(db);
    const names = await db.connection().execute(async (conn) => {
      for (let p = 0; p < 3; p++) {
        const repositories = repositoriesOf(`n${p}`, 3);
        await writeListingPage(conn, s, `page-${p}`, repositories, { externalIds: repositories.map((r) => r.externalId), contentHash: `h${p}` });
        await writeListingPage(conn, s, `page-${p}`, repositories.slice(1), undefined);
      }
      await writeListingPage(conn, s, 'page-0', undefined, { externalIds: [], contentHash: 'h' });
      const fresh = repositoriesOf('fresh', 3);
      await writeListingPage(conn, s, 'page-new', fresh, { externalIds: fresh.map((r) => r.externalId), contentHash: 'hn' }, { newRows: { likely: true } });
      return (await sql<{ name: string }>`select name from pg_prepared_statements order by name`.execute(conn)).rows.map((r) => r.name);
    });
    expect(names).toEqual(['forgelink_listing_page', 'forgelink_listing_page_memory', 'forgelink_listing_page_new', 'forgelink_listing_upsert']);
    expect(await db.selectFrom('repositories').select('external_id').where('connection_id', '=', s.connectionId).execute()).toHaveLength(12);
  });

  it('says whether the connection has rows the purge would delete', async () => {
    const s = await scopeIn(db);
    await writeListingPage(db, s, 'first', repositoriesOf('e', 4), { externalIds: ['e-0', 'e-1', 'e-2', 'e-3'], contentHash: 'h' });
    const [old, attached, recent] = await db.selectFrom('repositories').select(['id', 'external_id']).where('connection_id', '=', s.connectionId).orderBy('external_id').execute();
    // e-0 vanished 8 days ago; e-1 too, but attached; e-2 2 days ago; e-3 listed.
    await db.updateTable('repositories').set({ vanished_at: sql`now() - interval '8 days'` }).where('id', 'in', [old!.id, attached!.id]).execute();
    await db.updateTable('repositories').set({ vanished_at: sql`now() - interval '2 days'` }).where('id', '=', recent!.id).execute();
    await db.insertInto('attachments').values({ organization_id: s.organizationId, repository_id: attached!.id, status: 'detached' }).execute();
    const finish = (retentionDays?: number) => finishListingInDb(db, s.connectionId, ['first'], { retentionDays });

    // The page holds e-3 alone: the other three stay vanished.
    await db.updateTable('repository_listing_pages').set({ external_ids: JSON.stringify(['e-3']) as never }).where('connection_id', '=', s.connectionId).execute();
    expect(await finish(7)).toEqual({ vanished: 0, expired: true });
    expect(await finish()).toEqual({ vanished: 0, expired: false });
    expect(await finish(10)).toEqual({ vanished: 0, expired: false });
    // Once the expired one is referenced by nothing but an event, none is left to purge.
    await db.insertInto('events').values({ organization_id: s.organizationId, repository_id: old!.id, provider: 'gitlab', delivery_id: `d-${randomBytes(4).toString('hex')}`, sequence: 0, kind: 'push', event: '{}' }).execute();
    expect(await finish(7)).toEqual({ vanished: 0, expired: false });
    expect(await finish(1)).toEqual({ vanished: 0, expired: true });
  });
});

/**
 * The end of a listing reads the connection's rows through its key, whatever the table's statistics
 * say. Right after a first listing they lag (the rows were just written, no ANALYZE has run), and the
 * planner read the picker's partial index (every visible row of every organization) beside the key:
 * ~30 ms for 20,000 rows, at the end of every first listing. A database of its own, autovacuum off
 * on the table, so its statistics stay as a first listing leaves them.
 */
describe("the end of a listing's plan", () => {
  let own: OwnDatabase;
  let db: Db;

  beforeAll(async () => {
    own = await createOwnDatabase('forgelink_finish_plan', { max: 2 });
    db = own.db as Db;
    await sql`alter table repositories set (autovacuum_enabled = false)`.execute(db);
  });
  afterAll(() => own?.drop());

  it('reads only the connection through its key after a first listing', async () => {
    const first = await scopeIn(db);
    const scopes = [first, await scopeIn(db, first.organizationId), await scopeIn(db)];
    for (const [i, s] of scopes.entries()) {
      for (let p = 0; p < 25; p++) {
        const repositories = repositoriesOf(`c${i}-p${p}`, 100);
        await writeListingPage(db, s, `page-${p}`, repositories, { externalIds: repositories.map((r) => r.externalId), contentHash: `h${p}` });
      }
    }
    const keys = Array.from({ length: 25 }, (_, p) => `page-${p}`);
    const { rows } = await sql<{ 'QUERY PLAN': unknown }>`explain (format json) ${finishListingStatement(first.connectionId, keys, { holder: 'refresh:x/run', retentionDays: 7 })}`.execute(db);
    const plan = JSON.stringify(rows[0]!['QUERY PLAN']);
    const indexes = [...plan.matchAll(/"Index Name":\s*"([^"]+)"/g)].map((m) => m[1]);
    expect(indexes).toContain('repositories_connection_external_id');
    expect(indexes).not.toContain('repositories_picker');
    expect(plan).not.toMatch(/"Relation Name":\s*"repositories"[^}]*"Node Type":\s*"Seq Scan"|"Node Type":\s*"Seq Scan",[^}]*"Relation Name":\s*"repositories"/);
    // And it does what it did: nothing vanished, the listing recorded.
    expect(await finishListingInDb(db, first.connectionId, keys, { holder: 'refresh:x/run', retentionDays: 7 })).toEqual({ vanished: 0, expired: false });
  });
});
