import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { freeLoopbackPort } from '../../lib/net.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness, writeHarnessConfig } from '../support/harness.ts';
import { ROOT, startProcess, type StartedProcess } from '../support/processes.ts';

/** The parts of an OTLP/JSON ExportTraceServiceRequest the test reads (ids are hex strings in OTLP/JSON). */
interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: { key: string; value: OtlpValue }[];
}
interface ExportRequest {
  resourceSpans: { resource?: { attributes?: { key: string; value: OtlpValue }[] }; scopeSpans: { spans: OtlpSpan[] }[] }[];
}
/** A span as the collector received it, with its process's service.name. */
interface CollectedSpan extends OtlpSpan {
  service: string;
  attrs: Record<string, string | number | boolean | undefined>;
}

const SPAN_KIND_SERVER = 2;
const SPAN_KIND_CLIENT = 3;

const valueOf = (v: OtlpValue) => v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue;

/** A minimal OTLP/HTTP collector: takes POST /v1/traces (JSON, gzip or not) and keeps each request. */
async function startCollector(): Promise<{ url: string; requests: { headers: IncomingHttpHeaders; text: string }[]; spans(): CollectedSpan[]; close(): Promise<void> }> {
  const requests: { headers: IncomingHttpHeaders; text: string }[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') return void res.writeHead(404).end();
      const raw = Buffer.concat(chunks);
      requests.push({ headers: req.headers, text: (req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8') });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
    requests,
    spans: () =>
      requests.flatMap((r) => {
        expect(r.headers['content-type']).toBe('application/json');
        return (JSON.parse(r.text) as ExportRequest).resourceSpans.flatMap((rs) => {
          const service = String(valueOf(rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value ?? {}));
          return rs.scopeSpans.flatMap((ss) => ss.spans.map((s) => ({ ...s, service, attrs: Object.fromEntries((s.attributes ?? []).map((a) => [a.key, valueOf(a.value)])) })));
        });
      }),
    close: () => new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections()),
  };
}

/**
 * OTLP export as an operator configures it (tracing.* in the config file), from the API and the
 * worker running as their own processes, to a collector on loopback: one trace id joins the API's
 * receipt span, the relay's start, the worker's event run and activities, and the subscriber's
 * POST; no secret is in what is exported. Off (the default, even with an endpoint configured and
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set), nothing reaches the collector.
 */
describe('tracing exported over OTLP/HTTP by the API and worker processes', () => {
  let h: Harness;
  let collector: Awaited<ReturnType<typeof startCollector>>;
  let subscriber: FakeSubscriber;
  let dir: string;
  const started: StartedProcess[] = [];
  const collectorKey = `collector-key-${randomBytes(12).toString('hex')}`;

  beforeAll(async () => {
    [h, collector, subscriber] = await Promise.all([startHarness({ withoutWorker: true, withoutIntakeRelay: true }), startCollector(), startFakeSubscriber()]);
    dir = mkdtempSync(path.join(tmpdir(), 'forgelink-otlp-'));
  });
  afterAll(async () => {
    for (const p of started) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await h?.close();
    await Promise.all([collector?.close(), subscriber?.close()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /**
   * The API and the worker as their own processes on one config file, with a task queue of their
   * own (a relay starts only its own queue's deliveries); stop() ends both with SIGTERM, which
   * flushes their spans.
   */
  async function startStack(name: string, tracing: Record<string, unknown>) {
    const port = await freeLoopbackPort();
    const taskQueue = `${h.taskQueue}-${name}`;
    const configFile = writeHarnessConfig(h, path.join(dir, `${name}.yml`), {
      api: { host: '127.0.0.1', port },
      temporal: { address: inject('temporalAddress'), namespace: 'default', taskQueue },
      security: { allowHttpHosts: ['127.0.0.1'], allowPrivateNetworks: ['127.0.0.1'] },
      shutdown: { drainDelaySeconds: 0, requestTimeoutSeconds: 5, workerGraceSeconds: 5, workerForceSeconds: 10 },
      tracing,
    });
    // The standard OpenTelemetry variable points at the collector too: it must not turn tracing on.
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: collector.url };
    const [api, worker] = await Promise.all([
      startProcess(['--import', 'tsx', 'api/main.ts'], { cwd: ROOT, env, readyMessage: 'API listening' }),
      startProcess(['--import', 'tsx', 'worker/main.ts'], { cwd: ROOT, env, readyMessage: 'worker running' }),
    ]);
    started.push(api, worker);
    return {
      url: `http://127.0.0.1:${port}`,
      taskQueue,
      output: () => api.output() + worker.output(),
      async stop() {
        for (const p of [api, worker]) p.child.kill('SIGTERM');
        expect(await Promise.all([api.exited, worker.exited])).toEqual([0, 0]);
      },
    };
  }

  /** A signed GitLab push for a new organization's attached repository, sent to the API process, dispatched to its subscriber. */
  async function deliverPush(apiUrl: string) {
    const { org, token } = await createOrgWithToken(h);
    const registered = await h.request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token, body: { url: subscriber.url } });
    expect(registered.status).toBe(201);
    const subscriberSecret = ((await registered.json()) as { secret: string }).secret;
    subscriber.verifyWith(subscriberSecret);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `otlp/${randomUUID().slice(0, 8)}` };
    const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
    const d = delivery('gitlab', withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), { deliveryId: randomUUID(), secret: hook.secret, url: hook.url });
    const res = await fetch(`${apiUrl}${d.path}`, { method: 'POST', headers: d.headers, body: d.body });
    expect(res.status, await res.clone().text()).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    // The API process's relay starts the run after the acknowledgement: wait until Temporal knows it.
    const handle = h.client.workflow.getHandle(workflowId);
    await vi.waitFor(() => handle.describe(), { timeout: 120_000, interval: 250 });
    expect(await handle.result()).toMatchObject({ delivered: 1 });
    return { workflowId, secrets: [token, subscriberSecret, hook.secret] };
  }

  it('exports nothing when tracing is not enabled, even with an endpoint configured', { timeout: 240_000 }, async () => {
    const stack = await startStack('off', { endpoint: collector.url });
    try {
      await deliverPush(stack.url);
    } finally {
      await stack.stop();
    }
    expect(collector.requests).toHaveLength(0);
  });

  it('exports one trace from the receipt to the subscriber POST, with the configured headers and no secret', { timeout: 240_000 }, async () => {
    collector.requests.length = 0;
    const stack = await startStack('on', { enabled: true, endpoint: collector.url, headers: { authorization: `Bearer ${collectorKey}` } });
    let delivered: Awaited<ReturnType<typeof deliverPush>>;
    try {
      delivered = await deliverPush(stack.url);
    } finally {
      // SIGTERM flushes what each process's batch processor still holds.
      await stack.stop();
    }
    const { workflowId, secrets } = delivered;

    expect(collector.requests.length).toBeGreaterThan(0);
    expect(collector.requests.every((r) => r.headers.authorization === `Bearer ${collectorKey}`)).toBe(true);
    const spans = collector.spans();
    const receipt = spans.find((s) => s.service === 'forgelink-api' && s.kind === SPAN_KIND_SERVER && s.attrs['http.route'] === '/api/events-handler/v1/events/gitlab' && s.attrs['http.response.status_code'] === 202);
    expect(receipt, `the receipt span among ${spans.map((s) => `${s.service}:${s.name}`).join(', ')}`).toBeDefined();
    const trace = spans.filter((s) => s.traceId === receipt!.traceId);
    const post = trace.find((s) => s.service === 'forgelink-worker' && s.kind === SPAN_KIND_CLIENT && s.attrs['url.full'] === subscriber.url);
    expect(post, `the subscriber POST in the receipt's trace (spans in it: ${trace.map((s) => `${s.service}:${s.name}`).join(', ')})`).toMatchObject({ name: 'POST', attrs: { 'http.response.status_code': 204 } });

    // From the POST up to the receipt through parents the collector received from both processes.
    const byId = new Map(trace.map((s) => [s.spanId, s]));
    const chain: CollectedSpan[] = [];
    for (let span: CollectedSpan | undefined = post; span; span = span.parentSpanId ? byId.get(span.parentSpanId) : undefined) chain.push(span);
    expect(chain.at(-1)).toBe(receipt);
    const names = chain.map((s) => `${s.service}:${s.name}`).reverse();
    expect(names).toEqual(
      expect.arrayContaining([
        'forgelink-api:POST /api/events-handler/v1/events/gitlab',
        'forgelink-api:StartWorkflow:eventWorkflow',
        'forgelink-worker:RunWorkflow:eventWorkflow',
        expect.stringMatching(/^forgelink-worker:StartActivity:/),
        expect.stringMatching(/^forgelink-worker:RunActivity:/),
        'forgelink-worker:POST',
      ]),
    );
    expect(chain.find((s) => s.name === 'RunWorkflow:eventWorkflow')?.attrs).toMatchObject({ workflowId });

    // Nothing exported carries a secret: the organization's token, the subscriber's and the hook's
    // secrets, the admin token, the encryption key, the collector's own key.
    const exported = collector.requests.map((r) => r.text).join('\n');
    for (const secret of [...secrets, h.adminToken, h.keys.current.key.toString('base64'), collectorKey]) expect(exported).not.toContain(secret);
    expect(stack.output()).not.toContain(collectorKey);
  });
});
