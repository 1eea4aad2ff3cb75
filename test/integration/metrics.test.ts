import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startIntakeRelay, type IntakeRelay } from '../../api/intake-relay.ts';
import { intakeBacklog } from '../../lib/db/repositories/deliveries.ts';
import { createApiMetrics, type ApiMetrics } from '../../lib/metrics.ts';
import type { EventResult } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { createOrgWithToken, startHarness, type Harness, writeHarnessConfig } from '../support/harness.ts';

/** One sample of a Prometheus text exposition: the value of `name` with exactly these labels (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = Object.fromEntries([...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.keys(found).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => found[k] === v)) return Number(match[3]);
  }
  return 0;
}

/** Every label value in the exposition. */
function labelValues(text: string): string[] {
  return [...text.matchAll(/[a-zA-Z_][a-zA-Z0-9_]*="((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!);
}

/** The worker's dispatch deadline: a subscriber that keeps failing is given up on after attempts at 0, 1, 3 (and maybe 7) s. */
const DEADLINE_SECONDS = 8;

/**
 * The operator's view: after a scenario (connect, refresh, attach, a signed delivery dispatched to
 * a subscriber and given up on for another that answers 410 Gone to everything, its redelivery, refused and ignored deliveries, a second refresh), the API's
 * /metrics and the worker's metrics endpoint (a real `worker/main.ts` process, with the Temporal
 * SDK's exporter) show counters that moved by exactly what happened, labelled with no tenant's ids.
 */
describe('Prometheus metrics of the API and the worker', () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  let subscriber: FakeSubscriber;
  let gone: FakeSubscriber;
  let metrics: ApiMetrics;
  let app: Harness['app'];
  let relay: IntakeRelay | undefined;
  let worker: ChildProcess | undefined;
  let workerMetricsUrl: string;
  let dir: string;

  beforeAll(async () => {
    [gitlab, subscriber, gone] = await Promise.all([startFakeGitlab(), startFakeSubscriber(), startFakeSubscriber()]);
    gone.server.failNext('deliver', 1000, { status: 410, text: 'this endpoint is gone' });
    h = await startHarness({ withoutWorker: true, withoutIntakeRelay: true, maxBodyBytes: 64 * 1024 });
    metrics = createApiMetrics({ backlog: () => intakeBacklog(h.db) });
    app = h.appWith({ metrics, metricsPath: '/metrics' });
    dir = mkdtempSync(path.join(tmpdir(), 'forgelink-metrics-'));
    const configFile = writeHarnessConfig(h, path.join(dir, 'forgelink.yml'), {
      security: { allowHttpHosts: ['127.0.0.1', 'localhost'], allowPrivateNetworks: ['127.0.0.1'] },
      metrics: { worker: { port: 0 } },
      subscribers: { deliveryDeadlineSeconds: DEADLINE_SECONDS },
    });
    const main = fileURLToPath(new URL('../../worker/main.ts', import.meta.url));
    worker = spawn(process.execPath, ['--import', 'tsx', main], { env: { ...process.env, FORGELINK_CONFIG: configFile, LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'inherit'] });
    // 'worker running' (what a supervisor or a benchmark waits for) comes once its metrics are served too.
    workerMetricsUrl = await new Promise<string>((resolve, reject) => {
      worker!.once('exit', (code) => reject(new Error(`the worker exited with ${code} before serving metrics`)));
      let served: string | undefined;
      createInterface({ input: worker!.stdout! }).on('line', (line) => {
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === 'worker metrics served') served = entry.url!;
        if (entry.msg === 'worker running') (served ? resolve(served) : reject(new Error("the worker said 'worker running' before its metrics were served")));
      });
    });
  });
  afterAll(async () => {
    if (worker && worker.exitCode === null) {
      const exited = new Promise((resolve) => worker!.once('exit', resolve));
      worker.kill('SIGTERM');
      await exited;
    }
    await relay?.stop();
    await h?.close();
    await Promise.all([gitlab?.close(), subscriber?.close(), gone?.close()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const request = (method: string, url: string, options: { token?: string; body?: unknown } = {}) =>
    app.request(url, {
      method,
      headers: { ...(options.token ? { authorization: `Bearer ${options.token}` } : {}), ...(options.body ? { 'content-type': 'application/json' } : {}) },
      body: options.body ? JSON.stringify(options.body) : undefined,
    });
  const send = (d: Delivery) => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
  const scrapeApi = async () => {
    const res = await app.request('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    return res.text();
  };
  const scrapeWorker = async () => {
    const res = await fetch(workerMetricsUrl);
    expect(res.status).toBe(200);
    return res.text();
  };
  const result = async <T,>(workflowId: string): Promise<T> => h.client.workflow.getHandle(workflowId).result() as Promise<T>;

  it('count requests by route template, deliveries by outcome, the intake backlog, hook operations, listing pages and dispatch attempts', async () => {
    const { org, token } = await createOrgWithToken(h);
    const projects = [1, 2, 3].map((n) => gitlab.addProject({ id: randomInt(100_000_000, 2_000_000_000), pathWithNamespace: `${org.slug}/service-${n}` }));
    const pat = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: pat, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });

    // Connect.
    const connected = await request('POST', `/api/v1/orgs/${org.slug}/connections`, { token, body: { provider: 'gitlab', baseUrl: gitlab.url, token: pat } });
    expect(connected.status, await connected.clone().text()).toBe(202);
    const connection = (await connected.json()) as { id: string; workflowId: string };
    expect(await result(connection.workflowId)).toMatchObject({ status: 'active' });

    // Refresh: every project is listed and written.
    const refresh = async () => {
      const res = await request('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, { token });
      expect(res.status).toBe(202);
      await result(((await res.json()) as { workflowId: string }).workflowId);
    };
    await refresh();
    const listed = await request('GET', `/api/v1/orgs/${org.slug}/repositories`, { token });
    const { items } = (await listed.json()) as { items: { id: string; externalId: string; fullName: string }[] };
    expect(items).toHaveLength(3);
    const repository = items.find((r) => r.externalId === String(projects[0]!.id))!;

    // Attach: GitLab's hook set is one project hook.
    const attach = await request('PUT', `/api/v1/orgs/${org.slug}/repositories/${repository.id}/attachment`, { token });
    expect(attach.status).toBe(202);
    expect(await result(((await attach.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'attached' });

    const created = await request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token, body: { url: subscriber.url, kinds: ['push'] } });
    expect(created.status).toBe(201);
    subscriber.verifyWith(((await created.json()) as { secret: string }).secret);
    const goneCreated = await request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token, body: { url: gone.url, kinds: ['push'] } });
    expect(goneCreated.status).toBe(201);
    const goneId = ((await goneCreated.json()) as { id: string }).id;

    // A signed push, stored while no relay runs: the backlog shows it.
    const [hook] = gitlab.hooks(projects[0]!.id);
    const pushPayload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), { externalId: repository.externalId, fullName: repository.fullName });
    const push = delivery('gitlab', pushPayload, { deliveryId: randomUUID(), url: hook!.url, secret: hook!.token! });
    const accepted = await send(push);
    expect(accepted.status).toBe(202);
    const { workflowId } = (await accepted.json()) as { workflowId: string };
    const waiting = await scrapeApi();
    expect(sample(waiting, 'forgelink_intake_backlog_deliveries')).toBeGreaterThanOrEqual(1);
    expect(sample(waiting, 'forgelink_intake_oldest_pending_age_seconds')).toBeGreaterThanOrEqual(0);

    relay = startIntakeRelay({ ...h.apiDeps, metrics }, { databaseUrl: inject('databaseUrl'), track: true });
    await relay.whenStarted(workflowId);
    expect(await result<EventResult>(workflowId)).toEqual({
      recorded: 1,
      delivered: 1,
      undelivered: [{ eventId: expect.any(String), subscriberId: goneId, reason: expect.stringContaining('SubscriberRejected') }],
    });
    const goneAttempts = gone.server.calls.length;
    // The inline attempt and at least two attempts of the retrying activity, before the deadline.
    expect(goneAttempts).toBeGreaterThanOrEqual(3);

    // The same delivery again, a wrong token, a body that is not JSON, one over the size limit, and a push for a repository not attached.
    expect((await send(push)).status).toBe(202);
    expect((await send(delivery('gitlab', pushPayload, { deliveryId: randomUUID(), url: hook!.url, secret: 'not-the-hook-token' }))).status).toBe(401);
    expect((await send(delivery('gitlab', {}, { deliveryId: randomUUID(), url: hook!.url, secret: hook!.token!, rawBody: '{"object_kind": "push", ' }))).status).toBe(400);
    expect((await send(delivery('gitlab', {}, { deliveryId: randomUUID(), url: hook!.url, secret: hook!.token!, rawBody: JSON.stringify({ pad: 'x'.repeat(70 * 1024) }) }))).status).toBe(413);
    const elsewhere = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), { externalId: String(projects[1]!.id), fullName: projects[1]!.pathWithNamespace });
    expect((await send(delivery('gitlab', elsewhere, { deliveryId: randomUUID(), url: hook!.url, secret: hook!.token! }))).status).toBe(200);

    // A second refresh: nothing changed, nothing written.
    await refresh();

    const api = await scrapeApi();
    const outcomes = Object.fromEntries(['accepted', 'redelivery', 'ignored', '400', '401', '413', '503'].map((o) => [o, sample(api, 'forgelink_webhook_deliveries_total', { provider: 'gitlab', outcome: o })]));
    expect(outcomes).toEqual({ accepted: 1, redelivery: 1, ignored: 1, 400: 1, 401: 1, 413: 1, 503: 0 });
    expect(sample(api, 'forgelink_webhook_ack_duration_seconds_count', { provider: 'gitlab', outcome: 'accepted' })).toBe(1);
    expect(sample(api, 'forgelink_http_requests_total', { method: 'POST', route: '/api/events-handler/v1/events/gitlab', status: '202' })).toBe(2);
    expect(sample(api, 'forgelink_http_requests_total', { method: 'POST', route: '/api/v1/orgs/:org/connections', status: '202' })).toBe(1);
    expect(sample(api, 'forgelink_http_requests_total', { method: 'PUT', route: '/api/v1/orgs/:org/repositories/:id/attachment', status: '202' })).toBe(1);
    expect(sample(api, 'forgelink_http_requests_total', { method: 'POST', route: '/api/v1/orgs/:org/repositories/refresh', status: '202' })).toBe(2);
    expect(sample(api, 'forgelink_http_request_duration_seconds_count', { method: 'POST', route: '/api/v1/orgs/:org/connections' })).toBe(1);
    expect(sample(api, 'forgelink_intake_starts_total', { outcome: 'started' })).toBe(1);
    expect(sample(api, 'forgelink_intake_start_delay_seconds_count')).toBe(1);

    const worker = await scrapeWorker();
    expect(sample(worker, 'forgelink_hook_operations_total', { provider: 'gitlab', operation: 'ensure', outcome: 'created' })).toBe(1);
    expect(sample(worker, 'forgelink_hook_operations_total', { provider: 'gitlab', operation: 'ensure', outcome: 'failed' })).toBe(0);
    expect(sample(worker, 'forgelink_dispatch_attempts_total', { outcome: 'delivered' })).toBe(1);
    expect(sample(worker, 'forgelink_dispatch_attempts_total', { outcome: 'rejected' })).toBe(goneAttempts);
    expect(sample(worker, 'forgelink_dispatch_attempt_duration_seconds_count')).toBe(1 + goneAttempts);
    // Given up once for the pair, whatever the attempts before.
    expect(sample(worker, 'forgelink_dispatch_gave_up_total', { reason: 'rejected' })).toBe(1);
    for (const reason of ['unreachable', 'refused', 'deadline']) expect(sample(worker, 'forgelink_dispatch_gave_up_total', { reason })).toBe(0);
    // Every page the first refresh wrote, the second found unchanged; each page is one call; the three projects were written once.
    const written = sample(worker, 'forgelink_refresh_pages_total', { provider: 'gitlab', result: 'written' });
    expect(written).toBeGreaterThanOrEqual(1);
    expect(sample(worker, 'forgelink_refresh_pages_total', { provider: 'gitlab', result: 'unchanged' })).toBe(written);
    expect(sample(worker, 'forgelink_refresh_pages_total', { provider: 'gitlab', result: 'not_modified' })).toBe(0);
    expect(sample(worker, 'forgelink_refresh_api_calls_total', { provider: 'gitlab' })).toBe(2 * written);
    expect(sample(worker, 'forgelink_refresh_rows_written_total', { provider: 'gitlab' })).toBe(3);
    // The Temporal SDK's own metrics, through the same endpoint.
    expect(worker).toMatch(/^temporal_workflow_completed\{/m);
    expect(worker).toMatch(/^temporal_workflow_task_schedule_to_start_latency_bucket\{/m);
    expect(worker).toMatch(/^temporal_activity_execution_latency_count\{/m);
    // Node's process metrics (prom-client's defaults).
    expect(worker).toMatch(/^process_resident_memory_bytes /m);

    // No tenant's ids, names or paths in any label.
    for (const text of [api, worker]) {
      const values = labelValues(text).join('\n');
      for (const id of [org.id, org.slug, connection.id, repository.id, repository.externalId, push.deliveryId]) expect(values).not.toContain(id);
    }
  });

  it('labels a request no route matched as unmatched, never with its path', async () => {
    const before = sample(await scrapeApi(), 'forgelink_http_requests_total', { method: 'GET', route: 'unmatched', status: '404' });
    expect((await app.request(`/no/such/${randomUUID()}`)).status).toBe(404);
    const after = await scrapeApi();
    expect(sample(after, 'forgelink_http_requests_total', { method: 'GET', route: 'unmatched', status: '404' })).toBe(before + 1);
    expect(after).not.toContain('/no/such');
  });
});
