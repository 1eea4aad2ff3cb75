import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbound } from '../../activities/outbound.ts';
import type { ConnectResult, EventResult } from '../../workflows/contract.ts';
import { lastListing } from '../../lib/db/repositories/repository-cache.ts';
import { startFakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGitlab } from '../fakes/gitlab.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedConnection } from '../support/attachments.ts';
import { send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { endlessAnswer, listen, TEST_ADDRESS_POLICY } from '../support/outbound.ts';

/** Short, so a subscriber that keeps failing is given up on within seconds. */
const DEADLINE_SECONDS = 4;
/** A name the API sees on a public address and the worker, later, on a loopback address it may not reach. */
const REBOUND_HOST = 'ci.rebind.test';

/** Polls Temporal until `check` holds: the state under test lives in the server, not in this process. */
async function until<T>(check: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('outbound guard: what tenants point the worker at', () => {
  let h: Harness;
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    h = await startHarness({
      settings: { subscriberDeliveryDeadlineSeconds: DEADLINE_SECONDS, listingCallsPerWorker: 1 },
      resolveHost: async (host) => (host === REBOUND_HOST ? ['203.0.113.10'] : ['127.0.0.1']),
      outbound: createOutbound({ ...TEST_ADDRESS_POLICY, resolve: async (host) => (host === REBOUND_HOST ? ['127.0.0.2'] : ['127.0.0.1']) }),
    });
  });
  afterAll(async () => {
    await h?.close();
    for (const close of closers) await close();
  });

  async function newListener(host: string, handler: http.RequestListener) {
    const listener = await listen(host, handler);
    closers.push(() => listener.close());
    return listener;
  }

  async function subscribe(o: { org: { slug: string }; token: string }, url: string) {
    const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url } });
    expect(res.status, await res.clone().text()).toBe(201);
    return (await res.json()) as { id: string };
  }

  /** A GitLab push to a freshly attached repository of the organization; its event run's result. */
  async function pushTo(o: { org: { id: string } }) {
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `acme/${randomUUID().slice(0, 8)}` };
    const { hook } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', ...repository });
    const payload = { ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), ref: 'refs/heads/main' };
    const res = await send(h, delivery('gitlab', payload, { deliveryId: randomUUID(), ...hook }));
    expect(res.status, await res.clone().text()).toBe(202);
    return resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId);
  }

  const attemptsOf = (subscriberId: string) =>
    h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded', 'status_code', 'error', 'duration_ms']).where('subscriber_id', '=', subscriberId).orderBy('attempt').execute();

  it("does not follow a provider's redirect to another listener: GitLab's PRIVATE-TOKEN never reaches it", async () => {
    const second = await newListener('127.0.0.1', (_, res) => res.end('{}'));
    const gitlab = await startFakeGitlab();
    closers.push(() => gitlab.close());
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'redirected', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.server.failNext('tokenSelf', 100, { status: 302, headers: { location: `${second.url}/api/v4/personal_access_tokens/self` }, body: {} });
    const o = await createOrgWithToken(h);

    const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/connections`, { token: o.token, body: { provider: 'gitlab', baseUrl: gitlab.url, token } });
    expect(res.status, await res.clone().text()).toBe(202);
    const result = await resultOf<ConnectResult>(h, ((await res.json()) as { workflowId: string }).workflowId);

    expect(result).toEqual({ status: 'failed', reason: `OutboundRefused: ${gitlab.url} redirected to another origin (${second.url}): not followed` });
    expect(second.connections).toBe(0);
    // Refused for good: one call, not the retry policy's ten.
    expect(gitlab.server.calls.filter((c) => c.operation === 'tokenSelf')).toHaveLength(1);
  });

  it('refuses [::ffff:a9fe:a9fe] (169.254.169.254 as IPv4-mapped IPv6) at the API and in the worker', async () => {
    const o = await createOrgWithToken(h);
    for (const [path, body] of [
      ['connections', { provider: 'gitlab', baseUrl: 'https://[::ffff:a9fe:a9fe]', token: 'glpat-x' }],
      ['connections', { provider: 'bitbucket', baseUrl: 'https://[::ffff:169.254.169.254]/', token: 'x' }],
      ['subscribers', { url: 'https://[::ffff:a9fe:a9fe]/latest/meta-data' }],
    ] as const) {
      const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/${path}`, { token: o.token, body });
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(((await res.json()) as { detail: string }).detail).toMatch(/::ffff:a9fe:a9fe is a link-local or metadata address/);
    }
    // A connection stored before the API refused such URLs is refused when the worker connects.
    const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'gitlab', baseUrl: 'http://[::ffff:a9fe:a9fe]', secret: 'glpat-old' });
    const refreshed = await h.request('POST', `/api/v1/orgs/${o.org.slug}/repositories/refresh`, { token: o.token });
    expect(refreshed.status).toBe(202);
    const { failed } = await resultOf<{ failed: { connectionId: string; reason: string }[] }>(h, ((await refreshed.json()) as { workflowId: string }).workflowId);
    expect(failed).toEqual([{ connectionId, reason: expect.stringMatching(/OutboundRefused: ::ffff:a9fe:a9fe is a link-local or metadata address/) }]);
  });

  it('refuses a subscriber whose name resolves to a forbidden address at call time (DNS rebinding)', async () => {
    // Where the rebound name leads: it must see no connection at all.
    const internal = await newListener('127.0.0.2', (_, res) => res.end());
    const o = await createOrgWithToken(h);
    const { id: subscriberId } = await subscribe(o, `https://${REBOUND_HOST}:${internal.port}/events`);

    const result = await pushTo(o);

    expect(result.delivered).toBe(0);
    expect(result.undelivered).toEqual([{ eventId: expect.any(String), subscriberId, reason: expect.stringMatching(/resolves to a loopback or private address/) }]);
    // The tenant sees no address its name resolved to (the worker's log has it).
    expect(result.undelivered[0]!.reason).not.toContain('127.0.0.2');
    const attempts = await attemptsOf(subscriberId);
    expect(attempts[0]).toMatchObject({ succeeded: false, error: `host ${REBOUND_HOST} resolves to a loopback or private address (allow it in security.allowPrivateNetworks)` });
    // Refused for good: no retries until the deadline (the inline attempt, then one regular one).
    expect(attempts.length).toBeLessThanOrEqual(2);
    expect(internal.connections).toBe(0);
  });

  it('fails an attempt promptly when a subscriber streams an endless answer, and the worker goes on', async () => {
    let streams = 0;
    const endless = await newListener('127.0.0.1', (req, res) => {
      streams++;
      endlessAnswer(req, res);
    });
    const o = await createOrgWithToken(h);
    const { id: subscriberId } = await subscribe(o, `${endless.url}/events`);

    const result = await pushTo(o);

    expect(result.undelivered).toEqual([{ eventId: expect.any(String), subscriberId, reason: expect.any(String) }]);
    const attempts = await attemptsOf(subscriberId);
    expect(attempts.length).toBe(streams);
    for (const attempt of attempts) {
      expect(attempt).toMatchObject({ succeeded: false, error: 'answer longer than 65536 bytes' });
      expect(attempt.duration_ms).toBeLessThan(2_000);
    }
    // The same worker delivers the next event.
    const healthy = await newListener('127.0.0.1', (_, res) => res.writeHead(204).end());
    const other = await createOrgWithToken(h);
    await subscribe(other, `${healthy.url}/events`);
    expect(await pushTo(other)).toMatchObject({ delivered: 1, undelivered: [] });
  });

  it('closes the connection of a subscriber that answers 205 sent chunked and then stays silent, at the attempt\'s timeout', async () => {
    // Node reads a 205's body (it skips only 204's and 304's): one that never ended kept its socket
    // for ever after the attempt had succeeded, and 128 of them left every call to that host waiting.
    let closed!: () => void;
    const connectionClosed = new Promise<void>((resolve) => (closed = resolve));
    const silent = await newListener('127.0.0.1', (_, res) => {
      res.writeHead(205, { 'transfer-encoding': 'chunked' }).flushHeaders();
      res.once('close', closed);
    });
    const o = await createOrgWithToken(h);
    const { id: subscriberId } = await subscribe(o, `${silent.url}/events`);

    expect(await pushTo(o)).toMatchObject({ delivered: 1, undelivered: [] });
    expect(await attemptsOf(subscriberId)).toEqual([expect.objectContaining({ succeeded: true, status_code: 205 })]);
    await connectionClosed;
  }, 30_000);

  it("caps a Bitbucket pause of x-ratelimit-interval-seconds 400000: retried later, the worker's listing slot not held", async () => {
    const bitbucket = await startFakeBitbucket({ maxPageSize: 1 });
    closers.push(() => bitbucket.close());
    const token = `bb-${randomUUID()}`;
    bitbucket.addToken({ token, username: 'lister' });
    bitbucket.addProject({ key: 'PRJ', name: 'Project' });
    for (const slug of ['one', 'two']) bitbucket.addRepository({ projectKey: 'PRJ', slug });
    bitbucket.rateLimit({ tokens: 3, capacity: 60, fillRate: 1, intervalSeconds: 400_000 });
    const o = await createOrgWithToken(h);
    const bitbucketId = await seedConnection(h, { organizationId: o.org.id, provider: 'bitbucket', baseUrl: bitbucket.url, secret: token });
    const started = await h.request('POST', `/api/v1/orgs/${o.org.slug}/repositories/refresh`, { token: o.token });
    expect(started.status).toBe(202);
    const { workflowId: refreshId } = (await started.json()) as { workflowId: string };

    // The second page's call is not made: the listing fails as throttled, to be retried after the
    // pause, capped at 15 minutes.
    // The refresh lists the connection itself: the throttled listing is its activity.
    const listing = h.client.workflow.getHandle(refreshId);
    const pending = await until(async () => {
      const activity = (await listing.describe().catch(() => undefined))?.raw.pendingActivities?.[0];
      return activity?.lastFailure ? activity : undefined;
    }, 'the throttled listing attempt');
    expect(pending.lastFailure?.message).toBe('bitbucket answered 429: rate limit nearly spent: waiting 1200000 s before the next call');
    expect(pending.lastFailure?.applicationFailureInfo?.type).toBe('ProviderThrottled');
    const delaySeconds = Number(String(pending.nextAttemptScheduleTime?.seconds)) - Date.now() / 1000;
    expect(delaySeconds).toBeGreaterThan(14 * 60);
    expect(delaySeconds).toBeLessThanOrEqual(15 * 60 + 5);
    expect(bitbucket.server.calls.filter((c) => c.operation === 'listRepos').map((c) => c.status)).toEqual([200]);

    // With one listing call allowed per worker, another organization's listing still runs.
    const gitlab = await startFakeGitlab();
    closers.push(() => gitlab.close());
    const glToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: glToken, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.addProject({ pathWithNamespace: 'group/app' });
    const other = await createOrgWithToken(h);
    const gitlabId = await seedConnection(h, { organizationId: other.org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: glToken });
    const res = await h.request('POST', `/api/v1/orgs/${other.org.slug}/repositories/refresh`, { token: other.token });
    expect(res.status).toBe(202);
    await resultOf(h, ((await res.json()) as { workflowId: string }).workflowId);
    expect(await lastListing(h.db, gitlabId)).toMatchObject({ rowsWritten: 1 });

    await h.client.workflow.getHandle(refreshId).terminate('test over');
  });
});
