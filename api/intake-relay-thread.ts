import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Client, Connection } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import type { Config } from '../lib/config.ts';
import { createLogger, type Logger } from '../lib/logger.ts';
import type { ApiMetrics } from '../lib/metrics.ts';
import { clientConnectOptions } from '../lib/temporal/connection.ts';
import { startTracing } from '../lib/tracing.ts';
import { createIntakeSignal, startIntakeRelay, type IntakeSignal } from './intake-relay.ts';

/**
 * The API's intake relay on a thread of its own. Its starts (the Temporal client's gRPC and
 * protobuf, the relay's rounds and their garbage) cost about as much of the API's CPU as the
 * acknowledgements themselves, and on one event loop every acknowledgement arriving behind a
 * start's work waited for it; on a loaded machine the thread also waited for a core for it. Here
 * the acknowledging event loop only tells the thread of each receipt; the relay is the same code
 * (api/intake-relay.ts) with a Temporal connection of its own, and its metrics come back to the
 * API's registry.
 */
interface RelayThreadData {
  intakeRelayThread: true;
  temporal: Config['temporal'];
  address: string;
  databaseUrl: string;
  /** database.serverDeadlines: whether the relay's claims may SET LOCAL their idle deadline. */
  serverDeadlines?: boolean;
  tracing: Config['tracing'];
  logLevel: string;
  /** The relay's sweep without receipts (default, as the API runs it: api/intake-relay.ts's 5 s); tests lengthen it to see a receipt wake the thread. */
  sweepMs?: number;
  /** The API keeps metrics: the thread counts its starts and sends them over (without, it sends nothing). */
  metrics: boolean;
}

type FromThread = { kind: 'ready' } | { kind: 'intakeStarts'; starts: { outcome: 'started' | 'failed'; delaySeconds?: number }[] };
/** Receipts, as wall-clock ms (performance.timeOrigin + performance.now(): the threads' clocks differ), or the order to stop. */
type ToThread = { kind: 'stored'; at: number[] } | { kind: 'stop' };

/** How long a thread that ended unasked waits before the next one starts. */
const RESTART_MS = 1000;
/**
 * How often the thread sends the starts it counted to the API's registry. Sent as they came (the
 * relay begins each start on a turn of its own, so about one message per start), each message woke
 * the acknowledging thread: postMessage was 6 % of the relay thread's profile, and a message between
 * two threads costs them 70-90 µs of CPU together (measured on this 2-core machine at load ~20). A
 * scrape sees the starts at most this much later.
 */
const METRICS_FLUSH_MS = 1000;

export function startIntakeRelayThread(
  deps: { intake: IntakeSignal; logger: Logger; metrics?: Pick<ApiMetrics, 'intakeStart'> },
  settings: Omit<RelayThreadData, 'intakeRelayThread' | 'metrics'>,
): { ready: Promise<void>; stop(): Promise<void> } {
  // Built, this module is intake-relay-thread.js beside the API's main.js. From source (tsx, tests)
  // the thread registers tsx's loader (its ESM API) before importing it: on Node 20 a worker gets
  // neither its parent's loader nor one from `--import` in its execArgv.
  const entry = fileURLToPath(import.meta.url);
  const source = entry.endsWith('.ts')
    ? `import(${JSON.stringify(pathToFileURL(path.join(path.dirname(createRequire(import.meta.url).resolve('tsx/package.json')), 'dist/esm/api/index.mjs')).href)}).then(({ register }) => (register(), import(${JSON.stringify(pathToFileURL(entry).href)})));`
    : undefined;
  const data: RelayThreadData = { intakeRelayThread: true, ...settings, metrics: deps.metrics !== undefined };
  let stopping = false;
  let restart: NodeJS.Timeout | undefined;
  let isReady: () => void;
  const ready = new Promise<void>((resolve) => (isReady = resolve));
  const spawn = (): Worker => {
    const thread = source ? new Worker(source, { eval: true, workerData: data }) : new Worker(entry, { workerData: data });
    thread.on('message', (message: FromThread) => {
      if (message.kind === 'ready') isReady();
      else for (const { outcome, delaySeconds } of message.starts) deps.metrics?.intakeStart(outcome, delaySeconds);
    });
    thread.on('error', (error) => deps.logger.error({ err: error }, 'intake relay thread failed'));
    thread.on('exit', (code) => {
      if (stopping) return;
      deps.logger.error({ code, restartInMs: RESTART_MS }, 'intake relay thread ended; starting another');
      restart = setTimeout(() => (current = spawn()), RESTART_MS);
    });
    return thread;
  };
  let current = spawn();
  // Receipts go over once the event loop has finished its turn (the answers written), several in
  // one message: waking the thread for each one let it take the core from the acknowledgement
  // being answered (measured: postMessage was 4 % of the acknowledging thread's profile).
  let receipts: number[] = [];
  const send = () => {
    current.postMessage({ kind: 'stored', at: receipts } satisfies ToThread);
    receipts = [];
  };
  const unsubscribe = deps.intake.onStored((at) => {
    if (receipts.push(performance.timeOrigin + at) === 1) setImmediate(send);
  });
  return {
    /** The first thread's relay is running. */
    ready,
    async stop() {
      stopping = true;
      clearTimeout(restart);
      unsubscribe();
      const ended = new Promise<void>((resolve) => current.once('exit', () => resolve()));
      current.postMessage({ kind: 'stop' } satisfies ToThread);
      const cut = setTimeout(() => void current.terminate(), 30_000);
      await ended;
      clearTimeout(cut);
    },
  };
}

/** The thread: a Temporal connection, the relay, and the receipts its API's receivers report. */
async function runRelayThread(data: RelayThreadData) {
  const port = parentPort!;
  const logger = createLogger('api', data.logLevel);
  const tracing = startTracing(data.tracing, { serviceName: 'forgelink-api' });
  // Connected at the first start: an unreachable Temporal is the relay's to wait out (it backs off), not the thread's.
  const connection = Connection.lazy(clientConnectOptions(data.temporal, data.address));
  const temporal = new Client({ connection, namespace: data.temporal.namespace, ...(tracing.enabled ? { interceptors: { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } } : {}) });
  const intake = createIntakeSignal();
  // The starts' metrics go to the API's registry at most every METRICS_FLUSH_MS, and when the thread stops.
  let starts: { outcome: 'started' | 'failed'; delaySeconds?: number }[] = [];
  let flushing: NodeJS.Timeout | undefined;
  const flush = () => {
    clearTimeout(flushing);
    flushing = undefined;
    if (starts.length > 0) port.postMessage({ kind: 'intakeStarts', starts } satisfies FromThread);
    starts = [];
  };
  const count = (outcome: 'started' | 'failed', delaySeconds?: number) => {
    starts.push({ outcome, delaySeconds });
    flushing ??= setTimeout(flush, METRICS_FLUSH_MS);
  };
  const relay = startIntakeRelay(
    {
      intake,
      logger,
      temporal,
      taskQueue: data.temporal.taskQueue,
      ...(data.metrics ? { metrics: { intakeStart: count } } : {}),
    },
    { databaseUrl: data.databaseUrl, ...(data.serverDeadlines === false ? { serverDeadlines: false } : {}), ...(data.sweepMs !== undefined ? { sweepMs: data.sweepMs } : {}) },
  );
  port.postMessage({ kind: 'ready' } satisfies FromThread);
  port.on('message', (message: ToThread) => {
    if (message.kind === 'stored') {
      for (const at of message.at) intake.stored(at - performance.timeOrigin);
      return;
    }
    void (async () => {
      await relay.stop();
      flush();
      await connection.close();
      await tracing.shutdown();
      port.close();
    })();
  });
}

if (!isMainThread && (workerData as Partial<RelayThreadData> | undefined)?.intakeRelayThread) await runRelayThread(workerData as RelayThreadData);
