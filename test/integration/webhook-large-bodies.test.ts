import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Delivery } from '../fakes/webhook-deliveries.ts';
import { startHarness, type Harness } from '../support/harness.ts';
import { gatedReceivers, largeBodyTenants, paddedPush, type LargeBodyTenant } from '../support/large-bodies.ts';

const MiB = 1024 * 1024;
const LIMIT = 64 * MiB;

/**
 * A tenant's large signed body is read (verified, decoded, parsed, normalized) on a thread of the
 * receivers, so another tenant's small delivery is acknowledged while it is: the receivers as the
 * API serves them, real PostgreSQL, real threads. The order is observed, not timed: each large
 * body's job waits on the thread on a gate the test opens (test/support/gated-body-thread.ts), and
 * is seen there (forgelink_webhook_body_thread_jobs) before the next delivery is sent.
 */
describe('large webhook bodies (real PostgreSQL, the receivers\' threads)', () => {
  let h: Harness;
  let receivers: ReturnType<typeof gatedReceivers>;
  let tenants: Record<'a' | 'b', LargeBodyTenant>;

  beforeAll(async () => {
    h = await startHarness();
    tenants = await largeBodyTenants(h, 'large-bodies');
  });
  beforeEach(() => {
    receivers = gatedReceivers(h, LIMIT);
  });
  afterEach(async () => {
    receivers.gated.open();
    await receivers.gated.pool.close();
  });
  afterAll(async () => {
    await h?.close();
  });

  const push = (name: 'a' | 'b', padding = 0): Delivery => paddedPush(tenants[name], padding);
  const post = (d: Delivery) => receivers.post(d);
  /** The large bodies being read on the receivers' threads now. */
  const jobs = (state: 'running' | 'waiting') => receivers.jobs(state);
  const onThreads = () => jobs('running');
  const until = async (state: 'running' | 'waiting', n: number) => {
    while ((await jobs(state)) !== n) await new Promise((resolve) => setTimeout(resolve, 10));
  };

  it('ends the thread of a large body past its deadline (503 with Retry-After, the thread replaced) and reads the body delivered again', async () => {
    const timed = gatedReceivers(h, LIMIT, 1, 500);
    try {
      // The gate stays shut: the body's job would hold the thread until the deadline ends it.
      const late = await timed.post(push('a', 300 * 1024));
      expect(late.status, await late.clone().text()).toBe(503);
      expect(late.headers.get('retry-after')).toBe('1');
      expect(await late.json()).toMatchObject({ detail: 'the delivery could not be read in time now; deliver it again' });
      timed.gated.open();
      const again = await timed.post(push('a', 300 * 1024));
      expect(again.status, await again.clone().text()).toBe(202);
    } finally {
      timed.gated.open();
      await timed.gated.pool.close();
    }
  });

  it("answers a large body whose thread ends under it 503 with Retry-After, and reads it delivered again on a new thread", async () => {
    const d = push('a', 300 * 1024);
    const answer = post(d);
    await until('running', 1);
    receivers.gated.end();
    const ended = await answer;
    expect(ended.status, await ended.clone().text()).toBe(503);
    expect(ended.headers.get('retry-after')).toBe('1');
    expect(await ended.json()).toMatchObject({ detail: 'the delivery could not be read now; deliver it again' });
    receivers.gated.open();
    const again = await post(d);
    expect(again.status, await again.clone().text()).toBe(202);
  });

  it("acknowledges another tenant's small delivery while a large signed body is being read", async () => {
    const large = push('a', 300 * 1024);
    let largeAnswered = false;
    const answer = post(large).finally(() => (largeAnswered = true));
    // The large body on its thread (or, were it read on the event loop, already answered).
    while (!largeAnswered && (await onThreads()) !== 1) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(largeAnswered, 'the large body was answered before its job was seen on a thread').toBe(false);

    const small = await post(push('b'));
    expect(small.status, await small.clone().text()).toBe(202);
    // Answered while the large body's job is still on the thread.
    expect(largeAnswered).toBe(false);
    expect(await onThreads()).toBe(1);

    receivers.gated.open();
    const res = await answer;
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await res.json()).toMatchObject({ status: 'accepted', events: 1 });
    expect(await onThreads()).toBe(0);
  });

  it("lets an organization's verified large bodies wait past its share, and gives the full queue's newest of them to another organization's (503 with Retry-After, delivered again)", async () => {
    // One thread, 4 waiting places. Organization a: one running, four waiting (none refused for its key).
    const own = Array.from({ length: 5 }, () => push('a', 300 * 1024));
    const answered: (number | undefined)[] = own.map(() => undefined);
    const answers = own.map((d, i) => post(d).then((r) => ((answered[i] = r.status), r)));
    await until('waiting', 4);
    expect(await onThreads()).toBe(1);
    expect(answered.every((s) => s === undefined), `answered: ${answered.join(',')}`).toBe(true);
    // Organization b's large body takes the place of a's newest waiting one.
    const other = post(push('b', 300 * 1024));
    const displaced = await Promise.race(answers.map((a, i) => a.then((r) => ({ r, i }))));
    expect(displaced.r.status).toBe(503);
    expect(displaced.r.headers.get('retry-after')).toBe('1');
    expect(await displaced.r.json()).toMatchObject({ detail: 'too many large webhook bodies are being read at once; deliver it again' });
    expect(await jobs('waiting')).toBe(4);
    receivers.gated.open();
    const statuses = (await Promise.all(answers)).map((r) => r.status);
    expect(statuses.filter((s) => s === 202)).toHaveLength(4);
    expect((await other).status).toBe(202);
    // Delivered again once the thread is free, it is read and stored.
    const redelivered = await post(own[displaced.i]!);
    expect(redelivered.status, await redelivered.clone().text()).toBe(202);
  });
});
