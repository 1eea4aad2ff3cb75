import { request as httpRequest, type ClientRequest } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createApiMetrics, type ApiMetrics } from '../../lib/metrics.ts';
import type { Delivery } from '../fakes/webhook-deliveries.ts';
import { startHarness, type Harness } from '../support/harness.ts';
import { serveApp } from '../support/served-app.ts';
import { largeBodyTenants, paddedPush, type LargeBodyTenant } from '../support/large-bodies.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const LIMIT = 1 * MiB;
/** The budget of verified deliveries: a connection's share is then 5 MiB (5 times the limit, more than a quarter). */
const BUDGET = 12 * MiB;
const SHARE = 5 * LIMIT;

/**
 * What verified deliveries hold in flight (their bodies and events' JSON) is bounded in all and per
 * connection (api/routes/webhooks.ts, Caches.held): one tenant signing its own bodies cannot take the
 * API's memory, nor another tenant's deliveries. GitLab's bodies are verified by a header, before
 * they are read, so they take their bytes before the read. Behind a real HTTP server, as the API runs.
 */
describe('verified webhook deliveries in flight (real PostgreSQL, real HTTP server)', () => {
  let h: Harness;
  let metrics: ApiMetrics;
  let served: Awaited<ReturnType<typeof serveApp>> | undefined;
  let port: number;
  let tenants: Record<'a' | 'b', LargeBodyTenant>;
  const open: ClientRequest[] = [];

  beforeAll(async () => {
    h = await startHarness();
    tenants = await largeBodyTenants(h, 'verified-deliveries');
    metrics = createApiMetrics();
    // Every body is read on the event loop (under threadBodyBytes): the threads are not what is tested.
    const app = h.appWith({ metrics, metricsPath: '/metrics', webhooks: { ...h.apiDeps.webhooks, maxBodyBytes: LIMIT, verifiedDeliveryBytes: BUDGET, threadBodyBytes: 2 * LIMIT } });
    served = await serveApp(app);
    ({ port } = served);
  });
  afterEach(async () => {
    for (const req of open.splice(0)) req.destroy();
    await vi.waitFor(async () => expect(await heldBytes()).toBe(0), { timeout: 10_000, interval: 20 });
  });
  afterAll(async () => {
    await served?.close();
    await h?.close();
  });

  const heldBytes = async () => Number(/^forgelink_webhook_verified_delivery_bytes (\S+)$/m.exec(await metrics.registry.metrics())?.[1]);
  const storedTimes = async (d: Delivery) =>
    (await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('provider', '=', d.provider).where('delivery_id', '=', d.deliveryId).execute()).length;

  /** `d`'s body padded with trailing spaces (still its JSON) to `declared` bytes. */
  const padded = (d: Delivery, declared: number) => Buffer.concat([Buffer.from(d.body), Buffer.alloc(declared - Buffer.byteLength(d.body), ' ')]);

  async function post(d: Delivery, declared = Buffer.byteLength(d.body)): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: d.path, headers: { ...d.headers, 'content-length': declared }, agent: false }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
      });
      req.on('error', reject);
      req.end(padded(d, declared));
    });
  }

  /** Starts posting `d` declaring `declared` bytes, sends its first 64 KiB and holds the rest back. */
  function stall(d: Delivery, declared: number): { req: ClientRequest; finish: () => Promise<number> } {
    const body = padded(d, declared);
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: d.path, headers: { ...d.headers, 'content-length': declared }, agent: false });
    open.push(req);
    const answered = new Promise<number>((resolve, reject) => {
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
    });
    answered.catch(() => undefined);
    req.write(body.subarray(0, 64 * KiB));
    return {
      req,
      finish: () => {
        req.end(body.subarray(64 * KiB));
        return answered;
      },
    };
  }

  it("one tenant holding its share is answered 503 with Retry-After and nothing stored, while another tenant's delivery is stored; the bytes come back after success and a client abort", async () => {
    // Tenant a's hook: five bodies of nearly the limit held back by their sender, its share but 40 KiB.
    const declared = LIMIT - 8 * KiB;
    const stalls = Array.from({ length: 5 }, () => stall(paddedPush(tenants.a), declared));
    await vi.waitFor(async () => expect(await heldBytes()).toBe(5 * declared), { timeout: 10_000, interval: 20 });

    // A 64 KiB delivery of tenant a does not fit its share: 503, unread, not stored.
    const refused = paddedPush(tenants.a, 64 * KiB);
    const answer = await post(refused);
    expect(answer.status).toBe(503);
    expect(answer.headers['content-type']).toBe('application/problem+json');
    expect(answer.headers['retry-after']).toBe('1');
    expect(JSON.parse(answer.body)).toMatchObject({ status: 503, detail: expect.stringContaining('verified webhook deliveries') });
    expect(await storedTimes(refused)).toBe(0);
    expect(await heldBytes()).toBe(5 * declared);

    // The same of tenant b is stored: a's deliveries take a's share, not the budget.
    const other = paddedPush(tenants.b, 64 * KiB);
    expect((await post(other)).status).toBe(202);
    expect(await storedTimes(other)).toBe(1);
    expect(await heldBytes()).toBe(5 * declared);

    // A sender that goes away mid-body gives its bytes back.
    stalls[0]!.req.destroy();
    await vi.waitFor(async () => expect(await heldBytes()).toBe(4 * declared), { timeout: 10_000, interval: 20 });
    // Stored, the others give theirs back too; and tenant a's delivery, delivered again, is stored.
    for (const s of stalls.slice(1)) expect(await s.finish()).toBe(202);
    expect(await heldBytes()).toBe(0);
    expect((await post(refused)).status).toBe(202);
    expect(await storedTimes(refused)).toBe(1);
    expect(await heldBytes()).toBe(0);
  });

  it("counts a delivery's events' JSON until it is answered: one whose body fits and whose events do not is 503, nothing stored, and its body's bytes come back", async () => {
    const small = paddedPush(tenants.a);
    const smallBytes = Buffer.byteLength(small.body);
    // Tenant a holds its share but the small body's bytes and 10 more: the events' JSON (twice its length) does not fit.
    const stalls = [...Array.from({ length: 4 }, () => stall(paddedPush(tenants.a), LIMIT)), stall(paddedPush(tenants.a), LIMIT - smallBytes - 10)];
    await vi.waitFor(async () => expect(await heldBytes()).toBe(SHARE - smallBytes - 10), { timeout: 10_000, interval: 20 });
    const answer = await post(small);
    expect(answer.status).toBe(503);
    expect(answer.headers['retry-after']).toBe('1');
    expect(await storedTimes(small)).toBe(0);
    expect(await heldBytes()).toBe(SHARE - smallBytes - 10);
    for (const s of stalls) s.req.destroy();
    await vi.waitFor(async () => expect(await heldBytes()).toBe(0), { timeout: 10_000, interval: 20 });
    expect((await post(small)).status).toBe(202);
    expect(await storedTimes(small)).toBe(1);
  });
});
