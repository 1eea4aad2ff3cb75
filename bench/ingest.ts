/**
 * Webhook ingestion (issue #18, store first, start after): signed push deliveries across the four
 * providers, sent to the running API (real HTTP server), which acknowledges each once its row is in
 * the intake table while its intake relay starts the event workflows and the worker runs them
 * (record, dispatch to a subscriber). Beside them, in the same run on the same stack, the floor:
 * bare `client.workflow.start` calls of the same workflow with the same ids and events.
 * - Closed loop at a fixed concurrency, blocks in ABBA order: acceptance throughput (202s a second)
 *   and end-to-end events a second (first request to last event recorded and dispatched), each
 *   against the bare starts'.
 * - Open loop at fractions of the bare-start saturation rate (closed-loop latency is concurrency ÷
 *   throughput by construction): the acknowledgement latency a delivery sees at that rate, and the
 *   time from its acknowledgement to its run's start (the row's `started_at - received_at`), beside
 *   bare starts paced at the target rate.
 * The machine's load average is sampled through the run: other work on it weighs on every number.
 */
import { createHash, randomUUID } from 'node:crypto';
import { ensureWebhookCredential } from '../lib/db/repositories/webhook-credentials.ts';
import { WorkflowIdReusePolicy } from '@temporalio/client';
import http, { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { sql } from 'kysely';
import { normalizeWebhook } from '../api/webhooks/normalize.ts';
import { BODY_DIGEST_PROVIDERS } from '../api/routes/webhooks.ts';
import { PROVIDERS, type Provider } from '../lib/domain.ts';
import { SA_ORGANIZATION, SA_PROVIDER, SA_REPOSITORY, workflowIds, type EventInput } from '../workflows/contract.ts';
import { delivery, fixture, GITHUB_FIXTURE_INSTALLATION_ID, PUSH_FIXTURES, receiverPath, withRepository, type Delivery } from '../test/fakes/webhook-deliveries.ts';
import { latencySummary, runConcurrently, runPaced, waitUntil, type LoadResult } from './measure.ts';
import { freeLoopbackPort } from '../lib/net.ts';
import type { CpuGroups } from './cpu-groups.ts';
import { callApi, reniceThreads, seedAttachedRepository, startService, stopService, type BenchStack, type CpuSeconds, type StackVariant } from './stack.ts';
import { ackBreakdown, floorSummary, recordStalls, wallClockMs, type SendTimes } from './ack-breakdown.ts';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { summarizeDelivery } from '../workflows/contract.ts';
import { measureWorkerFloor, threadCpuSeconds, workerUsageReport } from './worker-usage.ts';

export interface IngestOptions {
  deliveries: number;
  concurrency: number;
  /** Attached repositories per provider the deliveries are spread over. */
  repositoriesPerProvider: number;
  warmup: number;
  /** Subscriber endpoints of the organization (0 or more); each push is dispatched to every one. */
  subscribers: number;
  /** 1: the metrics on/off comparison (observabilityOverhead) after the rest; 0: leave it out. */
  observability: number;
  /** 1: only the metrics on/off comparison (a shorter run; ingest.json then holds only it). */
  observabilityOnly: number;
  /**
   * 1: the chart's topology modelled (see TOPOLOGIES): the API, its database backends and the bare
   * starts' client at nice -10, the worker and the Temporal server at 0, for the whole run (its
   * bare-start floor included). Written to ingest-api-first.json.
   */
  apiFirst: number;
  /**
   * 1: the deployment modelled with CPU groups (see TOPOLOGIES.pods): the API, the worker, the Temporal
   * server and the load generator each in a CPU group of its own, of equal weight (needs a writable
   * cgroup cpu controller: root). Written to ingest-pods.json.
   */
  pods: number;
  /**
   * For iterating on the acknowledgement (not for the targets): a bare-start saturation rate given
   * (a/s), so the closed loop is skipped and the paced phases use it; 0 measures it.
   */
  saturation: number;
  /** 1: only the paced phases at the target rate (deliveries, bare starts, the floor); 0: every rate. */
  targetOnly: number;
  /** With --saturation: the deliveries' and the floor's phases at the target rate this many times more, alternating (`paced.againAtTarget`). */
  repeats: number;
  /** 1: only the closed loop's ABBA blocks (comparing builds by their end-to-end ratio and CPU per block); the paced phases and the floors are left out. */
  closedLoopOnly: number;
}

export const DEFAULT_INGEST_OPTIONS: IngestOptions = { deliveries: 4000, concurrency: 50, repositoriesPerProvider: 25, warmup: 400, subscribers: 1, observability: 1, observabilityOnly: 0, apiFirst: 0, pods: 0, saturation: 0, targetOnly: 0, repeats: 0, closedLoopOnly: 0 };

/** The API's (and its database backends' and the bare starts' client's) nice value with --apiFirst=1. */
const API_FIRST_NICE = -10;
const TOPOLOGIES = {
  shared: 'shared: the API, the worker, the Temporal server, PostgreSQL and the load generator on the same cores at the same priority (what the cores of this machine give; production does not run so)',
  pods: 'pods (--pods=1): the API, the worker, the Temporal server and the load generator (with the subscriber and the bare starts\' client) each in a Linux CPU group of its own, of equal weight, and PostgreSQL in its own (its service\'s session), as separate containers or services run: the kernel shares the cores between the groups first, then between a group\'s threads. The floor\'s minimal acknowledgement and the bare starts beside it go in the API\'s group, as the relay\'s starts do. Both the deliveries and the bare-start floor are measured in it',
  apiFirst: `modelled chart topology (--apiFirst=1): the API process, the PostgreSQL backends of the benchmark's database and the benchmark's own process (the load generator, and the Temporal client making the bare starts, which stands where the API stood) at nice ${API_FIRST_NICE}, the worker and the Temporal server at 0: in the chart the API runs in pods of its own, with CPU the worker and Temporal do not take. Both the deliveries and the bare-start floor are measured in it`,
};

/** Issue #18's targets: ack p99 at 80 % of the bare-start saturation rate; acceptance and end-to-end against bare starts. */
const TARGETS = { rateFraction: 0.8, p99AckMs: 20, acceptanceRatio: 2, endToEndRatio: 0.9 };
/** Issue #16's ingest target: ack p99 at half the bare-start saturation rate (its throughput target is #18's end to end). */
const HALF_RATE_TARGET = { rateFraction: 0.5, p99AckMs: 50 };
/** Issue #15: metrics (with tracing off) cost at most this share of the end-to-end throughput. */
const MAX_OBSERVABILITY_LOSS_PERCENT = 5;
/** How often the comparison scrapes the metrics-on processes, as a Prometheus would (its default is 1 minute; 10-30 s is common). */
const SCRAPE_INTERVAL_MS = 10_000;

export interface Repo {
  organizationId: string;
  repositoryId: string;
  externalId: string;
  fullName: string;
  /** Where and with what its hook delivers: the connection's URL and credential (GitHub: the App's secret). */
  hook: { connectionId?: string; url?: string; secret: string; basicAuthUser?: string };
}

/** An organization with a connection per provider, attached repositories and its subscriber endpoints. */
export async function seed(stack: BenchStack, options: Pick<IngestOptions, 'repositoriesPerProvider' | 'subscribers'>, subscriberUrl: string): Promise<Record<Provider, Repo[]>> {
  const slug = `bench-${Date.now()}`;
  const org = await callApi(stack, 'POST', '/api/v1/orgs', stack.adminToken, { slug, name: 'Benchmark' });
  for (let i = 0; i < options.subscribers; i++) await callApi(stack, 'POST', `/api/v1/orgs/${slug}/subscribers`, stack.adminToken, { url: subscriberUrl });
  const repos = {} as Record<Provider, Repo[]>;
  for (const provider of PROVIDERS) {
    // Written directly: connect and attach would call the providers, which this benchmark leaves out.
    const connection = await stack.db
      .insertInto('connections')
      // GitHub deliveries reach the connection bound to their installation (the recorded payloads' one).
      .values({ organization_id: org.id, provider, base_url: `https://${provider}.bench.test`, status: 'active', ...(provider === 'github' ? { external_key: GITHUB_FIXTURE_INSTALLATION_ID } : {}) })
      .returning('id')
      .executeTakeFirstOrThrow();
    repos[provider] = [];
    const credential = provider === 'github' ? undefined : await ensureWebhookCredential(stack.db, stack.keys, { id: connection.id, provider });
    const hook = credential
      ? { connectionId: connection.id, url: `${stack.apiUrl}${receiverPath(provider)}?c=${connection.id}`, secret: credential.secret, basicAuthUser: credential.basicAuthUser }
      : { secret: stack.secrets.github };
    for (let i = 0; i < options.repositoriesPerProvider; i++) {
      const externalId = provider === 'azure-devops' ? randomUUID() : String(1_000_000 + i);
      const fullName = provider === 'azure-devops' ? `Bench/repo-${i}` : provider === 'bitbucket' ? `BENCH/repo-${i}` : `bench/repo-${i}`;
      const id = await seedAttachedRepository(stack, { organizationId: org.id, connectionId: connection.id, provider, externalId, fullName });
      repos[provider].push({ organizationId: org.id, repositoryId: id, externalId, fullName, hook });
    }
  }
  return repos;
}

export interface Prepared {
  delivery: Delivery;
  repo: Repo;
}

export function prepare(stack: BenchStack, repos: Record<Provider, Repo[]>, count: number): Prepared[] {
  const payloads = Object.fromEntries(PROVIDERS.map((p) => [p, fixture(PUSH_FIXTURES[p])]));
  return Array.from({ length: count }, (_, i) => {
    const provider = PROVIDERS[i % PROVIDERS.length]!;
    const list = repos[provider];
    const repo = list[Math.floor(i / PROVIDERS.length) % list.length]!;
    // A body of its own: the same body again for a connection is a replay, recorded once.
    const { connectionId: _c, ...hook } = repo.hook;
    const d = delivery(provider, { ...withRepository(provider, payloads[provider]!, repo), bench_delivery: randomUUID() }, { deliveryId: randomUUID(), ...hook });
    return { delivery: d, repo };
  });
}

/** What the receiver would start for the delivery: the same workflow, id, input and search attributes. */
function startOptions(stack: BenchStack, p: Prepared) {
  const { provider, headers, body } = p.delivery;
  const events = normalizeWebhook(provider, headers, body);
  const { connectionId } = p.repo.hook;
  const input: EventInput = {
    provider,
    deliveryId: p.delivery.deliveryId,
    events,
    receivedAt: new Date().toISOString(),
    // As the receiver stores it: a GitHub delivery acts on the connections bound to its installation.
    ...(provider === 'github' ? { installationId: GITHUB_FIXTURE_INSTALLATION_ID } : {}),
    ...(connectionId ? { connectionId, ...(BODY_DIGEST_PROVIDERS.has(provider) ? { bodyDigest: createHash('sha256').update(body).digest('hex') } : {}) } : {}),
  };
  return {
    taskQueue: stack.taskQueue,
    workflowId: workflowIds.event(provider, p.delivery.deliveryId, connectionId),
    // As the receiver starts it (api/start-workflow.ts): a delivery id never runs twice.
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
    args: [input] as [EventInput],
    typedSearchAttributes: [
      { key: SA_PROVIDER, value: provider },
      { key: SA_ORGANIZATION, value: p.repo.organizationId },
      { key: SA_REPOSITORY, value: p.repo.repositoryId },
    ],
  };
}

const PACED_FRACTIONS = [0.2, 0.4, HALF_RATE_TARGET.rateFraction, 0.6, TARGETS.rateFraction];

const BLOCK_ORDER = ['bare', 'ingest', 'ingest', 'bare', 'bare', 'ingest', 'ingest', 'bare'] as const;

/** One kind of load (bare starts or deliveries) accumulated over its blocks. */
function emptyPhase() {
  const latenciesMs: number[] = [];
  const outcomes: unknown[] = [];
  let loadMs = 0;
  let drainMs = 0;
  const cpu: CpuSeconds = { api: 0, worker: 0, temporal: 0, bench: 0, postgres: 0 };
  return {
    latenciesMs,
    outcomes,
    add(result: LoadResult<unknown>, drainedMs: number, before: CpuSeconds, after: CpuSeconds) {
      latenciesMs.push(...result.latenciesMs);
      outcomes.push(...result.outcomes);
      loadMs += result.durationMs;
      drainMs += drainedMs;
      for (const key of Object.keys(cpu) as (keyof CpuSeconds)[]) cpu[key] += after[key] - before[key];
    },
    summary() {
      const round = (v: number) => Math.round(v * 10) / 10;
      const perThousand = (v: number) => round((v / latenciesMs.length) * 1000);
      return {
        count: latenciesMs.length,
        throughputPerSecond: round((latenciesMs.length / loadMs) * 1000),
        latencyMs: latencySummary(latenciesMs),
        durationMs: Math.round(loadMs),
        // From a block's first request to its last event recorded and dispatched to the subscriber.
        endToEndEventsPerSecond: round((latenciesMs.length / (loadMs + drainMs)) * 1000),
        // Everything one thousand of them cost, through recording and dispatch.
        cpuSecondsPerThousand: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, perThousand(v)])),
      };
    },
  };
}

async function count(stack: BenchStack) {
  const [events, delivered] = await Promise.all([
    stack.db.selectFrom('events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow(),
    stack.db.selectFrom('dispatch_attempts').select((eb) => eb.fn.countAll<string>().as('n')).where('succeeded', '=', true).executeTakeFirstOrThrow(),
  ]);
  return { events: Number(events.n), delivered: Number(delivered.n) };
}

/** CPU seconds of each thread of process `pid` (utime + stime, /proc/<pid>/task), by thread id. */
function threadsCpu(pid: number | undefined): Map<number, number> {
  const cpu = new Map<number, number>();
  if (pid === undefined) return cpu;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpu.set(Number(tid), (Number(fields[11]) + Number(fields[12])) / 100);
    } catch {
      // The thread ended while we looked.
    }
  }
  return cpu;
}

/**
 * The API's CPU in a block by thread: its main thread (the acknowledgements), its busiest other
 * thread (in a delivery block the intake relay's, api/intake-relay-thread.ts) and the rest (V8's
 * GC helpers, libuv's pool). Threads are all named "node", so the relay's is told by its CPU.
 */
function apiThreadSplit(pid: number | undefined, before: Map<number, number>, after: Map<number, number>) {
  const deltas = [...after].map(([tid, cpu]) => ({ tid, cpu: cpu - (before.get(tid) ?? 0) }));
  const main = deltas.find((d) => d.tid === pid)?.cpu ?? 0;
  const others = deltas.filter((d) => d.tid !== pid).sort((a, b) => b.cpu - a.cpu);
  const round = (v: number) => Math.round(v * 100) / 100;
  return {
    main: round(main),
    busiestOther: round(others[0]?.cpu ?? 0),
    rest: round(others.slice(1).reduce((a, d) => a + d.cpu, 0)),
    // Each other thread with 10 ms or more, by thread id (V8's and libuv's helpers start before the relay's thread).
    byThread: Object.fromEntries(others.filter((d) => d.cpu >= 0.01).sort((a, b) => a.tid - b.tid).map((d) => [d.tid, round(d.cpu)])),
  };
}

/** Milliseconds from `since` (epoch ms) to the relay's start of the last of `items`' runs. */
async function lastRelayStartMs(stack: BenchStack, items: Prepared[], since: number) {
  const ids = items.map((p) => p.delivery.deliveryId);
  const row = await stack.db
    .selectFrom('webhook_deliveries')
    .select(sql<number>`extract(epoch from max(started_at))::float8 * 1000`.as('last'))
    .where('delivery_id', '=', sql<string>`any(${ids}::text[])`)
    .executeTakeFirstOrThrow();
  return Math.round(row.last - since);
}

/** From each delivery's acknowledgement (its row written) to its run's start (the row marked started after the start returned). */
async function ackToStartMs(stack: BenchStack, items: Prepared[]) {
  const ids = items.map((p) => p.delivery.deliveryId);
  const rows = await stack.db
    .selectFrom('webhook_deliveries')
    .select(sql<number>`extract(epoch from started_at - received_at)::float8 * 1000`.as('ms'))
    .where('delivery_id', '=', sql<string>`any(${ids}::text[])`)
    .where('started_at', 'is not', null)
    .execute();
  return { ...latencySummary(rows.map((r) => r.ms)), started: rows.length, of: ids.length };
}

/** The 1-minute load average every 5 s while the benchmark runs: what else the machine was doing. */
function sampleLoad() {
  const samples: number[] = [os.loadavg()[0]!];
  const timer = setInterval(() => samples.push(os.loadavg()[0]!), 5000);
  return {
    stop() {
      clearInterval(timer);
      samples.push(os.loadavg()[0]!);
      const round = (v: number) => Math.round(v * 100) / 100;
      return { oneMinuteAtStart: round(samples[0]!), oneMinuteAtEnd: round(samples.at(-1)!), oneMinuteMax: round(Math.max(...samples)), oneMinuteMean: round(samples.reduce((a, b) => a + b, 0) / samples.length), samples: samples.length };
    },
  };
}

/** The benchmarks' subscriber: answers every event 204 and counts them. */
export async function startCountingSubscriber(): Promise<{ url: string; received(): number; close(): Promise<void> }> {
  let received = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      received++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`,
    received: () => received,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export async function runIngestBench(stack: BenchStack, options: IngestOptions = DEFAULT_INGEST_OPTIONS, log: (line: string) => void = console.log) {
  const load = sampleLoad();
  const subscriber = await startCountingSubscriber();
  const subscriberUrl = subscriber.url;
  if (options.apiFirst && options.pods) throw new Error('--apiFirst=1 and --pods=1 are two models of the same deployment: choose one');
  const cpuGroups = options.pods ? stack.separateCpuGroups() : undefined;
  if (cpuGroups) log(`topology: ${TOPOLOGIES.pods}; groups under ${cpuGroups.where}`);
  const topologyName = options.apiFirst ? 'apiFirst' : options.pods ? 'pods' : 'shared';
  // Where each process ran is read back at the end, so the file shows the groups took effect.
  const topologyReport = () => ({
    name: topologyName,
    description: TOPOLOGIES[topologyName],
    ...(options.apiFirst ? { apiNice: API_FIRST_NICE } : {}),
    ...(cpuGroups ? { cpuGroups: { where: cpuGroups.where, processes: cpuGroups.placements() } } : {}),
  });
  const stopPrioritizing = options.apiFirst ? stack.prioritizeApi(API_FIRST_NICE) : undefined;
  if (options.apiFirst) log(`topology: ${TOPOLOGIES.apiFirst}`);

  try {
    const repos = await seed(stack, options, subscriberUrl);
    // Every push delivery carries one ref change: one event, and one dispatch per subscriber.
    let expected = 0;
    const drain = (label: string) =>
      waitUntil(
        async () => {
          const c = await count(stack);
          return c.events >= expected && c.delivered >= expected * options.subscribers;
        },
        10 * 60_000,
        `${label}: ${expected} events recorded and dispatched`,
      );

    let resent = 0;
    // node:http, not fetch: the load generator shares the machine's 2 cores with the stack, and
    // fetch (undici, web streams) spent about as much CPU per delivery as the API's acknowledgement
    // itself, CPU a provider's sender would not take from forgelink. Bare starts are made with the
    // Temporal client, which is what a start costs whoever makes it.
    const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency });
    /** While a paced phase is traced: when each delivery went out and its answer was read. */
    let sendTimes: SendTimes | undefined;
    const send = (d: Delivery, apiUrl: string) =>
      new Promise<number>((resolve, reject) => {
        const sent = sendTimes && wallClockMs();
        const req = http.request(`${apiUrl}${d.path}`, { method: 'POST', headers: { ...d.headers, 'content-length': Buffer.byteLength(d.body) }, agent }, (res) => {
          res.resume();
          res.once('end', () => {
            if (sent !== undefined) sendTimes?.set(d.deliveryId, { sent, done: wallClockMs() });
            resolve(res.statusCode!);
          });
          res.on('error', reject);
        });
        // on, not once: a request can report a second error (the socket's hang-up after a reset),
        // and an 'error' with no listener ends the benchmark (seen: "socket hang up" in block 5).
        req.on('error', reject);
        req.end(d.body);
      });
    const postTo =
      (apiUrl: string) =>
      async ({ delivery: d }: Prepared): Promise<number> => {
        try {
          return await send(d, apiUrl);
        } catch (error) {
          // A kept-alive connection the API closed as the request went out (its 5 s idle timeout, on a
          // loaded machine): sent again, as a provider redelivers; the delivery id makes it one delivery.
          const code = (error as { code?: string }).code;
          if ((code !== 'ECONNRESET' && code !== 'EPIPE') || resent >= 100) throw error;
          resent++;
          return postTo(apiUrl)({ delivery: d } as Prepared);
        }
      };
    const post = postTo(stack.apiUrl);
    // Only an accepted delivery owes an event: the drain waits for those.
    const accepted = (outcomes: unknown[]) => outcomes.filter((status) => status === 202).length;
    const ingest = async (items: Prepared[], apiUrl = stack.apiUrl) => {
      // Connections left idle since the last phase (a drain, a paused pair) are past the API's 5 s
      // keep-alive timeout: closed here rather than reset under the first requests. Without this the
      // resends added up over the metrics comparison's blocks to the cap of 100 and ended the run.
      for (const sockets of Object.values(agent.freeSockets)) for (const socket of sockets ?? []) socket.destroy();
      const result = await runConcurrently(items, options.concurrency, apiUrl === stack.apiUrl ? post : postTo(apiUrl));
      expected += accepted(result.outcomes);
      return result;
    };

    if (options.observabilityOnly) {
      const observabilityOverhead = await measureObservabilityOverhead(stack, options, { prepare: (n) => prepare(stack, repos, n), ingest, drain, log });
      return {
        options,
        observabilityOverhead,
        subscriberReceived: subscriber.received(),
        resentAfterConnectionReset: resent,
        loadAverage: load.stop(),
        targets: { observabilityOverhead: observabilityOverhead.met },
      };
    }
    const bareStart = async (items: ReturnType<typeof startOptions>[]) => {
      const result = await runConcurrently(items, options.concurrency, async (start) => {
        await stack.temporal.workflow.start('eventWorkflow', start);
        return 'started';
      });
      expected += items.length;
      return result;
    };

    log(`warming up with ${options.warmup} deliveries and ${options.warmup} bare starts`);
    const warm = await ingest(prepare(stack, repos, options.warmup));
    if (accepted(warm.outcomes) !== options.warmup) throw new Error(`warm-up: not every delivery was accepted (statuses ${JSON.stringify(warm.outcomes.filter((o) => o !== 202).slice(0, 5))}…)`);
    await bareStart(prepare(stack, repos, options.warmup).map((p) => startOptions(stack, p)));
    await drain('warm-up');
    stack.resetPeakRss();
    const workerThreads = { before: threadCpuSeconds(stack.workerPid), events: -expected };

    /**
     * Bare starts against deliveries, closed loop, in blocks in ABBA order so a drift over the run
     * (the dev server's store grows, other load on the machine) weighs on both alike. Each block is
     * drained before the next: both kinds start from an idle worker.
     */
    const blockSize = Math.ceil(options.deliveries / (BLOCK_ORDER.length / 2));
    const phases = { bare: emptyPhase(), ingest: emptyPhase() };
    const ingestItems: Prepared[] = [];
    /** Each block's own numbers, in the order run: how much the ratio moves from block to block. */
    const blocks: { kind: 'bare' | 'ingest'; count: number; loadMs: number; lastStartMs: number; drainMs: number; endToEndEventsPerSecond: number; cpuSeconds: Record<string, number>; apiThreads: ReturnType<typeof apiThreadSplit> }[] = [];
    for (const [i, kind] of (options.saturation ? [] : BLOCK_ORDER).entries()) {
      const items = prepare(stack, repos, blockSize);
      log(`block ${i + 1}/${BLOCK_ORDER.length}: ${kind === 'bare' ? 'bare client.workflow.start' : 'signed deliveries to the API'} ×${blockSize} at concurrency ${options.concurrency}`);
      const starts = kind === 'bare' ? items.map((p) => startOptions(stack, p)) : [];
      const cpuBefore = stack.cpuSeconds();
      const apiThreadsBefore = threadsCpu(stack.apiPid);
      const blockStartedAt = Date.now();
      const result = kind === 'bare' ? await bareStart(starts) : await ingest(items);
      const drainMs = await drain(kind);
      const cpuAfter = stack.cpuSeconds();
      const apiThreads = apiThreadSplit(stack.apiPid, apiThreadsBefore, threadsCpu(stack.apiPid));
      phases[kind].add(result, drainMs, cpuBefore, cpuAfter);
      const blockCpu = Object.fromEntries(Object.entries(cpuAfter).map(([k, v]) => [k, Math.round((v - cpuBefore[k as keyof CpuSeconds]) * 100) / 100]));
      // For deliveries, when the relay had started the last of the block's runs (for bare starts that is the load's end).
      const lastStartMs = kind === 'bare' ? Math.round(result.durationMs) : await lastRelayStartMs(stack, items, blockStartedAt);
      const block = { kind, count: items.length, loadMs: Math.round(result.durationMs), lastStartMs, drainMs: Math.round(drainMs), endToEndEventsPerSecond: Math.round((items.length / (result.durationMs + drainMs)) * 10_000) / 10, cpuSeconds: blockCpu, apiThreads };
      blocks.push(block);
      log(`  ${kind}: load ${block.loadMs} ms, last run started at ${block.lastStartMs} ms, drain ${block.drainMs} ms, end to end ${block.endToEndEventsPerSecond}/s, CPU s ${JSON.stringify(blockCpu)}, API threads ${JSON.stringify(apiThreads)}`);
      if (kind === 'ingest') ingestItems.push(...items);
    }
    const { latencyMs: ackLatencyMs, ...acceptance } = phases.ingest.summary();
    const bare = phases.bare.summary();
    const statuses: Record<string, number> = {};
    for (const status of phases.ingest.outcomes) statuses[String(status)] = (statuses[String(status)] ?? 0) + 1;
    const ratio = (a: number, b: number) => Math.round((a / b) * 1000) / 1000;
    const closedLoop = options.saturation
      ? undefined
      : {
          ingestion: { ...acceptance, ackLatencyMs, ackToStartMs: await ackToStartMs(stack, ingestItems), statuses },
          bareStart: bare,
          acceptanceRatio: ratio(acceptance.throughputPerSecond, bare.throughputPerSecond),
          endToEndRatio: ratio(acceptance.endToEndEventsPerSecond, bare.endToEndEventsPerSecond),
          blocks,
        };
    if (closedLoop && options.closedLoopOnly) return { options, topology: topologyReport(), closedLoop, loadAverage: load.stop() };
    const saturation = options.saturation || bare.throughputPerSecond;

    /** Open loop at `rate`: what one delivery (or bare start) waits for at that rate. */
    const paced = async (label: string, rate: number, kind: 'ingest' | 'bare' = 'ingest') => {
      const items = prepare(stack, repos, Math.ceil(options.deliveries / 4));
      // The starts' options (the deliveries normalized) made before the clock runs, as the deliveries' bodies are.
      const starts = kind === 'bare' ? items.map((p) => startOptions(stack, p)) : [];
      log(`${label}: ${items.length} ${kind === 'bare' ? 'bare starts' : 'deliveries'} paced at ${rate.toFixed(0)}/s (at most ${options.concurrency} in flight)`);
      const cpuBefore = stack.cpuSeconds();
      // The deliveries' phases are traced (api/ack-trace.ts): the API's recording starts afresh here.
      if (kind === 'ingest') {
        await stack.ackTrace();
        sendTimes = new Map();
      }
      const generatorStalls = recordStalls();
      const result =
        kind === 'bare'
          ? await runPaced(starts, rate, options.concurrency, async (start) => {
              await stack.temporal.workflow.start('eventWorkflow', start);
              return 202;
            })
          : await runPaced(items, rate, options.concurrency, post);
      const trace = kind === 'ingest' ? await stack.ackTrace() : undefined;
      const stalls = generatorStalls.stop();
      const breakdown = trace ? ackBreakdown(items.map((p) => p.delivery.deliveryId), result.latenciesMs, sendTimes!, trace, stalls) : undefined;
      sendTimes = undefined;
      expected += accepted(result.outcomes);
      await drain(label);
      const cpuAfter = stack.cpuSeconds();
      return {
        // Each process's CPU per delivery (or bare start) through its run's recording and dispatch, from /proc: unlike the latencies, it hardly depends on the machine's load.
        cpuMicrosecondsPerDelivery: Object.fromEntries((Object.keys(cpuAfter) as (keyof CpuSeconds)[]).map((k) => [k, Math.round(((cpuAfter[k] - cpuBefore[k]) / items.length) * 1e6)])),
        targetRatePerSecond: Math.round(rate),
        achievedRatePerSecond: Math.round(result.throughputPerSecond),
        ackLatencyMs: latencySummary(result.latenciesMs),
        ...(kind === 'ingest' ? { ackToStartMs: await ackToStartMs(stack, items) } : {}),
        non202: result.outcomes.filter((status) => status !== 202).length,
        ...(breakdown ? { ackBreakdown: breakdown } : {}),
      };
    };

    const pacedDeliveries = [];
    for (const fraction of options.targetOnly ? [TARGETS.rateFraction] : PACED_FRACTIONS) {
      pacedDeliveries.push({ fractionOfBareStarts: fraction, ...(await paced(`deliveries paced at ${fraction * 100} % of bare starts`, saturation * fraction)) });
    }
    // The floor under the acknowledgement latency: bare starts alone, paced at the target rate.
    const pacedBareStarts = await paced(`bare starts paced at ${TARGETS.rateFraction * 100} % of bare starts`, saturation * TARGETS.rateFraction, 'bare');
    const atTarget = pacedDeliveries.find((p) => p.fractionOfBareStarts === TARGETS.rateFraction)!;
    const ackFloor = await measureAckFloor(stack, { rate: saturation * TARGETS.rateFraction, count: Math.ceil(options.deliveries / 4), concurrency: options.concurrency, nice: options.apiFirst ? API_FIRST_NICE : undefined, cpuGroups }, repos, log);
    expected += ackFloor.bareStartsBeside.started;
    await drain('the acknowledgement floor');
    const peakRssMiB = stack.peakRssMiB();
    if (!closedLoop) {
      // Iterating (--saturation): the paced phases only, the deliveries and the floor at the target rate again --repeats times.
      const againAtTarget = [];
      for (let i = 0; i < options.repeats; i++) {
        const again = await paced(`again (${i + 1}/${options.repeats}): deliveries at ${TARGETS.rateFraction * 100} %`, saturation * TARGETS.rateFraction);
        const floorAgain = await measureAckFloor(stack, { rate: saturation * TARGETS.rateFraction, count: Math.ceil(options.deliveries / 4), concurrency: options.concurrency, nice: options.apiFirst ? API_FIRST_NICE : undefined, cpuGroups }, repos, log);
        expected += floorAgain.bareStartsBeside.started;
        await drain('the acknowledgement floor');
        againAtTarget.push({
          deliveries: { ackLatencyMs: again.ackLatencyMs, mainThreadPerSecond: again.ackBreakdown?.api.mainThreadPerSecond, slowestMeanPartsMs: again.ackBreakdown?.slowestMeanPartsMs, apiCpuMicrosecondsPerDelivery: again.cpuMicrosecondsPerDelivery.api },
          floor: { ackLatencyMs: floorAgain.ackLatencyMs, insertMs: floorAgain.insertMs, mainThreadPerSecond: floorAgain.mainThreadPerSecond },
          loadAverage: Math.round(os.loadavg()[0]! * 100) / 100,
        });
      }
      return {
        options,
        topology: topologyReport(),
        paced: { bareStartSaturationPerSecond: saturation, deliveries: pacedDeliveries, bareStartsAtTarget: pacedBareStarts, ackFloorAtTarget: ackFloor, againAtTarget },
        peakRssMiB,
        loadAverage: load.stop(),
        measured: { ackP99MsAtTargetRate: { limit: TARGETS.p99AckMs, deliveries: atTarget.ackLatencyMs.p99, bareStartsFloor: pacedBareStarts.ackLatencyMs.p99, floor: ackFloor.ackLatencyMs.p99 } },
      };
    }
    // Absent with --targetOnly=1 (only the 80 % phase runs): the half-rate target is then not judged.
    const atHalf = pacedDeliveries.find((p) => p.fractionOfBareStarts === HALF_RATE_TARGET.rateFraction);
    const threads = { ...workerThreads, after: threadCpuSeconds(stack.workerPid), events: workerThreads.events + expected };
    // Issue #16: the worker's peak RSS and CPU per event against the SDK's floor, measured now with the same worker settings.
    const floor = await measureWorkerFloor(stack, { runs: Math.ceil(options.deliveries / 4), concurrency: options.concurrency }, log);
    const worker = workerUsageReport(stack, { peakRssMiB: peakRssMiB.worker, cpuSecondsPerThousandEvents: closedLoop.ingestion.cpuSecondsPerThousand.worker!, threads }, floor);
    const observabilityOverhead = options.observability ? await measureObservabilityOverhead(stack, options, { prepare: (n) => prepare(stack, repos, n), ingest, drain, log }) : undefined;

    return {
      options,
      topology: topologyReport(),
      closedLoop,
      // Open loop, the worker running; rates are fractions of the bare starts' closed-loop throughput (the saturation rate).
      paced: { bareStartSaturationPerSecond: saturation, deliveries: pacedDeliveries, bareStartsAtTarget: pacedBareStarts, ackFloorAtTarget: ackFloor },
      peakRssMiB,
      workerUsage: worker.workerUsage,
      ...(observabilityOverhead ? { observabilityOverhead } : {}),
      // Every event of the run (warm-up, bare starts, deliveries) the subscriber acknowledged.
      subscriberReceived: subscriber.received(),
      // Deliveries sent again after a connection reset (see post).
      resentAfterConnectionReset: resent,
      loadAverage: load.stop(),
      measured: {
        // floor: a minimal acknowledgement's p99 at that rate with bare starts at that rate beside it (measureAckFloor).
        ackP99MsAtTargetRate: {
          limit: TARGETS.p99AckMs,
          deliveries: atTarget.ackLatencyMs.p99,
          bareStartsFloor: pacedBareStarts.ackLatencyMs.p99,
          floor: ackFloor.ackLatencyMs.p99,
          deliveriesOverFloor: Math.round((atTarget.ackLatencyMs.p99 / ackFloor.ackLatencyMs.p99) * 100) / 100,
          floorWithinLimit: ackFloor.ackLatencyMs.p99 <= TARGETS.p99AckMs,
        },
        acceptanceRatio: { min: TARGETS.acceptanceRatio, value: closedLoop.acceptanceRatio },
        endToEndRatio: { min: TARGETS.endToEndRatio, value: closedLoop.endToEndRatio },
        ackToStartMsAtTargetRate: atTarget.ackToStartMs,
        // Issue #16: the same acknowledgement at half the bare-start rate.
        ...(atHalf ? { ackP99MsAtHalfRate: { limit: HALF_RATE_TARGET.p99AckMs, deliveries: atHalf.ackLatencyMs.p99 } } : {}),
      },
      // Issue #18's targets, as met or not in this run.
      targets: {
        ackP99AtTargetRate: atTarget.ackLatencyMs.p99 <= TARGETS.p99AckMs && atTarget.non202 === 0,
        acceptanceThroughput: closedLoop.acceptanceRatio >= TARGETS.acceptanceRatio,
        endToEnd: closedLoop.endToEndRatio >= TARGETS.endToEndRatio,
        every202: Object.keys(statuses).every((s) => s === '202') && pacedDeliveries.every((p) => p.non202 === 0),
        // Issue #16: ack p99 ≤ 50 ms at half the bare-start saturation rate.
        ...(atHalf ? { ackP99AtHalfRate: atHalf.ackLatencyMs.p99 <= HALF_RATE_TARGET.p99AckMs && atHalf.non202 === 0 } : {}),
        // Issue #16's worker targets (bench/worker-usage.ts).
        ...worker.targets,
        // Issue #15: end-to-end throughput with metrics on at most 5 % below metrics off (tracing off in both).
        ...(observabilityOverhead ? { observabilityOverhead: observabilityOverhead.met } : {}),
      },
      // Whether each floor measured in this run is itself within its target (where it is not, no
      // implementation could meet that target here): the minimal acknowledgement's p99 at the
      // target rate, and the worker's event-shaped floor.
      floorWithinTarget: {
        ackP99AtTargetRate: ackFloor.ackLatencyMs.p99 <= TARGETS.p99AckMs,
        ...worker.floorWithinTarget,
      },
    };
  } finally {
    stopPrioritizing?.();
    load.stop();
    await subscriber.close();
  }
}

const OVERHEAD_ORDER = ['on', 'off', 'off', 'on', 'on', 'off', 'off', 'on'] as const;

/**
 * Issue #15's "no more than 5 % throughput loss from metrics and tracing when tracing is off": two
 * API and worker pairs started side by side on the stack's Temporal server and database, alike but
 * for `metrics` (on: the API's /metrics and the worker's endpoint with the Temporal SDK's exporter,
 * both scraped every SCRAPE_INTERVAL_MS; off: metrics.enabled false), tracing off in both. Closed-loop
 * blocks of signed deliveries at the benchmark's concurrency, in ABBA order, each drained (recorded
 * and dispatched) before the next; only the pair under load runs (the other pairs, the stack's own
 * included, are frozen with SIGSTOP), and a pair just resumed takes a short unmeasured warm-up
 * first. Reports each block, each pair's totals, the on/off ratios of end-to-end and acceptance
 * throughput and of CPU per event, and the ratio within each adjacent on/off pair of blocks (the
 * spread a loaded machine adds).
 */
async function measureObservabilityOverhead(
  stack: BenchStack,
  options: IngestOptions,
  run: {
    prepare(count: number): Prepared[];
    ingest(items: Prepared[], apiUrl: string): Promise<LoadResult<unknown>>;
    drain(label: string): Promise<number>;
    log(line: string): void;
  },
) {
  const load = sampleLoad();
  const workerMetricsPort = await freeLoopbackPort();
  const variants: Record<'on' | 'off', StackVariant> = {} as Record<'on' | 'off', StackVariant>;
  [variants.on, variants.off] = await Promise.all([
    stack.startVariant('metrics-on', { metrics: { enabled: true, worker: { port: workerMetricsPort } }, tracing: { enabled: false } }),
    stack.startVariant('metrics-off', { metrics: { enabled: false }, tracing: { enabled: false } }),
  ]);
  const scrapeUrls = [`${variants.on.apiUrl}/metrics`, `http://127.0.0.1:${workerMetricsPort}/metrics`];
  let scrapes = 0;
  const scrape = async () => {
    await Promise.all(scrapeUrls.map(async (url) => (await fetch(url)).text()));
    scrapes++;
  };
  // The worker says 'worker running' (what startVariant waits for) once its metrics are served.
  await scrape();
  stack.setApiPaused(true);
  stack.setWorkerPaused(true);
  variants.off.setPaused(true);
  let active: 'on' | 'off' = 'on';
  const activate = async (kind: 'on' | 'off', warmup: number) => {
    if (kind !== active) {
      variants[active].setPaused(true);
      variants[kind].setPaused(false);
      active = kind;
    }
    await run.ingest(run.prepare(warmup), variants[kind].apiUrl);
    await run.drain(`metrics ${kind}: warm-up`);
  };
  try {
    run.log(`observability overhead: warming up each pair with ${options.warmup} deliveries`);
    await activate('on', options.warmup);
    await activate('off', options.warmup);
    const blockSize = Math.ceil(options.deliveries / (OVERHEAD_ORDER.length / 2));
    const blocks: { metrics: 'on' | 'off'; count: number; loadMs: number; drainMs: number; acceptancePerSecond: number; endToEndPerSecond: number; cpuSeconds: { api: number; worker: number }; threadCpuSeconds: { api: ThreadCpuSeconds; worker: ThreadCpuSeconds }; loadAverage: number }[] = [];
    for (const [i, kind] of OVERHEAD_ORDER.entries()) {
      // A pair just resumed reconnects and refills its caches: not measured.
      if (kind !== active) await activate(kind, options.concurrency);
      run.log(`observability overhead block ${i + 1}/${OVERHEAD_ORDER.length}: metrics ${kind}, ${blockSize} deliveries at concurrency ${options.concurrency}`);
      const variant = variants[kind];
      const timer = kind === 'on' ? setInterval(() => void scrape().catch(() => {}), SCRAPE_INTERVAL_MS) : undefined;
      const cpuBefore = variant.cpuSeconds();
      const threadsBefore = { api: threadCpuSeconds(variant.pids.api), worker: threadCpuSeconds(variant.pids.worker) };
      const result = await run.ingest(run.prepare(blockSize), variant.apiUrl);
      const drainMs = await run.drain(`metrics ${kind}`);
      clearInterval(timer);
      const cpuAfter = variant.cpuSeconds();
      const threadsAfter = { api: threadCpuSeconds(variant.pids.api), worker: threadCpuSeconds(variant.pids.worker) };
      const count = result.outcomes.filter((status) => status === 202).length;
      if (count !== blockSize) throw new Error(`observability overhead: ${blockSize - count} deliveries of block ${i + 1} not accepted`);
      blocks.push({
        metrics: kind,
        count,
        loadMs: Math.round(result.durationMs),
        drainMs: Math.round(drainMs),
        acceptancePerSecond: round1((count / result.durationMs) * 1000),
        endToEndPerSecond: round1((count / (result.durationMs + drainMs)) * 1000),
        cpuSeconds: { api: round2(cpuAfter.api - cpuBefore.api), worker: round2(cpuAfter.worker - cpuBefore.worker) },
        threadCpuSeconds: { api: threadDelta(threadsBefore.api, threadsAfter.api), worker: threadDelta(threadsBefore.worker, threadsAfter.worker) },
        loadAverage: round2(os.loadavg()[0]!),
      });
    }
    const totals = (kind: 'on' | 'off') => {
      const of = blocks.filter((b) => b.metrics === kind);
      const count = of.reduce((a, b) => a + b.count, 0);
      const loadMs = of.reduce((a, b) => a + b.loadMs, 0);
      const endMs = of.reduce((a, b) => a + b.loadMs + b.drainMs, 0);
      const cpu = of.reduce((a, b) => a + b.cpuSeconds.api + b.cpuSeconds.worker, 0);
      const perThousandOf = (seconds: number) => round1((seconds / count) * 1000);
      const threadsPerThousand = (process: 'api' | 'worker') =>
        Object.fromEntries(THREAD_KINDS.map((k) => [k, perThousandOf(of.reduce((a, b) => a + b.threadCpuSeconds[process][k], 0))])) as ThreadCpuSeconds;
      return {
        count,
        acceptancePerSecond: round1((count / loadMs) * 1000),
        endToEndPerSecond: round1((count / endMs) * 1000),
        endToEndPerSecondRange: [Math.min(...of.map((b) => b.endToEndPerSecond)), Math.max(...of.map((b) => b.endToEndPerSecond))],
        // API and worker together, per 1,000 deliveries (each one event, dispatched once).
        cpuSecondsPerThousand: round1((cpu / count) * 1000),
        // Each process's share, and by thread (bench/worker-usage.ts threadCpuSeconds): main (JavaScript), workflows (Node threads started later: the worker's workflow sandbox thread, the API's relay thread), sdkCore (the Temporal SDK's Rust core), helpers (V8's GC and compiler threads).
        cpuSecondsPerThousandByProcess: { api: perThousandOf(of.reduce((a, b) => a + b.cpuSeconds.api, 0)), worker: perThousandOf(of.reduce((a, b) => a + b.cpuSeconds.worker, 0)) },
        threadCpuSecondsPerThousand: { api: threadsPerThousand('api'), worker: threadsPerThousand('worker') },
        peakRssMiB: variants[kind].peakRssMiB(),
      };
    };
    const on = totals('on');
    const off = totals('off');
    const ratio = (a: number, b: number) => Math.round((a / b) * 1000) / 1000;
    const endToEndRatio = ratio(on.endToEndPerSecond, off.endToEndPerSecond);
    // Adjacent on/off blocks (1-2, 3-4, 5-6, 7-8): how far single comparisons wander on this machine.
    const pairRatios = [0, 2, 4, 6].map((i) => {
      const [a, b] = [blocks[i]!, blocks[i + 1]!];
      const [onBlock, offBlock] = a.metrics === 'on' ? [a, b] : [b, a];
      return ratio(onBlock.endToEndPerSecond, offBlock.endToEndPerSecond);
    });
    const throughputLossPercent = Math.round((1 - endToEndRatio) * 1000) / 10;
    return {
      method: `ABBA blocks of ${blockSize} signed deliveries at concurrency ${options.concurrency}, metrics on vs metrics.enabled false, tracing off in both; metrics-on processes scraped every ${SCRAPE_INTERVAL_MS / 1000} s`,
      order: [...OVERHEAD_ORDER],
      metricsOn: on,
      metricsOff: off,
      endToEndRatio,
      acceptanceRatio: ratio(on.acceptancePerSecond, off.acceptancePerSecond),
      cpuPerDeliveryRatio: ratio(on.cpuSecondsPerThousand, off.cpuSecondsPerThousand),
      cpuPerDeliveryRatioByProcess: {
        api: ratio(on.cpuSecondsPerThousandByProcess.api, off.cpuSecondsPerThousandByProcess.api),
        worker: ratio(on.cpuSecondsPerThousandByProcess.worker, off.cpuSecondsPerThousandByProcess.worker),
      },
      throughputLossPercent,
      pairEndToEndRatios: pairRatios,
      pairEndToEndRatioSpread: [Math.min(...pairRatios), Math.max(...pairRatios)],
      scrapes,
      blocks,
      loadAverage: load.stop(),
      limitPercent: MAX_OBSERVABILITY_LOSS_PERCENT,
      met: throughputLossPercent <= MAX_OBSERVABILITY_LOSS_PERCENT,
    };
  } finally {
    load.stop();
    variants.on.setPaused(true);
    variants.off.setPaused(true);
    stack.setApiPaused(false);
    stack.setWorkerPaused(false);
  }
}

type ThreadCpuSeconds = ReturnType<typeof threadCpuSeconds>;
const THREAD_KINDS = ['main', 'workflows', 'sdkCore', 'helpers'] as const satisfies readonly (keyof ThreadCpuSeconds)[];
/** By kind of thread, from the threads alive at each reading (one that ends between them takes its CPU out of its kind; the process totals keep it). */
const threadDelta = (before: ThreadCpuSeconds, after: ThreadCpuSeconds) => Object.fromEntries(THREAD_KINDS.map((k) => [k, round2(after[k] - before[k])])) as ThreadCpuSeconds;

const round1 = (v: number) => Math.round(v * 10) / 10;
const round2 = (v: number) => Math.round(v * 100) / 100;

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));

/**
 * The floor under the acknowledgement at `rate`: a minimal acknowledgement (bench/ack-floor-server.ts:
 * node:http, read the body, the receiver's INSERT into a scratch copy of the intake table with a pool
 * of its own, 202) paced at `rate` while bare `client.workflow.start`s run at `rate` from a process of
 * their own (bench/paced-starts.ts), so the worker and the Temporal server have what the deliveries'
 * phase gave them. Its p99 is what any acknowledgement that stores a row gets on this machine at
 * that load. With `nice` (--apiFirst=1) both processes get the API's priority; with `cpuGroups`
 * (--pods=1) both go in the API's group.
 */
async function measureAckFloor(stack: BenchStack, options: { rate: number; count: number; concurrency: number; nice: number | undefined; cpuGroups: CpuGroups | undefined }, repos: Record<Provider, Repo[]>, log: (line: string) => void) {
  const { rate, count, concurrency } = options;
  await sql`create table if not exists ack_floor_deliveries (like webhook_deliveries including all)`.execute(stack.db);
  // The row the receiver stores for each delivery, as the request's body: [provider, delivery id, connection, events, installation, instance, start].
  const rows = prepare(stack, repos, count).map((p) => {
    const { provider, headers, body, deliveryId } = p.delivery;
    const events = normalizeWebhook(provider, headers, body);
    const { connectionId } = p.repo.hook;
    const start = {
      taskQueue: stack.taskQueue,
      summary: summarizeDelivery(events),
      ...(connectionId ? { connectionId, ...(BODY_DIGEST_PROVIDERS.has(provider) ? { bodyDigest: createHash('sha256').update(body).digest('hex') } : {}) } : {}),
      organizationId: p.repo.organizationId,
      repositoryId: p.repo.repositoryId,
      targets: { organizationSlugs: ['bench'], repositoryNames: [p.repo.fullName], ...(connectionId ? { connectionId } : {}) },
    };
    return JSON.stringify([provider, deliveryId, connectionId ?? null, JSON.stringify(events), provider === 'github' ? GITHUB_FIXTURE_INSTALLATION_ID : null, null, JSON.stringify(start)]);
  });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-ack-floor-'));
  const startsFile = path.join(dir, 'starts.json');
  writeFileSync(startsFile, JSON.stringify(prepare(stack, repos, count).map((p) => startOptions(stack, p))));
  const port = await freeLoopbackPort();
  const server = await startService('ack floor', 'bench/ack-floor-server.ts', { ...stack.env, ACK_FLOOR_DATABASE_URL: stack.databaseUrl, ACK_FLOOR_PORT: String(port) }, 'ack floor listening', { mode: stack.runMode });
  const starter = spawn(process.execPath, ['--import', 'tsx', path.join(BENCH_DIR, 'paced-starts.ts'), stack.temporalAddress, stack.namespace, startsFile, String(rate), String(concurrency)], { stdio: ['pipe', 'pipe', 'inherit'] });
  options.cpuGroups?.place(server.child.pid, 'api');
  options.cpuGroups?.place(starter.pid, 'api');
  const lines = createInterface({ input: starter.stdout! });
  const nextLine = () => new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    starter.once('exit', (code) => reject(new Error(`paced-starts exited (${code})`)));
  });
  const renice = () => {
    if (options.nice !== undefined) for (const pid of [server.child.pid, starter.pid]) reniceThreads(pid, options.nice);
  };
  const prioritizing = setInterval(renice, 1000);
  try {
    if ((await nextLine()) !== 'ready') throw new Error('paced-starts did not say ready');
    renice();
    log(`acknowledgement floor: ${count} minimal acknowledgements paced at ${rate.toFixed(0)}/s beside ${count} bare starts at ${rate.toFixed(0)}/s (a process of their own)`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    const insertMs: number[] = new Array(count);
    const generatorLateMs: number[] = new Array(count);
    const started = performance.now();
    const schedBefore = mainThreadSchedstat(server.child.pid);
    const indexed = rows.map((body, index) => ({ body, index }));
    const startsDone = nextLine();
    starter.stdin!.write('go\n');
    const result = await runPaced(indexed, rate, concurrency, ({ body, index }) => {
      generatorLateMs[index] = performance.now() - (started + (index / rate) * 1000);
      return new Promise<number>((resolve, reject) => {
        const req = http.request(`http://127.0.0.1:${port}/`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, agent }, (res) => {
          insertMs[index] = Number(res.headers['x-insert-ms']);
          res.resume();
          res.once('end', () => resolve(res.statusCode!));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end(body);
      });
    });
    const schedAfter = mainThreadSchedstat(server.child.pid);
    const seconds = (performance.now() - started) / 1000;
    const starts = JSON.parse(await startsDone) as { latenciesMs: number[]; throughputPerSecond: number; failed: number };
    agent.destroy();
    return {
      targetRatePerSecond: Math.round(rate),
      achievedRatePerSecond: Math.round(result.throughputPerSecond),
      ...floorSummary(result.latenciesMs, insertMs, generatorLateMs),
      non202: result.outcomes.filter((status) => status !== 202).length,
      // The floor server's one thread, per second of the phase: ms on a core, ms runnable but waiting for one (compare the API's ackBreakdown.api.mainThreadPerSecond).
      mainThreadPerSecond: { onCpuMs: Math.round((schedAfter.onCpuMs - schedBefore.onCpuMs) / seconds), waitingForCoreMs: Math.round((schedAfter.waitingMs - schedBefore.waitingMs) / seconds) },
      bareStartsBeside: { started: count - starts.failed, failed: starts.failed, achievedRatePerSecond: Math.round(starts.throughputPerSecond), latencyMs: latencySummary(starts.latenciesMs) },
    };
  } finally {
    clearInterval(prioritizing);
    starter.kill();
    await stopService(server);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A process's main thread's time on a core and waiting for one so far, in ms (Linux schedstat). */
function mainThreadSchedstat(pid: number | undefined): { onCpuMs: number; waitingMs: number } {
  try {
    const [onCpu, waiting] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ');
    return { onCpuMs: Number(onCpu) / 1e6, waitingMs: Number(waiting) / 1e6 };
  } catch {
    return { onCpuMs: Number.NaN, waitingMs: Number.NaN };
  }
}
