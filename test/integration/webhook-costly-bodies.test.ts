import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { maxParseCost, PARSE_COST_PER_BODY_BYTE } from '../../lib/parse-cost.ts';
import type { Delivery } from '../fakes/webhook-deliveries.ts';
import { startHarness, type Harness } from '../support/harness.ts';
import { costlyPush, gatedReceivers, largeBodyTenants, paddedPush, type LargeBodyTenant } from '../support/large-bodies.ts';

const MiB = 1024 * 1024;
/** The body limit of these receivers: a body's JSON may take PARSE_COST_PER_BODY_BYTE times it once parsed (maxParseCost). */
const LIMIT = 8 * MiB;

/**
 * A tenant signs its own hook's bodies, so it can send JSON built to be costly once parsed
 * (`[{},{},…]`: ~22 bytes of heap a byte of body, 720 MiB for 25 MiB) up to webhooks.maxBodyBytes.
 * A large body's heap once parsed is counted from its bytes first (lib/parse-cost.ts): over
 * the bound, the delivery is answered 413, it is not parsed and nothing is stored, and another
 * tenant's large delivery, waiting for the same thread or read on another one, is read and stored.
 * The receivers as the API serves them, real PostgreSQL, real threads; which body is on which thread
 * is held by a gate the test opens (test/support/gated-body-thread.ts) and observed
 * (forgelink_webhook_body_thread_jobs), not timed.
 */
describe("large webhook bodies too costly to parse (real PostgreSQL, the receivers' threads)", () => {
  let h: Harness;
  let receivers: ReturnType<typeof gatedReceivers>;
  let tenants: Record<'a' | 'b', LargeBodyTenant>;

  beforeAll(async () => {
    h = await startHarness();
    tenants = await largeBodyTenants(h, 'costly-bodies');
  });
  afterEach(async () => {
    receivers.gated.open();
    await receivers.gated.pool.close();
  });
  afterAll(async () => {
    await h?.close();
  });

  const post = (d: Delivery) => receivers.post(d);
  const until = async (state: 'running' | 'waiting', n: number) => {
    while ((await receivers.jobs(state)) !== n) await new Promise((resolve) => setTimeout(resolve, 10));
  };
  const stored = async (d: Delivery) => (await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', d.deliveryId).execute()).length;
  const expectTooCostly = async (res: Response) => {
    expect(res.status, await res.clone().text()).toBe(413);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await res.json()).toMatchObject({
      status: 413,
      detail: `the body is too costly to parse: its JSON would take more than ${maxParseCost(LIMIT)} bytes of heap once parsed (${PARSE_COST_PER_BODY_BYTE} times webhooks.maxBodyBytes)`,
    });
  };

  it("answers a body too costly to parse 413 and stores nothing; another tenant's large delivery waiting behind it on the thread is read and stored", async () => {
    receivers = gatedReceivers(h, LIMIT, 1);
    const costly = costlyPush(tenants.a, LIMIT - 1024);
    const valid = paddedPush(tenants.b, 300 * 1024);
    const attack = post(costly);
    await until('running', 1);
    const other = post(valid);
    await until('waiting', 1);
    receivers.gated.open();

    await expectTooCostly(await attack);
    const answered = await other;
    expect(answered.status, await answered.clone().text()).toBe(202);
    expect(await stored(costly)).toBe(0);
    expect(await stored(valid)).toBe(1);
    // The pool goes on reading on the same thread: the attacker's next valid large push is stored.
    const next = paddedPush(tenants.a, 300 * 1024);
    const again = await post(next);
    expect(again.status, await again.clone().text()).toBe(202);
    expect(await stored(next)).toBe(1);
    expect(receivers.gated.pool.size()).toEqual({ running: 0, waiting: 0, held: 0, threads: 1 });
  });

  it("answers a body too costly to parse 413 while another tenant's large delivery read on the other thread at the same time is stored", async () => {
    receivers = gatedReceivers(h, LIMIT, 2);
    const costly = costlyPush(tenants.a, LIMIT - 1024);
    const valid = paddedPush(tenants.b, 300 * 1024);
    const attack = post(costly);
    const other = post(valid);
    // Both on a thread at once, held there until the gate opens.
    await until('running', 2);
    receivers.gated.open();

    await expectTooCostly(await attack);
    const answered = await other;
    expect(answered.status, await answered.clone().text()).toBe(202);
    expect(await stored(costly)).toBe(0);
    expect(await stored(valid)).toBe(1);
    // Sent again, the same body gets the same answer, and nothing is stored.
    await expectTooCostly(await post(costly));
    expect(await stored(costly)).toBe(0);
  });
});
