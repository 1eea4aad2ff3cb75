import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Provider } from '../../lib/domain.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { serveApp } from '../support/served-app.ts';

/**
 * An organization's stored deliveries not started yet (its connections' own hooks) are bounded
 * (webhooks.maxBacklogDeliveries, maxBacklogBytes; api/webhooks/backlog-bound.ts): one tenant
 * sending signed deliveries faster than the relays start them is answered 503 with Retry-After
 * (a provider retries a 5xx; GitLab disables a hook for good after 4 consecutive 4xx), nothing
 * stored, on every connection of its organization, while every other tenant's deliveries are stored. No relay runs: every stored row stays in the backlog until the
 * test marks it started. Real PostgreSQL, behind a real HTTP server as the API runs.
 */
describe("an organization's intake backlog bound (real PostgreSQL, real HTTP server)", () => {
  let h: Harness;
  const served: Awaited<ReturnType<typeof serveApp>>[] = [];
  beforeAll(async () => {
    h = await startHarness({ withoutIntakeRelay: true });
  });
  afterAll(async () => {
    for (const s of served) await s.close();
    await h?.close();
  });

  /** An organization of its own (or `organizationId`'s, another connection of it) with one attached repository of `provider` and its connection's hook. */
  const tenant = async (provider: Provider, organizationId?: string) => {
    const org = organizationId ? { id: organizationId } : (await createOrgWithToken(h)).org;
    const repository = { externalId: uniqueExternalId(provider), fullName: provider === 'bitbucket' ? `PROJ/backlog-${randomUUID().slice(0, 8)}` : `group/backlog-${randomUUID().slice(0, 8)}` };
    const { connectionId, hook } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repository });
    return { provider, repository, hook, connectionId, organizationId: org.id };
  };
  type Tenant = Awaited<ReturnType<typeof tenant>>;
  /** A push of the tenant's repository, a body of its own (the same body again is a replay for Bitbucket). */
  const push = (t: Tenant): Delivery => delivery(t.provider, { ...withRepository(t.provider, fixture(PUSH_FIXTURES[t.provider]), t.repository), test_push: randomUUID() }, { deliveryId: randomUUID(), ...(t.hook as DeliveringHook) });
  const receivers = async (bounds: { maxBacklogDeliveries?: number; maxBacklogBytes?: number }) => {
    const s = await serveApp(h.appWith({ webhooks: { ...h.apiDeps.webhooks, ...bounds } }));
    served.push(s);
    return (d: Delivery) =>
      new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port: s.port, method: 'POST', path: d.path, headers: { ...d.headers, 'content-length': Buffer.byteLength(d.body) }, agent: false }, (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
        });
        req.on('error', reject);
        req.end(d.body);
      });
  };
  const stored = async (d: Delivery) => (await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', d.deliveryId).execute()).length;

  it("answers 503 naming the bound once an organization's unstarted deliveries reach webhooks.maxBacklogDeliveries, on each of its connections, stores nothing, and takes other tenants' deliveries meanwhile; 202 again once they start", async () => {
    const post = await receivers({ maxBacklogDeliveries: 3 });
    const [flooding, other] = [await tenant('gitlab'), await tenant('gitlab')];
    const sameOrganization = await tenant('gitlab', flooding.organizationId);
    expect(sameOrganization.connectionId).not.toBe(flooding.connectionId);
    // Below the bound: stored, 202.
    for (let i = 0; i < 3; i++) {
      const d = push(flooding);
      expect((await post(d)).status).toBe(202);
      expect(await stored(d)).toBe(1);
    }
    // At it: 503, problem+json, Retry-After, the bound named; not stored.
    const refused = push(flooding);
    const answer = await post(refused);
    expect(answer.status).toBe(503);
    expect(answer.headers['content-type']).toBe('application/problem+json');
    expect(answer.headers['retry-after']).toBe('60');
    const problem = JSON.parse(answer.body) as { status: number; detail: string; bound: string; limit: number };
    expect(problem).toMatchObject({ status: 503, bound: 'webhooks.maxBacklogDeliveries', limit: 3 });
    expect(problem.detail).toMatch(/this organization has 3 deliveries stored and not started yet, at or past webhooks\.maxBacklogDeliveries \(3\)/);
    expect(await stored(refused)).toBe(0);
    // The organization's other connection is held to the same bound (a tenant may make 50 connections).
    const viaOther = push(sameOrganization);
    expect((await post(viaOther)).status).toBe(503);
    expect(await stored(viaOther)).toBe(0);
    // Another tenant is not held to the flooding one's backlog.
    for (let i = 0; i < 3; i++) {
      const d = push(other);
      expect((await post(d)).status).toBe(202);
      expect(await stored(d)).toBe(1);
    }
    // The relay starts the flooding tenant's rows: its deliveries are taken again (at the next measure, within seconds).
    await h.db.updateTable('webhook_deliveries').set({ started_at: new Date() }).where('connection_id', '=', flooding.connectionId).where('started_at', 'is', null).execute();
    await expect.poll(async () => (await post(refused)).status, { timeout: 20_000, interval: 250 }).toBe(202);
    expect(await stored(refused)).toBe(1);
  });

  it('answers 503 at webhooks.maxBacklogBytes, for a body-signed provider (Bitbucket DC) too, after its signature is checked', async () => {
    const post = await receivers({ maxBacklogBytes: 1 });
    const flooding = await tenant('bitbucket');
    const first = push(flooding);
    expect((await post(first)).status).toBe(202);
    const refused = push(flooding);
    const answer = await post(refused);
    expect(answer.status).toBe(503);
    expect(answer.headers['retry-after']).toBe('60');
    expect(JSON.parse(answer.body)).toMatchObject({ bound: 'webhooks.maxBacklogBytes', limit: 1 });
    expect(await stored(refused)).toBe(0);
    // A forged delivery to the same connection is refused for its signature, not told about the backlog.
    const forged = { ...refused, headers: { ...refused.headers, 'x-hub-signature': `sha256=${'0'.repeat(64)}` } };
    expect((await post(forged)).status).toBe(401);
  });
});
