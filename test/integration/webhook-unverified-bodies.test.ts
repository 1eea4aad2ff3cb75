import { randomUUID } from 'node:crypto';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Provider } from '../../lib/domain.ts';
import { createApiMetrics, type ApiMetrics } from '../../lib/metrics.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery, type DeliveryOptions } from '../fakes/webhook-deliveries.ts';
import { deliveryUrlOf } from '../support/attachments.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { serveApp } from '../support/served-app.ts';

const MiB = 1024 * 1024;
const LIMIT = 2 * MiB;
/** The budget: two bodies of the limit; one sender address may hold one (the limit, more than a quarter). */
const BUDGET = 4 * MiB;
const WRONG = 'not-the-secret-of-this-hook-at-all';

/**
 * The receivers hold GitHub's and Bitbucket's bodies before their signature says who sent them:
 * bounded in all and per sender address (api/webhooks/unverified-budget.ts), and a delivery to a
 * connection that does not exist is refused before its body is read. Behind a real HTTP server,
 * senders from several loopback addresses (127.0.0.x), as the API runs.
 */
describe('webhook bodies not verified yet (real PostgreSQL, real HTTP server)', () => {
  let h: Harness;
  let metrics: ApiMetrics;
  let served: Awaited<ReturnType<typeof serveApp>> | undefined;
  let port: number;
  const hooks = {} as Record<'github' | 'bitbucket' | 'gitlab', { repository: { externalId: string; fullName: string }; hook: DeliveringHook; connectionId: string }>;
  const open: ClientRequest[] = [];

  beforeAll(async () => {
    h = await startHarness();
    const { org } = await createOrgWithToken(h);
    for (const provider of ['github', 'bitbucket', 'gitlab'] as const) {
      const repository = { externalId: uniqueExternalId(provider), fullName: provider === 'github' ? 'octo-org/unverified' : provider === 'gitlab' ? 'group/unverified' : 'PROJ/unverified' };
      const { hook, connectionId } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repository });
      hooks[provider] = { repository, hook, connectionId };
    }
    metrics = createApiMetrics();
    const app = h.appWith({ metrics, metricsPath: '/metrics', webhooks: { ...h.apiDeps.webhooks, maxBodyBytes: LIMIT, unverifiedBodyBytes: BUDGET } });
    served = await serveApp(app);
    ({ port } = served);
  });
  // A test that fails with senders still stalled leaves none to the next.
  afterEach(async () => {
    for (const req of open.splice(0)) req.destroy();
    await vi.waitFor(async () => expect(await heldBytes()).toBe(0), { timeout: 10_000, interval: 20 });
  });
  afterAll(async () => {
    await served?.close();
    await h?.close();
  });

  function pushTo(provider: 'github' | 'bitbucket' | 'gitlab', options: Partial<DeliveryOptions> = {}): Delivery {
    const payload = withRepository(provider, fixture(PUSH_FIXTURES[provider]), hooks[provider].repository);
    payload.test_push = randomUUID();
    return delivery(provider, payload, { deliveryId: randomUUID(), ...hooks[provider].hook, ...options });
  }

  /** Posts `d` from `from` (a loopback address): the whole body, and its answer. */
  async function post(d: Delivery, from: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, localAddress: from, method: 'POST', path: d.path, headers: { ...d.headers, 'content-length': Buffer.byteLength(d.body) }, agent: false }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
      });
      req.on('error', reject);
      req.end(d.body);
    });
  }

  /** Starts posting `d` from `from` declaring `declared` bytes, sends the first 64 KiB and holds the rest back (a sender on a slow link). */
  function stall(d: Delivery, from: string, declared = LIMIT): { req: ClientRequest; finish: () => Promise<number> } {
    const req = httpRequest({ host: '127.0.0.1', port, localAddress: from, method: 'POST', path: d.path, headers: { ...d.headers, 'content-length': declared }, agent: false });
    open.push(req);
    const answered = new Promise<number>((resolve, reject) => {
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
    });
    answered.catch(() => undefined);
    req.write(Buffer.alloc(64 * 1024, ' '));
    return {
      req,
      finish: () => {
        req.end(Buffer.alloc(declared - 64 * 1024, ' '));
        return answered;
      },
    };
  }

  async function scrape(): Promise<string> {
    return metrics.registry.metrics();
  }
  const heldBytes = async () => Number(/^forgelink_webhook_unverified_body_bytes (\S+)$/m.exec(await scrape())?.[1]);
  const counted = async (provider: Provider, outcome: string) =>
    Number(new RegExp(`^forgelink_webhook_deliveries_total\\{provider="${provider}",outcome="${outcome}"\\} (\\S+)$`, 'm').exec(await scrape())?.[1] ?? 0);
  const storedTimes = async (d: Delivery) =>
    (await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('provider', '=', d.provider).where('delivery_id', '=', d.deliveryId).execute()).length;

  it('holds at most the budget, and a sender address its share: beyond them 503 with Retry-After, unread and not stored; freed, the next is stored once', async () => {
    // A forged GitHub delivery (a signature of the right shape) from 127.0.0.2 holds its declared 2 MiB: that address's whole share.
    const first = stall(pushTo('github', { secret: WRONG }), '127.0.0.2');
    await vi.waitFor(async () => expect(await heldBytes()).toBe(LIMIT), { timeout: 10_000, interval: 20 });

    // The same address again: its share is taken, so a valid delivery from it waits for its turn.
    const sameSender = pushTo('github');
    const refused = await post(sameSender, '127.0.0.2');
    expect(refused.status).toBe(503);
    expect(refused.headers['content-type']).toBe('application/problem+json');
    expect(refused.headers['retry-after']).toBe('1');
    expect(JSON.parse(refused.body)).toMatchObject({ status: 503, detail: expect.stringContaining('unverified') });
    expect(await storedTimes(sameSender)).toBe(0);

    // Another address is admitted: one sender does not take the budget from the providers'.
    const otherSender = pushTo('github');
    expect((await post(otherSender, '127.0.0.3')).status).toBe(202);
    expect(await storedTimes(otherSender)).toBe(1);

    // A forged Bitbucket delivery to a connection's hook (which exists) from a third address takes the rest.
    const second = stall(pushTo('bitbucket', { secret: WRONG }), '127.0.0.4');
    await vi.waitFor(async () => expect(await heldBytes()).toBe(BUDGET), { timeout: 10_000, interval: 20 });
    for (const provider of ['github', 'bitbucket'] as const) {
      const crowdedOut = pushTo(provider);
      expect((await post(crowdedOut, '127.0.0.5')).status, provider).toBe(503);
      expect(await storedTimes(crowdedOut), provider).toBe(0);
    }
    // GitLab's credential is a header: its body is read only once verified, outside the budget.
    const gitlab = pushTo('gitlab');
    expect((await post(gitlab, '127.0.0.5')).status).toBe(202);
    expect(await storedTimes(gitlab)).toBe(1);

    // The forged bodies arrive, are refused, and give their bytes back.
    expect(await first.finish()).toBe(401);
    expect(await second.finish()).toBe(401);
    expect(await heldBytes()).toBe(0);
    for (const provider of ['github', 'bitbucket'] as const) {
      const next = pushTo(provider);
      expect((await post(next, '127.0.0.5')).status, provider).toBe(202);
      // Again: a redelivery, acknowledged, still one row.
      expect((await post(next, '127.0.0.5')).status, provider).toBe(202);
      expect(await storedTimes(next), provider).toBe(1);
    }
  });

  it('gives the bytes of a sender that goes away mid-body back', async () => {
    const gone = stall(pushTo('bitbucket', { secret: WRONG }), '127.0.0.6');
    await vi.waitFor(async () => expect(await heldBytes()).toBe(LIMIT), { timeout: 10_000, interval: 20 });
    gone.req.destroy();
    await vi.waitFor(async () => expect(await heldBytes()).toBe(0), { timeout: 10_000, interval: 20 });
  });

  it('refuses a connection hook naming no connection, or one of another provider, and a GitHub signature that cannot match, before reading the body', async () => {
    const before = { bitbucket: await counted('bitbucket', '401'), github: await counted('github', '401') };
    const unknown = stall(pushTo('bitbucket', { url: deliveryUrlOf('bitbucket', randomUUID()) }), '127.0.0.7');
    const otherProvider = stall(pushTo('bitbucket', { url: deliveryUrlOf('bitbucket', hooks.gitlab.connectionId) }), '127.0.0.8');
    const garbled = pushTo('github');
    garbled.headers['x-hub-signature-256'] = 'sha256=00';
    const unsigned = stall(garbled, '127.0.0.9');
    // Answered (and counted) while most of each body is still held back by its sender; nothing held for them.
    await vi.waitFor(async () => {
      expect(await counted('bitbucket', '401')).toBe(before.bitbucket + 2);
      expect(await counted('github', '401')).toBe(before.github + 1);
    }, { timeout: 10_000, interval: 20 });
    expect(await heldBytes()).toBe(0);
    // The answer goes out once the rest has arrived (and been thrown away): the same 401 as a wrong signature.
    expect(await unknown.finish()).toBe(401);
    expect(await otherProvider.finish()).toBe(401);
    expect(await unsigned.finish()).toBe(401);
  });
});
