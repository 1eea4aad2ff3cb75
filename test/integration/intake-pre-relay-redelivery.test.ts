import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { intakeBacklog, startPendingDeliveries, storeDelivery } from '../../lib/db/repositories/deliveries.ts';
import type { DeliveryStart } from '../../lib/db/schema.ts';
import { pruneDeliveries } from '../../worker/delivery-retention.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';
import pg from 'pg';

/**
 * A delivery an API from before the intake relay stored (its row without `start`) and then failed
 * to start (it answered 503), redelivered by the provider to an API with the relay: the redelivery
 * gives the row its start, so a relay claims and starts it; before, the conflict kept the row as it
 * was, answered 202 'redelivery', and nothing ever started it (found by a review, rev2 finding 2).
 * On a database of its own: the claim and the backlog see the test's rows alone.
 */
const TASK_QUEUE = 'pre-relay-redelivery';
const START = { taskQueue: TASK_QUEUE, summary: { events: 0, kinds: {}, repositories: [] } } as unknown as DeliveryStart;

describe('a pre-relay row redelivered', () => {
  let own: OwnDatabase;
  beforeAll(async () => {
    own = await createOwnDatabase('intake_pre_relay', { max: 2 });
  });
  afterAll(async () => {
    await own?.drop();
  });

  it('gains the redelivery start, counts as stored, is claimed by the relay and kept until started', async () => {
    await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at) values ('github', 'old', '[{"kept":true}]'::jsonb, null, now() - interval '8 days')`.execute(own.db);
    expect(await storeDelivery(own.db, { provider: 'github', deliveryId: 'old', events: [], start: START })).toBe(true);
    const [row] = (await sql<{ start: DeliveryStart | null; events: unknown }>`select start, events from webhook_deliveries where delivery_id = 'old'`.execute(own.db)).rows;
    expect(row?.start).toEqual(START);
    expect(row?.events).toEqual([{ kept: true }]); // what the old API normalized stays
    expect((await intakeBacklog(own.db)).pending).toBe(1);
    expect(await pruneDeliveries(own.db, 7)).toBe(0); // owed: not removed by its receipt's age

    const client = new pg.Client({ connectionString: own.url });
    await client.connect();
    try {
      const claimed: string[] = [];
      const outcome = await startPendingDeliveries(client, TASK_QUEUE, 50, async (pending) => {
        claimed.push(...pending.map((p) => p.deliveryId));
        return pending.map(() => ({ started: true }) as const);
      });
      expect(claimed).toEqual(['old']);
      expect(outcome.started).toBe(1);
    } finally {
      await client.end();
    }
  });

  it('does not wait for a row a relay holds: a redelivery of it answers at once, storing nothing', async () => {
    await storeDelivery(own.db, { provider: 'github', deliveryId: 'held', events: [], start: START });
    const relay = new pg.Client({ connectionString: own.url });
    await relay.connect();
    try {
      await relay.query("begin; select 1 from webhook_deliveries where delivery_id = 'held' for update");
      // An INSERT whose conflict locks the row would wait here for the relay's transaction.
      const outcome = await Promise.race([
        storeDelivery(own.db, { provider: 'github', deliveryId: 'held', events: [], start: START }),
        new Promise<'waited'>((resolve) => setTimeout(() => resolve('waited'), 3000).unref()),
      ]);
      expect(outcome).toBe(false);
    } finally {
      await relay.query('rollback').catch(() => {});
      await relay.end();
    }
  });

  it('leaves a row that has its start, or has started, as it is: a redelivery stores nothing', async () => {
    const other = { ...START, taskQueue: 'another-queue' } as unknown as DeliveryStart;
    await storeDelivery(own.db, { provider: 'github', deliveryId: 'new', events: [], start: START });
    expect(await storeDelivery(own.db, { provider: 'github', deliveryId: 'new', events: [], start: other })).toBe(false);
    await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, started_at) values ('github', 'ran', '[]'::jsonb, null, now(), now())`.execute(own.db);
    expect(await storeDelivery(own.db, { provider: 'github', deliveryId: 'ran', events: [], start: other })).toBe(false);
    const rows = (await sql<{ delivery_id: string; start: DeliveryStart | null }>`select delivery_id, start from webhook_deliveries where delivery_id in ('new', 'ran') order by delivery_id`.execute(own.db)).rows;
    expect(rows).toEqual([
      { delivery_id: 'new', start: START },
      { delivery_id: 'ran', start: null },
    ]);
  });
});
