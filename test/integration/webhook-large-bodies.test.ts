import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createApiMetrics } from '../../lib/metrics.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { gatedBodyPool } from '../support/gated-body-thread.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

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
  let app: ReturnType<Harness['appWith']>;
  let gated: ReturnType<typeof gatedBodyPool>;
  const tenants = {} as Record<'a' | 'b', { repository: { externalId: string; fullName: string }; hook: DeliveringHook }>;

  beforeAll(async () => {
    h = await startHarness();
    for (const name of ['a', 'b'] as const) {
      const { org } = await createOrgWithToken(h);
      const repository = { externalId: uniqueExternalId('gitlab'), fullName: `tenant-${name}/large-bodies` };
      const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
      tenants[name] = { repository, hook };
    }
  });
  beforeEach(() => {
    gated = gatedBodyPool(1);
    app = h.appWith({ metrics: createApiMetrics(), metricsPath: '/metrics', webhooks: { ...h.apiDeps.webhooks, maxBodyBytes: LIMIT, bodyPool: gated.pool } });
  });
  afterEach(async () => {
    gated.open();
    await gated.pool.close();
  });
  afterAll(async () => {
    await h?.close();
  });

  /** A push of the tenant's repository, its body padded with `padding` bytes of small objects (read by JSON.parse, not by the receiver). */
  function push(name: 'a' | 'b', padding = 0): Delivery {
    const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), tenants[name].repository);
    const item = { id: 12345, name: 'padding', done: false };
    payload.padding = Array.from({ length: Math.floor(padding / (JSON.stringify(item).length + 1)) }, () => item);
    return delivery('gitlab', payload, { deliveryId: randomUUID(), ...tenants[name].hook });
  }
  const post = async (d: Delivery) => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
  /** The large bodies being read on the receivers' threads now. */
  const jobs = async (state: 'running' | 'waiting') => Number(new RegExp(`forgelink_webhook_body_thread_jobs\\{state="${state}"\\} (\\d+)`).exec(await (await app.request('/metrics')).text())?.[1]);
  const onThreads = () => jobs('running');
  const until = async (state: 'running' | 'waiting', n: number) => {
    while ((await jobs(state)) !== n) await new Promise((resolve) => setTimeout(resolve, 10));
  };

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

    gated.open();
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
    gated.open();
    const statuses = (await Promise.all(answers)).map((r) => r.status);
    expect(statuses.filter((s) => s === 202)).toHaveLength(4);
    expect((await other).status).toBe(202);
    // Delivered again once the thread is free, it is read and stored.
    const redelivered = await post(own[displaced.i]!);
    expect(redelivered.status, await redelivered.clone().text()).toBe(202);
  });
});
