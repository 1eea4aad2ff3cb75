/**
 * The stack a benchmark runs against, as in production: a Temporal dev server of its own, a fresh
 * PostgreSQL database (on the server the tests use: TEST_DATABASE_URL, the one on 127.0.0.1:5432, or
 * an embedded one started for the run),
 * and the API and the worker as separate processes (`api/main.ts`, `worker/main.ts`) started
 * from a generated config file, so each one's peak RSS can be read.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { sql } from 'kysely';
import { stringify as toYaml } from 'yaml';
import { LISTING_CONCURRENCY_DEFAULTS } from '../lib/config.ts';
import { createDb, type Db } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { readDevServerSettings, startDevServer } from '../lib/temporal/dev-server.ts';
import { testPostgres } from '../test/support/postgres.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface BenchSecrets {
  github: string;
  gitlab: string;
  bitbucket: string;
  azureDevOps: { user: string; pass: string };
}

export interface BenchStack {
  apiUrl: string;
  adminToken: string;
  taskQueue: string;
  secrets: BenchSecrets;
  /** The GitHub App the worker is configured with, for a fake GitHub that must accept its JWTs. */
  githubApp: { appId: string; privateKeyPem: string };
  /** The worker's repositoryCache listing concurrency. */
  listing: ListingConcurrencyOptions;
  db: Db;
  /** A Temporal client of the benchmark's own, for comparisons that bypass the API. */
  temporal: Client;
  /** Forgets the peaks so far (Linux clear_refs), so each benchmark reports its own. */
  resetPeakRss(): void;
  /** Peak resident set size of the API and worker processes, in MiB. */
  peakRssMiB(): { api: number; worker: number };
  /** CPU time (user + system) each process of the stack has used so far, in seconds. */
  cpuSeconds(): CpuSeconds;
  /**
   * Freezes (SIGSTOP) or resumes (SIGCONT) the worker: on a small machine it shows what the
   * acknowledgement path does when workflow processing does not compete with it for the CPU.
   */
  setWorkerPaused(paused: boolean): void;
  stop(): Promise<void>;
}

export interface CpuSeconds {
  api: number;
  worker: number;
  temporal: number;
  /** This process: the load generator. */
  bench: number;
  /**
   * Every PostgreSQL process on the machine (server and backends alive now: the stack's pools keep
   * theirs open). Only meaningful as a difference over a run, on a machine with nothing else on it.
   */
  postgres: number;
}

interface ServiceProcess {
  child: ChildProcess;
  exited: Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
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

/** Starts `node --import tsx <entry>` and resolves once it logs `readyMessage`. */
async function startService(name: string, entry: string, env: NodeJS.ProcessEnv, readyMessage: string): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [...benchNodeArgs(), '--import', 'tsx', path.join(ROOT, entry)], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let tail = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      tail = (tail + chunk.toString('utf8')).slice(-4000);
      if (tail.includes(readyMessage)) resolve();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code} before it was ready:\n${tail}`)));
  });
  // Keep draining the pipes so logging never blocks the service.
  child.stdout!.resume();
  child.stderr!.resume();
  return { child, exited };
}

async function stopService(service: ServiceProcess): Promise<void> {
  if (service.child.exitCode !== null) return;
  service.child.kill('SIGCONT');
  service.child.kill('SIGTERM');
  const timeout = setTimeout(() => service.child.kill('SIGKILL'), 15_000);
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

function postgresCpuSeconds(): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'postgres') total += cpuSecondsOf(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return total;
}

function peakRssMiB(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1]);
  return Math.round((kib / 1024) * 10) / 10;
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

export async function startBenchStack(log: (line: string) => void = console.log, listing: ListingConcurrencyOptions = DEFAULT_LISTING_CONCURRENCY): Promise<BenchStack> {
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const fn of stops.splice(0)) await fn().catch((error: Error) => log(`cleanup: ${error.message}`));
  };
  try {
    const postgres = await testPostgres(log);
    stops.unshift(() => postgres.stop());
    const ADMIN_URL = postgres.adminUrl;
    log(`PostgreSQL from ${postgres.origin}`);
    const admin = createDb(ADMIN_URL, { max: 1 });
    stops.unshift(() => admin.destroy());
    const database = `forgelink_bench_${Date.now()}`;
    await sql`create database ${sql.id(database)}`.execute(admin);
    stops.unshift(async () => {
      await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    });
    const databaseUrl = withDatabase(ADMIN_URL, database);
    const db = createDb(databaseUrl, { max: 4 });
    stops.unshift(() => db.destroy());
    await migrateToLatest(db);
    log(`database ${database} migrated`);

    const settings = readDevServerSettings(path.join(ROOT, 'temporal-dev.yml'));
    const server = await startDevServer({ ...settings, port: undefined, uiPort: undefined, dbFilename: undefined }, log);
    stops.unshift(() => server.stop());
    log(`Temporal dev server at ${server.address}`);

    const port = await freePort();
    const adminToken = `bench-admin-${randomBytes(24).toString('hex')}`;
    const taskQueue = 'forgelink-bench';
    const secrets: BenchSecrets = {
      github: randomBytes(20).toString('hex'),
      gitlab: randomBytes(20).toString('hex'),
      bitbucket: randomBytes(20).toString('hex'),
      azureDevOps: { user: 'forgelink', pass: randomBytes(20).toString('hex') },
    };
    const githubApp = {
      appId: '1',
      privateKeyPem: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    };
    const config = {
      publicUrl: `http://127.0.0.1:${port}`,
      api: { host: '127.0.0.1', port },
      database: { url: databaseUrl },
      temporal: { address: server.address, namespace: server.namespace, taskQueue },
      auth: { adminToken },
      encryption: { key: randomBytes(32).toString('base64') },
      gitProviders: {
        github: { enabled: true, appId: githubApp.appId, privateKey: githubApp.privateKeyPem, webhookSecret: secrets.github },
        gitlab: { enabled: true, webhookSecret: secrets.gitlab },
        bitbucket: { enabled: true, webhookSecret: secrets.bitbucket },
        azureDevOps: { enabled: true, webhookBasicAuthUser: secrets.azureDevOps.user, webhookBasicAuthPass: secrets.azureDevOps.pass },
      },
      security: { allowHttpHosts: ['127.0.0.1'] },
      repositoryCache: listing,
    };
    const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-bench-'));
    stops.push(async () => rmSync(dir, { recursive: true, force: true }));
    const configFile = path.join(dir, 'forgelink.yml');
    writeFileSync(configFile, toYaml(config), { mode: 0o600 });
    const env = { ...process.env, FORGELINK_CONFIG: configFile, LOG_LEVEL: process.env.LOG_LEVEL ?? 'info' };

    const [worker, api] = await Promise.all([
      startService('worker', 'worker/main.ts', env, 'worker running'),
      startService('api', 'api/main.ts', env, 'API listening'),
    ]);
    stops.unshift(() => stopService(worker));
    stops.unshift(() => stopService(api));
    log(`API at http://127.0.0.1:${port} (pid ${api.child.pid}), worker pid ${worker.child.pid}`);

    const temporalPid = server.pid;
    const connection = await Connection.connect({ address: server.address });
    stops.unshift(() => connection.close());
    const temporal = new Client({ connection, namespace: server.namespace });

    return {
      apiUrl: `http://127.0.0.1:${port}`,
      adminToken,
      taskQueue,
      secrets,
      githubApp,
      listing,
      db,
      temporal,
      resetPeakRss() {
        for (const pid of [api.child.pid, worker.child.pid]) {
          if (pid !== undefined) writeFileSync(`/proc/${pid}/clear_refs`, '5');
        }
      },
      peakRssMiB: () => ({ api: peakRssMiB(api.child.pid), worker: peakRssMiB(worker.child.pid) }),
      setWorkerPaused(paused) {
        worker.child.kill(paused ? 'SIGSTOP' : 'SIGCONT');
      },
      cpuSeconds: () => ({
        api: cpuSecondsOf(api.child.pid),
        worker: cpuSecondsOf(worker.child.pid),
        temporal: cpuSecondsOf(temporalPid),
        bench: cpuSecondsOf(process.pid),
        postgres: postgresCpuSeconds(),
      }),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
