import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiMetrics } from '../../lib/metrics.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

const MiB = 1024 * 1024;
const LIMIT = 64 * MiB;

/**
 * A tenant's large signed body is read (verified, decoded, parsed, normalized) on a thread of the
 * receivers, so another tenant's small delivery is acknowledged while it is: the receivers as the
 * API serves them, real PostgreSQL, real threads. The order is observed, not timed: the large
 * body's job is seen on the thread (forgelink_webhook_body_thread_jobs) before the small delivery
 * is sent, and the small one's 202 comes while that job is still there and the large one unanswered.
 */
describe('large webhook bodies (real PostgreSQL, the receivers\' threads)', () => {
  let h: Harness;
  let app: ReturnType<Harness['appWith']>;
  const tenants = {} as Record<'a' | 'b', { repository: { externalId: string; fullName: string }; hook: DeliveringHook }>;

  beforeAll(async () => {
    h = await startHarness();
    for (const name of ['a', 'b'] as const) {
      const { org } = await createOrgWithToken(h);
      const repository = { externalId: uniqueExternalId('gitlab'), fullName: `tenant-${name}/large-bodies` };
      const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
      tenants[name] = { repository, hook };
    }
    app = h.appWith({ metrics: createApiMetrics(), metricsPath: '/metrics', webhooks: { ...h.apiDeps.webhooks, maxBodyBytes: LIMIT, bodyThreads: 1 } });
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
  const onThreads = async () => Number(/forgelink_webhook_body_thread_jobs\{state="running"\} (\d+)/.exec(await (await app.request('/metrics')).text())?.[1]);

  it("acknowledges another tenant's small delivery while a large signed body is being read", async () => {
    const large = push('a', 60 * MiB);
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

    const res = await answer;
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await res.json()).toMatchObject({ status: 'accepted', events: 1 });
    expect(await onThreads()).toBe(0);
  });

  it("answers 503 with Retry-After (not 4xx, not ignored) for an organization's large body past its share of the threads, while another organization's is read", async () => {
    // One thread: an organization may have two large bodies running or waiting.
    const own = [push('a', 8 * MiB), push('a', 8 * MiB), push('a', 8 * MiB)];
    const other = push('b', 8 * MiB);
    const answers = await Promise.all([...own, other].map(post));
    const statuses = answers.map((r) => r.status);
    expect(statuses.slice(0, 3).sort()).toEqual([202, 202, 503]);
    const busy = answers.find((r) => r.status === 503)!;
    expect(busy.headers.get('retry-after')).toBe('1');
    expect(await busy.json()).toMatchObject({ detail: 'too many large webhook bodies are being read at once; deliver it again' });
    expect(statuses[3]).toBe(202);
    // Delivered again once the threads are free, it is read and stored.
    const again = own[statuses.indexOf(503)]!;
    const redelivered = await post(again);
    expect(redelivered.status, await redelivered.clone().text()).toBe(202);
  });
});
