import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { gatedReceivers, largeBodyTenants, paddedPush, type LargeBodyTenant } from '../support/large-bodies.ts';

const MiB = 1024 * 1024;
const LIMIT = 64 * MiB;

/**
 * Only a verified large body takes a place on the receivers' threads: GitHub's and Bitbucket's
 * signatures are over the body, and a sender without any credential (a forged signature, a
 * connection id from another organization's hook URL, which is not a secret) must neither fill the
 * queue nor take an organization's share of it, or other tenants' signed large deliveries get 503
 * (and GitHub does not deliver again by itself). The queue is observed
 * (forgelink_webhook_body_thread_jobs), not timed: a signed large body is held on the one thread by
 * a gate (test/support/gated-body-thread.ts) while forged bodies are sent; none of them may be seen
 * waiting, and each is answered 401.
 */
describe('large webhook bodies without a valid signature (real PostgreSQL, the receivers\' threads)', () => {
  let h: Harness;
  let receivers: ReturnType<typeof gatedReceivers>;
  let tenants: Record<'a' | 'b', LargeBodyTenant>;
  let victim: { repository: { externalId: string; fullName: string }; hook: DeliveringHook; connectionId: string };
  beforeAll(async () => {
    h = await startHarness();
    tenants = await largeBodyTenants(h, 'unverified-large');
    const { org } = await createOrgWithToken(h);
    const repository = { externalId: uniqueExternalId('bitbucket'), fullName: 'PRJ/victim' };
    const { hook, connectionId } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'bitbucket', ...repository });
    victim = { repository, hook, connectionId };
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
  /** Large bodies on the thread and waiting for it (what forgelink_webhook_body_thread_jobs reports). */
  const jobs = (state: 'running' | 'waiting') => receivers.jobs(state);
  /** A well-formed signature that matches nothing, over 300 KiB (over webhooks.threadBodyBytes). */
  const forged = (provider: 'github' | 'bitbucket', connectionId?: string) =>
    receivers.app.request(`/api/events-handler/v1/events/${provider}${connectionId ? `?c=${connectionId}` : ''}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-event-key': 'repo:refs_changed', [provider === 'github' ? 'x-hub-signature-256' : 'x-hub-signature']: `sha256=${'0'.repeat(64)}` },
      body: JSON.stringify({ pad: 'x'.repeat(300 * 1024) }),
    });
  /** A signed large body holding the one thread (on the gate): resolves once its job is seen running. */
  async function holdThread() {
    const large = post(push('a', 300 * 1024));
    while ((await jobs('running')) !== 1) await new Promise((resolve) => setTimeout(resolve, 10));
    return { large };
  }
  /** Resolves when every request is answered, or as soon as `queued` jobs are seen waiting (they took places unverified). */
  async function answeredOrQueued(requests: (Response | Promise<Response>)[], queued: number) {
    let settled = false;
    const all = Promise.all(requests).finally(() => (settled = true));
    while (!settled && (await jobs('waiting')) < queued) await new Promise((resolve) => setTimeout(resolve, 10));
    return settled;
  }

  it("answers forged bodies 401 without queueing them, and another tenant's signed large delivery is read", async () => {
    const { large } = await holdThread();
    const attack = [forged('github'), forged('github'), forged('bitbucket'), forged('bitbucket')];
    expect(await answeredOrQueued(attack, 4), 'forged bodies were seen waiting for the thread').toBe(true);
    expect((await Promise.all(attack)).map((r) => r.status)).toEqual([401, 401, 401, 401]);
    expect(await jobs('running')).toBe(1);
    // Another tenant's signed large delivery waits for the thread, and is read once it is free.
    const other = post(push('b', 300 * 1024));
    while ((await jobs('waiting')) !== 1) await new Promise((resolve) => setTimeout(resolve, 10));
    receivers.gated.open();
    const answered = await other;
    expect(answered.status, await answered.clone().text()).toBe(202);
    expect((await large).status).toBe(202);
  });

  it("does not let a forged body naming another organization's connection take that organization's places", async () => {
    const { large } = await holdThread();
    const attack = [forged('bitbucket', victim.connectionId), forged('bitbucket', victim.connectionId)];
    expect(await answeredOrQueued(attack, 2), "forged bodies were seen waiting in the victim's places").toBe(true);
    expect((await Promise.all(attack)).map((r) => r.status)).toEqual([401, 401]);
    const payload = withRepository('bitbucket', fixture(PUSH_FIXTURES.bitbucket), victim.repository);
    (payload as Record<string, unknown>).padding = 'p'.repeat(300 * 1024);
    const pending = post(delivery('bitbucket', payload, { deliveryId: randomUUID(), ...victim.hook }));
    while ((await jobs('waiting')) !== 1) await new Promise((resolve) => setTimeout(resolve, 10));
    receivers.gated.open();
    const own = await pending;
    expect(own.status, await own.clone().text()).toBe(202);
    expect((await large).status).toBe(202);
  });
});
