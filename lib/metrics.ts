import http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Provider } from './domain.ts';
import type { Logger } from './logger.ts';

/**
 * forgelink's own Prometheus metrics. Labels are bounded sets (provider, outcome, route template,
 * status): never an organization, repository, connection or delivery id, so a tenant cannot grow
 * the series count. Each process has its own registry (the API and the worker can share a process
 * in `npm start`).
 */

/**
 * How often the event-loop delay monitor of Node's process metrics wakes up, in ms. prom-client's
 * default, 10 ms, wakes an idle process 100 times a second: 8-10 ms of CPU a second on the shared
 * benchmark machine against 0.4 without it (README "Metrics overhead"), paid by every process
 * between its requests and tasks; at 100 ms, under 2. The `nodejs_eventloop_lag_{min,…,max}_seconds`
 * read the time between wake-ups, so an idle process now reads about 0.1 s; lag is the excess over it.
 */
export const EVENT_LOOP_MONITORING_PRECISION_MS = 100;

/**
 * prom-client's default metrics but `gc` (`nodejs_gc_duration_seconds`), whose PerformanceObserver
 * runs on every garbage collection: with it the API used 20-34 % more CPU per delivery with metrics
 * on than off in the metrics overhead benchmark, without it no more (README "Metrics overhead"). GC
 * pressure still shows in `nodejs_heap_*` and `process_cpu_seconds_total`. The modules are
 * prom-client's own (lib/metrics/<name>, as collectDefaultMetrics calls them); the unit test fails
 * if an upgrade moves them.
 */
const PROCESS_METRICS = collectDefaultMetrics.metricsList.filter((name) => name !== 'gc');
const requireFromHere = createRequire(import.meta.url);

/** Node's process metrics (`process_*`, `nodejs_*`) in `registry`: collectDefaultMetrics's modules, one by one, but PROCESS_METRICS's exclusion. */
function collectProcessMetrics(registry: Registry): void {
  for (const name of PROCESS_METRICS) {
    const collect = requireFromHere(`prom-client/lib/metrics/${name}`) as (register: Registry, config: { eventLoopMonitoringPrecision: number }) => void;
    collect(registry, { eventLoopMonitoringPrecision: EVENT_LOOP_MONITORING_PRECISION_MS });
  }
}

/** Latency buckets (seconds) for answers that should take milliseconds: a webhook acknowledgement, an API request. */
const FAST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Buckets for calls to the outside world (subscribers answer within 10 s or fail). */
const OUTBOUND_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15];

/**
 * How a webhook delivery was answered: what was acted on, or the error status. `unstorable` is a
 * signed delivery PostgreSQL refused to store for its content, answered 200 ignored (the provider
 * never sends it again, so it is lost): counted apart from `ignored` for operators to alert on.
 */
export type WebhookOutcome = 'accepted' | 'redelivery' | 'ignored' | 'unstorable' | 'ping' | '400' | '401' | '413' | 'backlogFull' | '503' | '500';

export interface ApiMetrics {
  readonly registry: Registry;
  /** One API request: `route` is the matched route template (never the raw path). */
  httpRequest(method: string, route: string, status: number, seconds: number): void;
  webhookDelivery(provider: Provider, outcome: WebhookOutcome, seconds: number): void;
  /** The intake relay's start of a stored delivery's run: how long after the acknowledgement it started, or that Temporal refused it. */
  intakeStart(outcome: 'started' | 'failed', delaySeconds?: number): void;
  /** Reports, at each scrape, the bytes of webhook bodies not verified yet that `held` says are held (api/webhooks/unverified-budget.ts). */
  unverifiedBodies(held: () => number): void;
  /** Reports, at each scrape, the bytes verified webhook deliveries in flight hold as `held` says (bodies and events' JSON; api/routes/webhooks.ts Caches.held). */
  verifiedDeliveries(held: () => number): void;
  /** Reports, at each scrape, the large webhook bodies `jobs` says are being read on threads and waiting for one (api/webhooks/body-thread.ts). */
  bodyThreadJobs(jobs: () => { running: number; waiting: number }): void;
}

/** What the metrics read of the intake table (lib/db/repositories/deliveries.ts intakeBacklog). */
export interface IntakeBacklog {
  pending: number;
  oldestReceivedAt?: Date;
  /** By the database's clock, when known. */
  oldestAgeSeconds?: number;
  /** Pending rows whose start failed at least once. */
  failing?: number;
}

export function createApiMetrics(options: { backlog?: () => Promise<IntakeBacklog>; processMetrics?: boolean; logger?: Logger } = {}): ApiMetrics {
  const registry = new Registry();
  if (options.processMetrics) collectProcessMetrics(registry);
  const requests = new Counter({
    name: 'forgelink_http_requests_total',
    help: 'API requests by method, matched route template and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const requestSeconds = new Histogram({
    name: 'forgelink_http_request_duration_seconds',
    help: 'API request latency by method and matched route template',
    labelNames: ['method', 'route'] as const,
    buckets: FAST_BUCKETS,
    registers: [registry],
  });
  const deliveries = new Counter({
    name: 'forgelink_webhook_deliveries_total',
    help: 'Webhook deliveries by provider and outcome (accepted, redelivery, ignored, unstorable: refused by PostgreSQL for its content and lost, ping, or the error status 400, 401, 413, 503)',
    labelNames: ['provider', 'outcome'] as const,
    registers: [registry],
  });
  const ackSeconds = new Histogram({
    name: 'forgelink_webhook_ack_duration_seconds',
    help: 'Time from a delivery reaching the receiver to its answer, by provider and outcome',
    labelNames: ['provider', 'outcome'] as const,
    buckets: FAST_BUCKETS,
    registers: [registry],
  });
  const intakeStarts = new Counter({
    name: 'forgelink_intake_starts_total',
    help: "The intake relay's starts of stored deliveries' event runs: started (or found already started), failed (Temporal refused or did not answer; the row waits)",
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const intakeDelay = new Histogram({
    name: 'forgelink_intake_start_delay_seconds',
    help: "Time from a delivery's acknowledgement to the start of its event run",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  if (options.backlog) {
    const backlog = options.backlog;
    // One query per scrape, shared by both gauges (every API replica reports the same table: use max(), not sum()).
    let reading: Promise<IntakeBacklog | undefined> | undefined;
    const read = () =>
      (reading ??= backlog()
        .catch((error: Error) => {
          options.logger?.warn({ reason: error.message }, 'metrics: could not read the intake backlog');
          return undefined;
        })
        .finally(() => setImmediate(() => (reading = undefined))));
    new Gauge({
      name: 'forgelink_intake_backlog_deliveries',
      help: 'Stored deliveries whose event run has not been started yet (the whole intake table; NaN when the database did not answer)',
      registers: [registry],
      async collect() {
        const value = await read();
        this.set(value ? value.pending : Number.NaN);
      },
    });
    new Gauge({
      name: 'forgelink_intake_oldest_pending_age_seconds',
      help: 'Age of the oldest stored delivery whose event run has not been started (0 when none waits)',
      registers: [registry],
      async collect() {
        const value = await read();
        this.set(!value ? Number.NaN : (value.oldestAgeSeconds ?? (value.oldestReceivedAt ? Math.max(0, (Date.now() - value.oldestReceivedAt.getTime()) / 1000) : 0)));
      },
    });
    new Gauge({
      name: 'forgelink_intake_failing_deliveries',
      help: 'Stored deliveries not started whose start failed at least once (Temporal unreachable or refusing them)',
      registers: [registry],
      async collect() {
        const value = await read();
        this.set(value ? (value.failing ?? 0) : Number.NaN);
      },
    });
  }
  // Every receiver's budget (one per app; a test may make several) summed in one gauge.
  const unverifiedHeld = new Set<() => number>();
  new Gauge({
    name: 'forgelink_webhook_unverified_body_bytes',
    help: 'Bytes of GitHub and Bitbucket webhook bodies held before their signature is verified (bounded by webhooks.unverifiedBodyBytes; beyond it deliveries are answered 503)',
    registers: [registry],
    collect() {
      let held = 0;
      for (const read of unverifiedHeld) held += read();
      this.set(held);
    },
  });
  const verifiedHeld = new Set<() => number>();
  new Gauge({
    name: 'forgelink_webhook_verified_delivery_bytes',
    help: "Bytes verified webhook deliveries in flight hold (their bodies and events' JSON, until answered; bounded by webhooks.verifiedDeliveryBytes and a connection's share; beyond it deliveries are answered 503)",
    registers: [registry],
    collect() {
      let held = 0;
      for (const read of verifiedHeld) held += read();
      this.set(held);
    },
  });
  const bodyJobs = new Set<() => { running: number; waiting: number }>();
  new Gauge({
    name: 'forgelink_webhook_body_thread_jobs',
    help: 'Large webhook bodies being read (verified, parsed, normalized) on the receivers\' threads, and waiting for one (bounded; beyond it deliveries are answered 503)',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      let [running, waiting] = [0, 0];
      for (const read of bodyJobs) {
        const jobs = read();
        running += jobs.running;
        waiting += jobs.waiting;
      }
      this.set({ state: 'running' }, running);
      this.set({ state: 'waiting' }, waiting);
    },
  });
  return {
    registry,
    unverifiedBodies(held) {
      unverifiedHeld.add(held);
    },
    verifiedDeliveries(held) {
      verifiedHeld.add(held);
    },
    bodyThreadJobs(jobs) {
      bodyJobs.add(jobs);
    },
    httpRequest(method, route, status, seconds) {
      requests.inc({ method, route, status: String(status) });
      requestSeconds.observe({ method, route }, seconds);
    },
    webhookDelivery(provider, outcome, seconds) {
      deliveries.inc({ provider, outcome });
      ackSeconds.observe({ provider, outcome }, seconds);
    },
    intakeStart(outcome, delaySeconds) {
      intakeStarts.inc({ outcome });
      if (delaySeconds !== undefined) intakeDelay.observe(delaySeconds);
    },
  };
}

export type HookOperation = 'ensure' | 'delete' | 'health_check';
/** name_taken: a deletion refused (nothing deleted) because the repository, known deleted, left its name to another (Bitbucket DC), whose hooks those are. */
export type HookOutcome = 'created' | 'adopted' | 'deleted' | 'gone' | 'name_taken' | 'healthy' | 'repaired' | 'failing' | 'failed';
/** not_admitted: an attempt the worker did not admit, into a workflow task (made at once as an activity) or an activity slot (made again after a timer). */
export type DispatchOutcome = 'delivered' | 'rejected' | 'unreachable' | 'refused' | 'skipped' | 'not_admitted';
/**
 * Why an (event, subscriber) pair was given up on: its last attempt was rejected or unreachable and
 * no further one fits before the dispatch deadline; its address is refused by policy (given up at
 * once); or it was still waiting for an attempt when the deadline passed (a queued fan-out's pairs
 * held back while their subscriber failed, or a pair whose attempt the worker refused an activity
 * slot with no time left to ask again).
 */
export type DispatchGiveUpReason = 'rejected' | 'unreachable' | 'refused' | 'deadline';
/**
 * Where a tenant-facing activity was refused a place (it made no call): an activity slot
 * (ActivityNotAdmitted: its run schedules it again after a timer) or a workflow task slot
 * (InlineNotAdmitted: its run makes it at once as a regular activity).
 */
export type NotAdmittedSlot = 'activity' | 'workflow_task';

export interface WorkerMetrics {
  readonly registry: Registry;
  hookOperation(provider: Provider, operation: HookOperation, outcome: HookOutcome): void;
  /** One listing page: fetched and written, answered 304, or fetched with nothing changed; with its API calls and rows written. */
  listingPage(provider: Provider, page: { apiCalls: number; notModified: boolean; unchanged: boolean; rowsWritten: number }): void;
  dispatchAttempt(outcome: DispatchOutcome, seconds?: number): void;
  /** Pairs given up on: counted once each, by the activity that records the final outcome. */
  dispatchGaveUp(reason: DispatchGiveUpReason, pairs?: number): void;
  /** A pause a provider's rate-limit headers asked for, taken inside a call. */
  rateLimitWait(provider: Provider, ms: number): void;
  /** A tenant-facing activity the worker refused a place (activities/not-admitted.ts), by its activity type: a handful of names, never an organization. */
  activityNotAdmitted(activityType: string, slot: NotAdmittedSlot): void;
}

export function createWorkerMetrics(options: { processMetrics?: boolean } = {}): WorkerMetrics {
  const registry = new Registry();
  if (options.processMetrics) collectProcessMetrics(registry);
  const hookOperations = new Counter({
    name: 'forgelink_hook_operations_total',
    help: 'Hook operations at the providers: ensure (created, adopted, failed), delete (deleted, gone, name_taken, failed), health_check (healthy, repaired, failing, failed)',
    labelNames: ['provider', 'operation', 'outcome'] as const,
    registers: [registry],
  });
  const pages = new Counter({
    name: 'forgelink_refresh_pages_total',
    help: 'Repository listing pages by provider and result: written, not_modified (an ETag 304), unchanged (fetched, as stored: nothing written)',
    labelNames: ['provider', 'result'] as const,
    registers: [registry],
  });
  const apiCalls = new Counter({ name: 'forgelink_refresh_api_calls_total', help: 'Provider API calls made by repository listings', labelNames: ['provider'] as const, registers: [registry] });
  const rows = new Counter({ name: 'forgelink_refresh_rows_written_total', help: 'Repository cache rows written by listings', labelNames: ['provider'] as const, registers: [registry] });
  const dispatches = new Counter({
    name: 'forgelink_dispatch_attempts_total',
    help: 'Attempts to send an event to a subscriber: delivered (2xx), rejected (another status), unreachable (network error, timeout, oversized answer), refused (address policy; not retried), skipped (subscriber or event gone, already delivered), not_admitted (an attempt the worker did not admit: a first attempt not run inside a workflow task, made at once as an activity, or an attempt as an activity not given an activity slot, made again after a timer)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const dispatchSeconds = new Histogram({
    name: 'forgelink_dispatch_attempt_duration_seconds',
    help: "A subscriber's answer time (or until the attempt failed)",
    buckets: OUTBOUND_BUCKETS,
    registers: [registry],
  });
  const gaveUp = new Counter({
    name: 'forgelink_dispatch_gave_up_total',
    help: 'Events given up on for a subscriber, once per (event, subscriber) pair: rejected or unreachable (the last attempt failed and no retry fits before the dispatch deadline), refused (address policy), deadline (still waiting for an attempt when the dispatch deadline passed)',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const notAdmitted = new Counter({
    name: 'forgelink_activities_not_admitted_total',
    help: "Tenant-facing activities the worker refused a place, so they made no call, by activity type and slot: activity (an activity slot: the organization's share was full; its run schedules the activity again after a timer), workflow_task (inside a workflow task: its run makes the call at once as a regular activity)",
    labelNames: ['activity', 'slot'] as const,
    registers: [registry],
  });
  const waits = new Counter({ name: 'forgelink_provider_rate_limit_waits_total', help: "Pauses taken inside provider calls because the provider's rate-limit budget ran low", labelNames: ['provider'] as const, registers: [registry] });
  const waitSeconds = new Counter({ name: 'forgelink_provider_rate_limit_wait_seconds_total', help: 'Time spent in those pauses', labelNames: ['provider'] as const, registers: [registry] });
  return {
    registry,
    hookOperation(provider, operation, outcome) {
      hookOperations.inc({ provider, operation, outcome });
    },
    listingPage(provider, page) {
      pages.inc({ provider, result: page.notModified ? 'not_modified' : page.unchanged ? 'unchanged' : 'written' });
      apiCalls.inc({ provider }, page.apiCalls);
      if (page.rowsWritten > 0) rows.inc({ provider }, page.rowsWritten);
    },
    dispatchAttempt(outcome, seconds) {
      dispatches.inc({ outcome });
      if (seconds !== undefined) dispatchSeconds.observe(seconds);
    },
    dispatchGaveUp(reason, pairs = 1) {
      if (pairs > 0) gaveUp.inc({ reason }, pairs);
    },
    rateLimitWait(provider, ms) {
      waits.inc({ provider });
      waitSeconds.inc({ provider }, ms / 1000);
    },
    activityNotAdmitted(activityType, slot) {
      notAdmitted.inc({ activity: activityType, slot });
    },
  };
}

/**
 * A small HTTP server answering GET `path` with the registry's metrics, followed by the text of
 * `extra` sources (the Temporal SDK's own exporter), so one scrape target covers the process.
 * `port` 0 picks a free port (see `url`).
 */
export async function startMetricsServer(options: {
  host: string;
  port: number;
  path: string;
  registry: Registry;
  extra?: () => Promise<string>;
  logger: Logger;
}): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || path !== options.path) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    void Promise.all([options.registry.metrics(), options.extra?.() ?? Promise.resolve('')]).then(
      ([own, extra]) => res.writeHead(200, { 'content-type': options.registry.contentType }).end(extra ? `${own}\n${extra}` : own),
      (error: Error) => {
        options.logger.error({ err: error }, 'metrics: could not collect');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('could not collect metrics\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}${options.path}`;
  return {
    url,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections()),
  };
}

/** The Temporal SDK exporter's text, for the worker's endpoint; empty (with a comment) when it does not answer. */
export function temporalSdkMetrics(url: string): () => Promise<string> {
  return async () => {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (!response.ok) return `# the Temporal SDK's exporter answered ${response.status}\n`;
      return await response.text();
    } catch (error) {
      return `# the Temporal SDK's exporter did not answer: ${(error as Error).message}\n`;
    }
  };
}
