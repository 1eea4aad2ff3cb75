/**
 * The stack a benchmark runs against, as in production: a Temporal dev server of its own, a fresh
 * PostgreSQL database (on the server the tests use: TEST_DATABASE_URL, the one on 127.0.0.1:5432, or
 * an embedded one started for the run),
 * and the API and the worker as separate processes (`api/main.ts`, `worker/main.ts`) started
 * from a generated config file, so each one's peak RSS can be read.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { sql } from 'kysely';
import type { EncryptionKeys } from '../lib/crypto.ts';
import type { Provider } from '../lib/domain.ts';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { LISTING_CONCURRENCY_DEFAULTS, parseConfig, type WorkerSizing } from '../lib/config.ts';
import { createDb, type Db } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { ensureWebhookCredential } from '../lib/db/repositories/webhook-credentials.ts';
import { freeLoopbackPort } from '../lib/net.ts';
import { readDevServerSettings, startDevServer } from '../lib/temporal/dev-server.ts';
import { createCpuGroups, type CpuGroups } from './cpu-groups.ts';
import { testPostgres } from '../test/support/postgres.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The GitHub App's webhook secret (GitLab, Bitbucket and Azure DevOps hooks carry per-connection credentials). */
export interface BenchSecrets {
  github: string;
}

export interface BenchStack {
  apiUrl: string;
  adminToken: string;
  taskQueue: string;
  secrets: BenchSecrets;
  /** The stack's encryption keys, to make connections' webhook credentials as connect does. */
  keys: EncryptionKeys;
  /** The GitHub App the worker is configured with, for a fake GitHub that must accept its JWTs. */
  githubApp: { appId: string; privateKeyPem: string };
  /** The worker's repositoryCache listing concurrency. */
  listing: ListingConcurrencyOptions;
  /** The config file the API and the worker read, and the environment they run in (a benchmark's own process takes the same). */
  configFile: string;
  env: NodeJS.ProcessEnv;
  /** The worker's `worker` config keys (cache and slots): the defaults, or BENCH_WORKER_SIZING's JSON over them. */
  workerSizing: WorkerSizing;
  /** What the API and the worker run: the built JavaScript (`dist`) or the TypeScript sources under tsx. */
  runMode: BenchRunMode;
  /** Where the stack's Temporal server and database are, for processes a benchmark starts beside it. */
  temporalAddress: string;
  namespace: string;
  databaseUrl: string;
  /** The API process's id. */
  readonly apiPid: number | undefined;
  /**
   * What the API's acknowledgement trace (api/ack-trace.ts; on with BENCH_ACK_TRACE=1) recorded
   * since the last call: each call starts a new recording. Undefined when the trace is off.
   */
  ackTrace(): Promise<AckTraceRecording | undefined>;
  /** The worker process's id, to read its usage in /proc (another after restartWorker). */
  readonly workerPid: number | undefined;
  /** The worker's Node flags: the chart's `worker.nodeArgs`, or restartWorker's (BENCH_NODE_ARGS comes after them). */
  readonly workerNodeArgs: string[];
  /** Stops the worker and starts it again with `sizing` (the `worker` keys, over the defaults) and Node flags (default: the chart's). */
  restartWorker(sizing: Partial<WorkerSizing>, nodeArgs?: string[]): Promise<void>;
  db: Db;
  /** A Temporal client of the benchmark's own, for comparisons that bypass the API. */
  temporal: Client;
  /** Forgets the peaks so far (Linux clear_refs), so each benchmark reports its own. */
  resetPeakRss(): void;
  /** The API's and the worker's state so far: exited or not, errors logged. */
  services(): { api: ServiceState; worker: ServiceState };
  /** Peak resident set size of the API and worker processes, in MiB. */
  peakRssMiB(): { api: number; worker: number };
  /** CPU time (user + system) each process of the stack has used so far, in seconds. */
  cpuSeconds(): CpuSeconds;
  /**
   * Freezes (SIGSTOP) or resumes (SIGCONT) the worker: on a small machine it shows what the
   * acknowledgement path does when workflow processing does not compete with it for the CPU.
   */
  setWorkerPaused(paused: boolean): void;
  /**
   * The chart's deployment modelled on this machine's shared cores: there the API runs in pods of its
   * own, with CPU the worker and the Temporal server do not take. Here the API, the PostgreSQL
   * backends of the stack's database and this process (the load generator, and the client of the
   * bare starts, which stands where the API stood before the intake relay) get nice `nice` (-10: a
   * CFS weight 9.3 times the worker's and Temporal's, which stay at 0), every thread, applied again
   * every second for new threads and backends. Returns the way to stop reapplying it.
   */
  prioritizeApi(nice: number): () => void;
  /**
   * The deployment modelled with CPU groups (bench/cpu-groups.ts): the API, the worker, the Temporal
   * server and this process (the load generator, the subscriber, and the client of the bare starts)
   * each in a group of its own, of equal weight, as containers run; PostgreSQL is in its own already
   * (its service's session). A worker or variant started later goes to its part's group. Throws,
   * with the reason, where groups cannot be made. Returns the groups (to place a process the
   * benchmark starts, e.g. the floor's, and to report where each process ran).
   */
  separateCpuGroups(): CpuGroups;
  /** Freezes or resumes the API (its intake relay would otherwise start other API processes' stored deliveries). */
  setApiPaused(paused: boolean): void;
  /**
   * Another API and worker pair on the same Temporal server and database, with a port and task
   * queue of its own and `overrides` replacing whole top-level keys of the stack's config (e.g.
   * `metrics`): to compare configurations in the same run. Stopped with the stack.
   */
  startVariant(name: string, overrides: Record<string, unknown>): Promise<StackVariant>;
  stop(): Promise<void>;
}

/** The file api/ack-trace.ts writes: times are wall-clock milliseconds (performance.timeOrigin + performance.now()). */
export interface AckTraceRecording {
  from: number;
  to: number;
  eventLoopDelayMs: { p50: number; p99: number; max: number };
  deliveries: { deliveryId: string; arrived: number; insert?: number; acquired?: number; inserted?: number; answered: number }[];
  /** Each tick of a 10 ms timer: [when it ran, how late, the main thread's ms on a core and ms waiting for one since the tick before]. */
  ticks: [number, number, number, number][];
  /** [start, pause ms, kind]. */
  gcs: [number, number, number][];
}

export interface StackVariant {
  name: string;
  apiUrl: string;
  taskQueue: string;
  /** Freezes (SIGSTOP) or resumes (SIGCONT) both processes. */
  setPaused(paused: boolean): void;
  services(): { api: ServiceState; worker: ServiceState };
  peakRssMiB(): { api: number; worker: number };
  /** CPU time (user + system) each of its processes has used so far, in seconds. */
  cpuSeconds(): { api: number; worker: number };
  /** Its processes' ids (for a per-thread look at their CPU). */
  pids: { api: number | undefined; worker: number | undefined };
}

export interface CpuSeconds {
  api: number;
  worker: number;
  temporal: number;
  /** This process: the load generator. */
  bench: number;
  /**
   * The PostgreSQL backends of the stack's database, those already gone included (see
   * postgresCpuTracker), not the server's other processes: the server is shared with the tests
   * other work on the machine runs. WAL writer and checkpointer work is left out. Only meaningful as
   * a difference over a run.
   */
  postgres: number;
}

export interface ServiceProcess {
  child: ChildProcess;
  exited: Promise<void>;
  /** Marks the exit to come as asked for. */
  stopping(): void;
  state(): ServiceState;
}

/** What a service of the stack did so far: whether it exited, and what it logged at error level or above. */
export interface ServiceState {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Log lines at level error or fatal (pino 50, 60), and the last ones of them. */
  errorLines: number;
  lastErrors: string[];
  /** The end of its output. */
  tail: string;
}


function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** BENCH_NODE_ARGS, e.g. `--cpu-prof --cpu-prof-dir=/tmp/profiles`, to look inside the processes a benchmark starts. */
export function benchNodeArgs(): string[] {
  return process.env.BENCH_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
}

/**
 * What the benchmark's API and workers run: `dist` (the default) is what production runs — the
 * JavaScript `npm run build` writes and `node dist/<entry>.js` with the prebuilt workflow bundle,
 * NODE_ENV=production; `source` (BENCH_RUN=source) is the TypeScript sources under tsx (its loader
 * and source maps add memory and CPU production never pays).
 */
export type BenchRunMode = 'dist' | 'source';

export function benchRunMode(): BenchRunMode {
  const mode = process.env.BENCH_RUN ?? 'dist';
  if (mode !== 'dist' && mode !== 'source') throw new Error(`BENCH_RUN must be dist or source, not ${mode}`);
  return mode;
}

const DIST = path.join(ROOT, 'dist');

/** The chart's `worker.nodeArgs` (deploy/helm/forgelink/values.yaml): the benchmark's worker runs with the flags production's does. */
export function chartWorkerNodeArgs(): string[] {
  const values = fromYaml(readFileSync(path.join(ROOT, 'deploy/helm/forgelink/values.yaml'), 'utf8')) as { worker?: { nodeArgs?: string[] } };
  return values.worker?.nodeArgs ?? [];
}

/** BENCH_API_NODE_ARGS: Node flags for the benchmark's API alone (before BENCH_NODE_ARGS). */
export function benchApiNodeArgs(): string[] {
  return process.env.BENCH_API_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
}

/**
 * `npm run build` into dist/ (as the image does), plus the floor worker (bench/floor-worker.ts)
 * compiled beside it with its own workflow bundle, so the floor runs the way the worker does.
 */
export function buildForBench(log: (line: string) => void): void {
  const started = performance.now();
  const run = (args: string[]) => {
    const result = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`node ${args.join(' ')} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  };
  run(['--import', 'tsx', path.join(ROOT, 'scripts/build.ts'), DIST]);
  const tsconfig = path.join(DIST, 'tsconfig.bench.json');
  writeFileSync(tsconfig, JSON.stringify({ extends: path.join(ROOT, 'tsconfig.build.json'), compilerOptions: { rootDir: ROOT, outDir: DIST, sourceMap: false }, files: [path.join(ROOT, 'bench/floor-worker.ts'), path.join(ROOT, 'bench/ack-floor-server.ts')] }));
  run([createRequire(import.meta.url).resolve('typescript/bin/tsc'), '-p', tsconfig]);
  run(['--import', 'tsx', path.join(ROOT, 'worker/create-worker.ts'), path.join(DIST, 'bench', 'floor-workflow-bundle.js'), path.join(ROOT, 'bench/floor-workflows.ts'), 'untraced']);
  log(`built dist/ for the benchmark in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/**
 * Starts a service of the stack and resolves once it logs `readyMessage`: `entry` (a .ts path from
 * the repository root) as `node dist/<entry>.js` (NODE_ENV=production, as the image runs it) or,
 * in `source` mode, `node --import tsx <entry>`. `nodeArgs` come before BENCH_NODE_ARGS.
 */
export async function startService(
  name: string,
  entry: string,
  env: NodeJS.ProcessEnv,
  readyMessage: string,
  { mode = 'source', nodeArgs = [] }: { mode?: BenchRunMode; nodeArgs?: string[] } = {},
): Promise<ServiceProcess> {
  const args = [...nodeArgs, ...benchNodeArgs(), ...(mode === 'dist' ? [path.join(DIST, entry.replace(/\.ts$/, '.js'))] : ['--import', 'tsx', path.join(ROOT, entry)])];
  const child = spawn(process.execPath, args, { cwd: ROOT, env: mode === 'dist' ? { NODE_ENV: 'production', ...env } : env, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopping = false;
  let tail = '';
  let partial = '';
  let errorLines = 0;
  const lastErrors: string[] = [];
  // Read to the end (so logging never blocks the service), keeping the tail and the error lines.
  const onData = (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    tail = (tail + text).slice(-4000);
    const lines = (partial + text).split('\n');
    partial = lines.pop()!.slice(-100_000);
    for (const line of lines) {
      if (!/"level":(5|6)0\b/.test(line)) continue;
      errorLines++;
      lastErrors.push(line.slice(0, 2000));
      if (lastErrors.length > 10) lastErrors.shift();
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  await new Promise<void>((resolve, reject) => {
    const ready = () => tail.includes(readyMessage) && resolve();
    child.stdout!.on('data', ready);
    child.stderr!.on('data', ready);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code} before it was ready:\n${tail}`)));
  });
  // A service gone in the middle of a benchmark would only show as a drain that times out minutes later.
  child.once('exit', (code, signal) => {
    if (!stopping) console.error(`${name} (pid ${child.pid}) exited (${code ?? signal}) during the benchmark; its last output:\n${tail}`);
  });
  const state = (): ServiceState => ({ exitCode: child.exitCode, signal: child.signalCode, errorLines, lastErrors: [...lastErrors], tail });
  return { child, exited, state, stopping: () => (stopping = true) };
}

export async function stopService(service: ServiceProcess): Promise<void> {
  if (service.child.exitCode !== null) return;
  service.stopping();
  service.child.kill('SIGCONT');
  service.child.kill('SIGTERM');
  // A process started with --cpu-prof writes its profile only when it exits by itself: give it longer.
  const timeout = setTimeout(() => service.child.kill('SIGKILL'), benchNodeArgs().includes('--cpu-prof') ? 90_000 : 15_000);
  await service.exited;
  clearTimeout(timeout);
}

const CLOCK_TICKS_PER_SECOND = 100;

function cpuSecondsOf(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * CPU of the backends serving `database` (a backend's process title is `postgres: [<cluster>:]
 * <user> <database> <client> <state>`), those gone included: pools close idle connections, so each
 * backend's last reading is kept. Read every second, so a backend's last second before it exits
 * may be missed.
 */
function postgresCpuTracker(database: string) {
  const lastSeen = new Map<number, number>();
  let live: number[] = [];
  const read = () => {
    const seen: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'postgres') continue;
        const title = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').split(/\s+/);
        if (title[0] === 'postgres:' && title.slice(1, 4).includes(database)) {
          lastSeen.set(Number(entry), cpuSecondsOf(Number(entry)));
          seen.push(Number(entry));
        }
      } catch {
        // The process ended while we looked.
      }
    }
    live = seen;
    let total = 0;
    for (const seconds of lastSeen.values()) total += seconds;
    return total;
  };
  const timer = setInterval(read, 1000);
  timer.unref();
  return { read, stop: () => clearInterval(timer), livePids: () => live };
}

/** Sets the nice value of every thread of `pid` (Linux keeps one per thread; a new thread takes its creator's). */
export function reniceThreads(pid: number | undefined, nice: number): void {
  if (pid === undefined) return;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return; // gone
  }
  for (const tid of tids) {
    try {
      os.setPriority(Number(tid), nice);
    } catch {
      // The thread ended while we looked.
    }
  }
}

function peakRssMiB(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1]);
  return Math.round((kib / 1024) * 10) / 10;
}

/** A repository row in the benchmark's database, attached (as an attach leaves it): its id. */
export async function seedAttachedRepository(
  stack: Pick<BenchStack, 'db'>,
  row: { organizationId: string; connectionId: string; provider: Provider; externalId: string; fullName: string },
): Promise<string> {
  const { id } = await stack.db
    .insertInto('repositories')
    .values({ organization_id: row.organizationId, connection_id: row.connectionId, provider: row.provider, external_id: row.externalId, full_name: row.fullName })
    .returning('id')
    .executeTakeFirstOrThrow();
  await stack.db.insertInto('attachments').values({ organization_id: row.organizationId, repository_id: id, status: 'attached' }).execute();
  return id;
}

/** A tenant of the large-body benchmarks: an organization, its active connection with a webhook credential, one attached repository. */
export interface BenchTenant {
  connectionId: string;
  /** The connection's webhook secret, to sign its deliveries. */
  secret: string;
  repository: { externalId: string; fullName: string };
}

/** Seeds a BenchTenant of `provider` named `name` (its organization's slug starts with `slugPrefix`). */
export async function seedBenchTenant(stack: Pick<BenchStack, 'db' | 'keys' | 'apiUrl' | 'adminToken'>, provider: Provider, name: string, slugPrefix: string): Promise<BenchTenant> {
  const org = await callApi(stack, 'POST', '/api/v1/orgs', stack.adminToken, { slug: `${slugPrefix}-${name}-${Date.now()}`, name });
  const connection = await stack.db
    .insertInto('connections')
    .values({ organization_id: org.id, provider, base_url: `https://${provider}-${name}.bench.test`, status: 'active' })
    .returning('id')
    .executeTakeFirstOrThrow();
  const { secret } = await ensureWebhookCredential(stack.db, stack.keys, { id: connection.id, provider });
  const externalId = String(1_000_000 + Math.floor(Math.random() * 1_000_000));
  const fullName = provider === 'bitbucket' ? `${name.toUpperCase()}/repo` : `${name}/repo`;
  await seedAttachedRepository(stack, { organizationId: org.id, connectionId: connection.id, provider, externalId, fullName });
  return { connectionId: connection.id, secret, repository: { externalId, fullName } };
}

/** A JSON call to the bench stack's API with a bearer token; a non-2xx answer throws with its body. */
export async function callApi(stack: Pick<BenchStack, 'apiUrl'>, method: string, path: string, token: string, body?: unknown): Promise<Record<string, any>> {
  const res = await fetch(`${stack.apiUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json() as Promise<Record<string, any>>;
}

export interface ListingConcurrencyOptions {
  callsPerConnection: number;
  callsPerWorker: number;
}

/** The configuration defaults (lib/config.ts), unless a benchmark flag overrides them. */
export const DEFAULT_LISTING_CONCURRENCY: ListingConcurrencyOptions = LISTING_CONCURRENCY_DEFAULTS;

/** A fresh, migrated database on the server the tests use; dropped when the stack stops. */
async function freshDatabase(log: (line: string) => void, stops: (() => Promise<void>)[]): Promise<string> {
  const postgres = await testPostgres(log);
  stops.unshift(() => postgres.stop());
  log(`PostgreSQL from ${postgres.origin}`);
  const admin = createDb(postgres.adminUrl, { max: 1 });
  stops.unshift(() => admin.destroy());
  const database = `forgelink_bench_${Date.now()}`;
  await sql`create database ${sql.id(database)}`.execute(admin);
  stops.unshift(async () => {
    await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  });
  const databaseUrl = withDatabase(postgres.adminUrl, database);
  const db = createDb(databaseUrl, { max: 1 });
  await migrateToLatest(db).finally(() => db.destroy());
  log(`database ${database} migrated`);
  return databaseUrl;
}

async function startTemporal(log: (line: string) => void, stops: (() => Promise<void>)[]) {
  const settings = readDevServerSettings(path.join(ROOT, 'temporal-dev.yml'));
  const server = await startDevServer({ ...settings, port: undefined, uiPort: undefined, dbFilename: undefined }, log);
  stops.unshift(() => server.stop());
  log(`Temporal dev server at ${server.address}`);
  return server;
}

/** Where the stack runs; by default a Temporal dev server and a fresh database of its own. */
export interface StackPlacement {
  /** A running Temporal server (the test run's), instead of a dev server of the stack's own. */
  temporalAddress?: string;
  /** A migrated database (the test run's), instead of a fresh one. */
  databaseUrl?: string;
  /** The App's REST base URL (a fake GitHub); that fake must accept the stack's `githubApp`. */
  githubBaseUrl?: string;
  /** The GitHub App's id and key, e.g. a fake GitHub's; generated when absent. */
  githubApp?: { appId: string; privateKeyPem: string };
  /** What the API and the worker run (default `source`; `npm run bench` passes BENCH_RUN, default `dist`, and builds first). */
  run?: BenchRunMode;
  /** A bundle of the workflows made already (the test run's): a worker run from source loads it instead of bundling at start. */
  workflowBundlePath?: string;
}

export async function startBenchStack(
  log: (line: string) => void = console.log,
  listing: ListingConcurrencyOptions = DEFAULT_LISTING_CONCURRENCY,
  placement: StackPlacement = {},
): Promise<BenchStack> {
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const fn of stops.splice(0)) await fn().catch((error: Error) => log(`cleanup: ${error.message}`));
  };
  try {
    const databaseUrl = placement.databaseUrl ?? (await freshDatabase(log, stops));
    const postgresCpu = postgresCpuTracker(decodeURIComponent(new URL(databaseUrl).pathname.slice(1)));
    stops.push(async () => postgresCpu.stop());
    const db = createDb(databaseUrl, { max: 4 });
    stops.unshift(() => db.destroy());

    const server = placement.temporalAddress ? { address: placement.temporalAddress, namespace: 'default', pid: undefined } : await startTemporal(log, stops);

    const port = await freeLoopbackPort();
    const adminToken = `bench-admin-${randomBytes(24).toString('hex')}`;
    const taskQueue = `forgelink-bench-${randomBytes(4).toString('hex')}`;
    const secrets: BenchSecrets = { github: randomBytes(20).toString('hex') };
    const encryptionKey = randomBytes(32);
    const githubApp = placement.githubApp ?? {
      appId: '1',
      privateKeyPem: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    };
    const config = {
      publicUrl: `http://127.0.0.1:${port}`,
      api: { host: '127.0.0.1', port },
      database: { url: databaseUrl },
      temporal: { address: server.address, namespace: server.namespace, taskQueue },
      auth: { adminToken },
      encryption: { key: encryptionKey.toString('base64'), keyId: 'bench' },
      gitProviders: {
        github: { enabled: true, appId: githubApp.appId, privateKey: githubApp.privateKeyPem, webhookSecret: secrets.github, ...(placement.githubBaseUrl ? { baseUrl: placement.githubBaseUrl } : {}) },
        gitlab: { enabled: true },
        bitbucket: { enabled: true },
        azureDevOps: { enabled: true },
      },
      security: { allowHttpHosts: ['127.0.0.1'] },
      repositoryCache: listing,
      // BENCH_WORKER_SIZING, e.g. '{"maxCachedWorkflows":0}', to measure another worker sizing.
      worker: JSON.parse(process.env.BENCH_WORKER_SIZING || '{}') as Partial<WorkerSizing>,
    };
    const { worker: workerSizing } = parseConfig(config);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-bench-'));
    stops.push(async () => rmSync(dir, { recursive: true, force: true }));
    const configFile = path.join(dir, 'forgelink.yml');
    writeFileSync(configFile, toYaml(config), { mode: 0o600 });
    const env = {
      ...process.env,
      FORGELINK_CONFIG: configFile,
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
      ...(placement.workflowBundlePath ? { FORGELINK_WORKFLOW_BUNDLE: placement.workflowBundlePath } : {}),
    };

    const runMode = placement.run ?? 'source';
    // BENCH_BUILD=skip reuses the dist/ an earlier run built (only when the sources have not changed since).
    if (runMode === 'dist' && process.env.BENCH_BUILD !== 'skip') buildForBench(log);
    const startWorker = (nodeArgs: string[], workerEnv: NodeJS.ProcessEnv = env) => startService('worker', 'worker/main.ts', workerEnv, 'worker running', { mode: runMode, nodeArgs });
    let workerNodeArgs = chartWorkerNodeArgs();
    const ackTraceFile = path.join(dir, 'ack-trace.json');
    // BENCH_ACK_TRACE=1: the API records where each acknowledgement's time goes (api/ack-trace.ts, the
    // ingest results' ackBreakdown). Off by default: its 10 ms timer and per-delivery bookkeeping were
    // ~7 % of the API main thread's busy time in a profile (2026-12-07), time production does not spend.
    const ackTraceOn = process.env.BENCH_ACK_TRACE === '1';
    let [worker, api] = await Promise.all([
      startWorker(workerNodeArgs),
      startService('api', 'api/main.ts', ackTraceOn ? { ...env, FORGELINK_ACK_TRACE: ackTraceFile } : env, 'API listening', { mode: runMode, nodeArgs: benchApiNodeArgs() }),
    ]);
    stops.unshift(() => stopService(worker));
    stops.unshift(() => stopService(api));
    log(`API at http://127.0.0.1:${port} (pid ${api.child.pid}), worker pid ${worker.child.pid} (${runMode === 'dist' ? 'node dist/' : 'tsx, from source'})`);

    // Set by separateCpuGroups (the pods topology): processes started after it go to their part's group.
    let cpuGroups: CpuGroups | undefined;
    const startVariant = async (name: string, overrides: Record<string, unknown>): Promise<StackVariant> => {
      const variantPort = await freeLoopbackPort();
      const variantQueue = `${taskQueue}-${name}`;
      const variantConfig = { ...config, publicUrl: `http://127.0.0.1:${variantPort}`, api: { host: '127.0.0.1', port: variantPort }, temporal: { ...config.temporal, taskQueue: variantQueue }, ...overrides };
      parseConfig(variantConfig);
      const variantFile = path.join(dir, `forgelink-${name}.yml`);
      writeFileSync(variantFile, toYaml(variantConfig), { mode: 0o600 });
      const variantEnv = { ...env, FORGELINK_CONFIG: variantFile };
      const [variantWorker, variantApi] = await Promise.all([
        startService(`${name} worker`, 'worker/main.ts', variantEnv, 'worker running', { mode: runMode, nodeArgs: chartWorkerNodeArgs() }),
        startService(`${name} api`, 'api/main.ts', variantEnv, 'API listening', { mode: runMode }),
      ]);
      stops.unshift(() => stopService(variantWorker));
      stops.unshift(() => stopService(variantApi));
      cpuGroups?.place(variantApi.child.pid, 'api');
      cpuGroups?.place(variantWorker.child.pid, 'worker');
      log(`${name}: API at http://127.0.0.1:${variantPort} (pid ${variantApi.child.pid}), worker pid ${variantWorker.child.pid}, task queue ${variantQueue}`);
      return {
        name,
        apiUrl: `http://127.0.0.1:${variantPort}`,
        taskQueue: variantQueue,
        setPaused(paused) {
          for (const service of [variantApi, variantWorker]) service.child.kill(paused ? 'SIGSTOP' : 'SIGCONT');
        },
        services: () => ({ api: variantApi.state(), worker: variantWorker.state() }),
        peakRssMiB: () => ({ api: peakRssMiB(variantApi.child.pid), worker: peakRssMiB(variantWorker.child.pid) }),
        cpuSeconds: () => ({ api: cpuSecondsOf(variantApi.child.pid), worker: cpuSecondsOf(variantWorker.child.pid) }),
        pids: { api: variantApi.child.pid, worker: variantWorker.child.pid },
      };
    };

    const temporalPid = server.pid;
    const connection = await Connection.connect({ address: server.address });
    stops.unshift(() => connection.close());
    const temporal = new Client({ connection, namespace: server.namespace });

    const stack: BenchStack = {
      apiUrl: `http://127.0.0.1:${port}`,
      adminToken,
      taskQueue,
      secrets,
      keys: { current: { id: 'bench', key: encryptionKey } },
      githubApp,
      listing,
      configFile,
      env,
      workerSizing,
      runMode,
      temporalAddress: server.address,
      namespace: server.namespace,
      databaseUrl,
      get apiPid() {
        return api.child.pid;
      },
      async ackTrace() {
        if (!ackTraceOn) return undefined;
        rmSync(ackTraceFile, { force: true });
        api.child.kill('SIGUSR2');
        const asked = performance.now();
        for (;;) {
          try {
            return JSON.parse(readFileSync(ackTraceFile, 'utf8')) as AckTraceRecording;
          } catch {
            // Not written (or not whole) yet.
            if (performance.now() - asked > 30_000) throw new Error('the API wrote no acknowledgement trace within 30 s');
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        }
      },
      get workerPid() {
        return worker.child.pid;
      },
      get workerNodeArgs() {
        return workerNodeArgs;
      },
      async restartWorker(sizing, nodeArgs = chartWorkerNodeArgs()) {
        await stopService(worker);
        const sizedFile = path.join(dir, `forgelink-worker-${randomBytes(4).toString('hex')}.yml`);
        writeFileSync(sizedFile, toYaml({ ...config, worker: sizing }), { mode: 0o600 });
        worker = await startWorker(nodeArgs, { ...env, FORGELINK_CONFIG: sizedFile });
        cpuGroups?.place(worker.child.pid, 'worker');
        workerNodeArgs = nodeArgs;
        stack.workerSizing = parseConfig({ ...config, worker: sizing }).worker;
        log(`worker restarted (pid ${worker.child.pid}) with ${JSON.stringify(sizing)} ${nodeArgs.join(' ')}`);
      },
      db,
      temporal,
      resetPeakRss() {
        for (const pid of [api.child.pid, worker.child.pid]) {
          if (pid !== undefined) writeFileSync(`/proc/${pid}/clear_refs`, '5');
        }
      },
      peakRssMiB: () => ({ api: peakRssMiB(api.child.pid), worker: peakRssMiB(worker.child.pid) }),
      services: () => ({ api: api.state(), worker: worker.state() }),
      setWorkerPaused(paused) {
        worker.child.kill(paused ? 'SIGSTOP' : 'SIGCONT');
      },
      setApiPaused(paused) {
        api.child.kill(paused ? 'SIGSTOP' : 'SIGCONT');
      },
      separateCpuGroups() {
        if (cpuGroups) return cpuGroups;
        const groups = createCpuGroups(String(process.pid));
        cpuGroups = groups;
        stops.push(async () => groups.remove());
        groups.place(api.child.pid, 'api');
        groups.place(worker.child.pid, 'worker');
        groups.place(temporalPid, 'temporal');
        groups.place(process.pid, 'load');
        return groups;
      },
      prioritizeApi(nice) {
        const apply = () => {
          for (const pid of [api.child.pid, process.pid, ...postgresCpu.livePids()]) reniceThreads(pid, nice);
        };
        apply();
        const timer = setInterval(apply, 1000);
        return () => clearInterval(timer);
      },
      startVariant,
      cpuSeconds: () => ({
        api: cpuSecondsOf(api.child.pid),
        worker: cpuSecondsOf(worker.child.pid),
        temporal: cpuSecondsOf(temporalPid),
        bench: cpuSecondsOf(process.pid),
        postgres: postgresCpu.read(),
      }),
      stop,
    };
    return stack;
  } catch (error) {
    await stop();
    throw error;
  }
}
