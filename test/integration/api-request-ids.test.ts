import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from '../support/harness.ts';

/** The API's side of the one log stream: request ids in answers and log lines, one access line per request. */
describe('request ids and the access log', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true, withoutIntakeRelay: true });
  });
  afterAll(async () => {
    await h?.close();
  });

  const lines = () => h.logs.flatMap((chunk) => chunk.split('\n').filter(Boolean)).map((line) => JSON.parse(line) as Record<string, unknown>);

  it('keeps a sane X-Request-Id: in the answer header, the problem body and the access line', async () => {
    const id = `req-${Date.now()}-abc`;
    const res = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug: 'Not A Slug' }, headers: { 'x-request-id': id } });
    expect(res.status).toBe(400);
    expect(res.headers.get('x-request-id')).toBe(id);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(await res.json()).toMatchObject({ status: 400, requestId: id });
    const access = lines().filter((l) => l.requestId === id);
    expect(access).toEqual([expect.objectContaining({ msg: 'request', level: 30, method: 'POST', path: '/api/v1/orgs', route: '/api/v1/orgs', status: 400, durationMs: expect.any(Number) })]);
  });

  it('replaces an id that is too long or not printable, and generates one when none is sent', async () => {
    for (const sent of ['x'.repeat(200), 'two words', undefined]) {
      const res = await h.request('GET', '/api/v1/orgs/nobody/connections', { token: h.adminToken, headers: sent === undefined ? {} : { 'x-request-id': sent } });
      expect(res.status).toBe(404);
      const given = res.headers.get('x-request-id');
      expect(given).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(((await res.json()) as { requestId: string }).requestId).toBe(given);
      expect(lines().find((l) => l.requestId === given)).toMatchObject({ msg: 'request', route: '/api/v1/orgs/:org/connections', status: 404 });
    }
  });

  it('puts the id on every line written while the request is served', async () => {
    // A Temporal that refuses at once (a real client would retry for seconds first).
    const refusing = { withDeadline: (_: number, fn: () => Promise<unknown>) => fn(), connection: { workflowService: { getSystemInfo: () => Promise.reject(new Error('unavailable')) } } } as unknown as Client;
    const res = await h.appWith({ temporal: refusing }).request('/readyz', { headers: { 'x-request-id': 'ready-check-1' } });
    expect(res.status).toBe(503);
    const mine = lines().filter((l) => l.requestId === 'ready-check-1');
    expect(mine.map((l) => l.msg)).toEqual(['readiness check failed', 'request']);
  });

  it('writes the access line at logging.accessLogLevel, or none when silent', async () => {
    await h.appWith({ accessLogLevel: 'debug' }).request('/healthz', { headers: { 'x-request-id': 'at-debug' } });
    await h.appWith({ accessLogLevel: 'silent' }).request('/healthz', { headers: { 'x-request-id': 'silenced' } });
    expect(lines().find((l) => l.requestId === 'at-debug')).toMatchObject({ level: 20, msg: 'request', status: 200 });
    expect(lines().filter((l) => l.requestId === 'silenced')).toEqual([]);
  });
});
