import { randomUUID } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureConcurrentIndexes } from '../../lib/db/concurrent-indexes.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

const INTAKE_INDEXES = ['webhook_deliveries_due', 'webhook_deliveries_retry_due', 'webhook_deliveries_connection_backlog'];

/**
 * The intake relay's claim and the receivers' backlog measure read partial indexes of the intake
 * table (webhook_deliveries). Their build reads the whole table (a week of deliveries), so it is
 * made with `create index concurrently` after the migrations (lib/db/concurrent-indexes.ts): a
 * delivery is stored while they build. A database of its own: the test drops and builds them.
 */
describe("the intake table's indexes are built without holding the receivers' INSERTs", () => {
  let own: OwnDatabase;
  let db: Kysely<any>;
  beforeAll(async () => {
    own = await createOwnDatabase('forgelink_intake_indexes');
    db = own.db;
  });
  afterAll(() => own?.drop());

  const indexes = async () =>
    (
      await sql<{ name: string; valid: boolean; definition: string }>`
        select c.relname as name, i.indisvalid as valid, pg_get_indexdef(i.indexrelid) as definition
        from pg_index i join pg_class c on c.oid = i.indexrelid where c.relname = any(${INTAKE_INDEXES}) order by c.relname`.execute(db)
    ).rows;
  /** Stores a delivery as a receiver does, under the receivers' 2 s lock deadline (here 1 s): throws 55P03 if it waits longer for its lock. */
  const receiverInsert = (pool: Kysely<any>) =>
    pool.transaction().execute(async (trx) => {
      await sql`set local lock_timeout = '1s'`.execute(trx);
      await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts)
        values ('github', ${randomUUID()}, '[]'::jsonb, ${JSON.stringify({ taskQueue: 'intake-indexes', summary: { events: 0, kinds: {}, repositories: [] } })}::jsonb, now(), 0)`.execute(trx);
    });

  it('are there after migrating to the latest, valid, with the definitions the claim and the measure read', async () => {
    expect(await ensureConcurrentIndexes(db)).toEqual([]);
    const found = await indexes();
    expect(found.map((index) => [index.name, index.valid])).toEqual([
      ['webhook_deliveries_connection_backlog', true],
      ['webhook_deliveries_due', true],
      ['webhook_deliveries_retry_due', true],
    ]);
    expect(found[0]!.definition).toMatch(/\(connection_id\) WHERE \(\(started_at IS NULL\) AND \(connection_id IS NOT NULL\)\)/);
    expect(found[1]!.definition).toMatch(/COALESCE\(\(start ->> 'organizationId'::text\), \(connection_id\)::text, provider\), received_at\) WHERE \(\(started_at IS NULL\) AND \(next_attempt_at IS NULL\)\)/);
    expect(found[2]!.definition).toMatch(/next_attempt_at\) WHERE \(\(started_at IS NULL\) AND \(next_attempt_at IS NOT NULL\)\)/);
  });

  it("while they build behind a delivery's open transaction, another delivery is stored at once", async () => {
    for (const name of INTAKE_INDEXES) await sql`drop index ${sql.id(name)}`.execute(db);
    const [holder, builder, receiver] = [own.pool(1), own.pool(1), own.pool(1)];
    // A receiver's INSERT still in its transaction (a large body's, under its longer deadline).
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let held!: () => void;
    const holding = new Promise<void>((resolve) => (held = resolve));
    const open = holder.transaction().execute(async (trx) => {
      await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts)
        values ('github', ${randomUUID()}, '[]'::jsonb, ${JSON.stringify({ taskQueue: 'intake-indexes', summary: { events: 0, kinds: {}, repositories: [] } })}::jsonb, now(), 0)`.execute(trx);
      held();
      await released;
    });
    await holding;
    const build = ensureConcurrentIndexes(builder);
    try {
      // The build waits for that transaction (a concurrent build waits for the table's writers to end).
      await expect
        .poll(async () => (await sql<{ waiting: number }>`select count(*)::int as waiting from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query ilike 'create index%'`.execute(db)).rows[0]!.waiting, { timeout: 10_000 })
        .toBe(1);
      // Meanwhile a delivery is stored within the receivers' lock deadline: a plain build would hold it (55P03).
      await receiverInsert(receiver);
      await receiverInsert(receiver);
    } finally {
      // Failing, the open transaction still ends, so the database can be dropped.
      release();
      await open;
    }
    expect((await build).sort()).toEqual([...INTAKE_INDEXES].sort());
    expect((await indexes()).every((index) => index.valid)).toBe(true);
  });
});
