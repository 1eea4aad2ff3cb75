/**
 * `npm run bench:ack -- [--against=<checkout>] [--nodeArgs='A|B'] [--temporal=1] [--floor=1] [--warmup=N] [--deliveries=N] [--blocks=N] [--rate=N] [--concurrency=N]`:
 * the API's CPU per acknowledged delivery, without Temporal unless `--temporal=1` (issue #18's acknowledgement tail: the
 * less CPU the acknowledging thread takes per delivery, the sooner the kernel runs it when it wakes).
 * The receivers of this checkout, and of each `--against` checkout (comma-separated, e.g. a worktree
 * of main with node_modules linked, to compare before and after a change), each run in a process of their
 * own (its own bench/ack-cpu-server.ts: the app with api/main.ts's deps, its pool on a fresh database of
 * the machine's PostgreSQL, its relay thread). Signed pushes of the four providers, in turn, each
 * with its own body and delivery id, go to one organization's attached repositories through their
 * connections' hooks (GitHub: the App's), paced at `rate` a second (0: closed loop) with at most
 * `concurrency` in flight, in blocks of `deliveries`, each round starting one server further on
 * (ABC, BCA, CAB…) after a warm-up block each. Per block: the server's main thread's time on a core (schedstat, ns) and
 * all its threads', per 202, and the acknowledgement's latency; each server's main thread CPU as a
 * ratio to the first server's in the same round (median over the rounds). Every answer must be 202.
 * `--floor=1` adds the minimal acknowledgement (bench/ack-floor-server.ts), posted the rows the
 * receiver would store. `--nodeArgs='--flag --flag2|--flag3'` adds a server of this checkout per
 * `|`-separated set of Node flags (named `this[flags]`), to weigh V8 flags against the same code.
 * `--temporal=1` starts a Temporal dev server of its own (as the benchmark stack does, no worker):
 * the relay threads then start every stored delivery's event run for real, and each block ends once
 * its rows are marked started; per block the relay's thread (the busiest thread but the main one)
 * and the rest (V8's GC helpers, libuv's pool) are reported too. The relay's starts and the Temporal
 * server then share the cores with the acknowledgements, as in `npm run bench -- ingest`.
 * The machine's other work moves these numbers by ±30 % from block to block: compare ratios of many
 * short rounds (`--deliveries=300 --blocks=12 --rate=0 --concurrency=1` takes ~3 minutes for two).
 */
import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { BODY_DIGEST_PROVIDERS } from '../api/routes/webhooks.ts';
import { createDb } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { ensureWebhookCredential } from '../lib/db/repositories/webhook-credentials.ts';
import { PROVIDERS, type Provider } from '../lib/domain.ts';
import { freeLoopbackPort } from '../lib/net.ts';
import { readDevServerSettings, startDevServer, type DevServer } from '../lib/temporal/dev-server.ts';
import { testPostgres } from '../test/support/postgres.ts';
import { normalizeWebhook } from '../api/webhooks/normalize.ts';
import { summarizeDelivery } from '../workflows/contract.ts';
import { delivery, fixture, GITHUB_FIXTURE_INSTALLATION_ID, PUSH_FIXTURES, withRepository, type Delivery } from '../test/fakes/webhook-deliveries.ts';
import { latencySummary, percentile, runConcurrently, runPaced } from './measure.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPOSITORIES_PER_PROVIDER = 25;

const flags: Record<string, string> = Object.fromEntries(
  process.argv.slice(2).map((arg) => {
    const flag = /^--([a-zA-Z]+)=(.+)$/.exec(arg);
    if (!flag) throw new Error(`unknown argument ${arg}: --against=<checkout> --nodeArgs='A|B' --temporal=1 --floor=1 --warmup=N --deliveries=N --blocks=N --rate=N --concurrency=N`);
    return [flag[1]!, flag[2]!];
  }),
);
const options = {
  deliveries: Number(flags.deliveries ?? 1500),
  blocks: Number(flags.blocks ?? 3),
  rate: Number(flags.rate ?? 120),
  concurrency: Number(flags.concurrency ?? 50),
  // Deliveries each server is sent before the rounds (default: one block's). V8 keeps optimizing the
  // receivers' and the relay's code for thousands of deliveries (its compiler threads' CPU per
  // delivery halved from the 1st to the 5th thousand), so a short warm-up compares JIT warm-ups.
  warmup: Number(flags.warmup ?? flags.deliveries ?? 1500),
};
// `--against=DIR[,DIR…]`: other checkouts, named by their directory, measured beside this one.
// `--floor=1`: bench/ack-floor-server.ts measured beside them, last.
// `--nodeArgs=A|B`: this checkout again, with each set of Node flags.
const variants: { name: string; root: string; nodeArgs: string[] }[] = [
  ...(flags.against?.split(',') ?? []).map((dir) => ({ name: path.basename(path.resolve(dir)), root: path.resolve(dir), nodeArgs: [] })),
  { name: 'this', root: ROOT, nodeArgs: [] },
  ...(flags.nodeArgs?.split('|') ?? []).map((set) => set.split(/\s+/).filter(Boolean)).map((nodeArgs) => ({ name: `this[${nodeArgs.join(' ')}]`, root: ROOT, nodeArgs })),
];

const log = (line: string) => console.error(`[ack-cpu] ${line}`);
const postgres = await testPostgres(log);
const admin = createDb(postgres.adminUrl, { max: 1 });
const database = `forgelink_ack_cpu_${Date.now()}`;
await sql`create database ${sql.id(database)}`.execute(admin);
const databaseUrl = Object.assign(new URL(postgres.adminUrl), { pathname: `/${database}` }).toString();
const db = createDb(databaseUrl, { max: 2 });
const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-ack-cpu-'));
const servers: { name: string; child: ChildProcess; port: number; taskQueue?: string; floor?: true }[] = [];
let temporalServer: DevServer | undefined;
try {
  // `--temporal=1`: a dev server of the bench's own (the stack's settings), so the relays' starts are made and measured.
  if (flags.temporal === '1') temporalServer = await startDevServer({ ...readDevServerSettings(path.join(ROOT, 'temporal-dev.yml')), port: undefined, uiPort: undefined, dbFilename: undefined }, log);
  await migrateToLatest(db);
  const encryptionKey = randomBytes(32);
  const keys = { current: { id: 'bench', key: encryptionKey } };
  const githubSecret = randomBytes(20).toString('hex');
  const githubKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();

  // One organization, a connection per provider, attached repositories (as bench/ingest.ts seeds them).
  const org = await db.insertInto('organizations').values({ slug: `ack-cpu-${Date.now()}`, name: 'ack cpu' }).returning('id').executeTakeFirstOrThrow();
  const hooks = {} as Record<Provider, { repos: { externalId: string; fullName: string }[]; hook: { url?: string; secret: string; basicAuthUser?: string } }>;
  for (const provider of PROVIDERS) {
    const connection = await db
      .insertInto('connections')
      .values({ organization_id: org.id, provider, base_url: `https://${provider}.bench.test`, status: 'active', ...(provider === 'github' ? { external_key: GITHUB_FIXTURE_INSTALLATION_ID } : {}) })
      .returning('id')
      .executeTakeFirstOrThrow();
    const credential = provider === 'github' ? undefined : await ensureWebhookCredential(db, keys, { id: connection.id, provider });
    const hook = credential ? { url: `http://hook.test/api/events-handler/v1/events/${provider}?c=${connection.id}`, secret: credential.secret, basicAuthUser: credential.basicAuthUser } : { secret: githubSecret };
    const repos = [];
    for (let i = 0; i < REPOSITORIES_PER_PROVIDER; i++) {
      const externalId = provider === 'azure-devops' ? randomUUID() : String(1_000_000 + i);
      const fullName = provider === 'azure-devops' ? `Bench/repo-${i}` : provider === 'bitbucket' ? `BENCH/repo-${i}` : `bench/repo-${i}`;
      const { id } = await db.insertInto('repositories').values({ organization_id: org.id, connection_id: connection.id, provider, external_id: externalId, full_name: fullName }).returning('id').executeTakeFirstOrThrow();
      await db.insertInto('attachments').values({ organization_id: org.id, repository_id: id, status: 'attached' }).execute();
      repos.push({ externalId, fullName });
    }
    hooks[provider] = { repos, hook };
  }
  const payloads = Object.fromEntries(PROVIDERS.map((p) => [p, fixture(PUSH_FIXTURES[p])]));
  const deliveries = (count: number): Delivery[] =>
    Array.from({ length: count }, (_, i) => {
      const provider = PROVIDERS[i % PROVIDERS.length]!;
      const { repos, hook } = hooks[provider];
      const repo = repos[Math.floor(i / PROVIDERS.length) % repos.length]!;
      // A body of its own: the same body again through a connection's hook is a replay, recorded once.
      return delivery(provider, { ...withRepository(provider, payloads[provider]!, repo), bench_delivery: randomUUID() }, { deliveryId: randomUUID(), ...hook });
    });

  const temporalAddress = temporalServer?.address ?? `127.0.0.1:${await freeLoopbackPort()}`;
  for (const [index, variant] of variants.entries()) {
    const port = await freeLoopbackPort();
    const taskQueue = `ack-cpu-${index}-${variant.name.replace(/[^a-zA-Z0-9-]/g, '')}`;
    const config = {
      publicUrl: `http://127.0.0.1:${port}`,
      api: { host: '127.0.0.1', port },
      database: { url: databaseUrl },
      temporal: { address: temporalAddress, namespace: temporalServer?.namespace ?? 'default', taskQueue },
      auth: { adminToken: randomBytes(24).toString('hex') },
      encryption: { key: encryptionKey.toString('base64'), keyId: 'bench' },
      gitProviders: { github: { enabled: true, appId: '1', privateKey: githubKey, webhookSecret: githubSecret }, gitlab: { enabled: true }, bitbucket: { enabled: true }, azureDevOps: { enabled: true } },
      security: { allowHttpHosts: ['127.0.0.1'] },
    };
    const configFile = path.join(dir, `${index}.json`);
    writeFileSync(configFile, JSON.stringify(config), { mode: 0o600 });
    // ACK_CPU_NODE_ARGS, e.g. '--cpu-prof --cpu-prof-dir=DIR', for the servers' Node.
    const nodeArgs = process.env.ACK_CPU_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
    // Each checkout's own server (its deps as its api/main.ts builds them); copies of the server from
    // before apiDeps (main before it landed) import the checkout named by ACK_CPU_ROOT instead.
    const child = spawn(process.execPath, [...variant.nodeArgs, ...nodeArgs, '--import', 'tsx', path.join(variant.root, 'bench/ack-cpu-server.ts')], {
      cwd: variant.root,
      env: { ...process.env, FORGELINK_CONFIG: configFile, ACK_CPU_ROOT: variant.root, LOG_LEVEL: process.env.LOG_LEVEL ?? 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // The access log goes to a pipe, read and dropped, as the benchmark stack reads the API's; or
    // kept in ACK_CPU_STDOUT_DIR (e.g. with ACK_CPU_NODE_ARGS='--trace-opt --trace-deopt').
    if (process.env.ACK_CPU_STDOUT_DIR) child.stdout!.pipe(createWriteStream(path.join(process.env.ACK_CPU_STDOUT_DIR, `${index}.${child.pid}.out`)));
    else child.stdout!.resume();
    await new Promise<void>((resolve, reject) => {
      let output = '';
      child.stderr!.on('data', (chunk: Buffer) => {
        output += chunk;
        if (output.includes('ack-cpu listening')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`${variant.name} server exited (${code}): ${output}`)));
    });
    servers.push({ name: variant.name, child, port, taskQueue });
    log(`${variant.name}: ${variant.root} on port ${port} (pid ${child.pid})`);
  }

  if (flags.floor === '1') {
    // The minimal acknowledgement (bench/ack-floor-server.ts, as bench/ingest.ts runs it): node:http, the body read, the same INSERT into a scratch copy of the table, 202.
    await sql`create table if not exists ack_floor_deliveries (like webhook_deliveries including all)`.execute(db);
    const port = await freeLoopbackPort();
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench/ack-floor-server.ts')], {
      cwd: ROOT,
      env: { ...process.env, ACK_FLOOR_DATABASE_URL: databaseUrl, ACK_FLOOR_PORT: String(port) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`the floor server exited (${code})`)));
    });
    child.stdout!.resume();
    servers.push({ name: 'floor', child, port, floor: true });
    log(`floor: bench/ack-floor-server.ts on port ${port} (pid ${child.pid})`);
  }

  // Keep-alive sockets of a block of their own: one left idle while the other servers' blocks run outlives the server's keep-alive timeout (5 s) and may be cut as it is reused.
  const post = (server: (typeof servers)[number], d: Delivery, agent: http.Agent) =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(`http://127.0.0.1:${server.port}${d.path}`, { method: 'POST', headers: { ...d.headers, 'content-length': Buffer.byteLength(d.body) }, agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end(d.body);
    });

  const block = async (server: (typeof servers)[number], count = options.deliveries) => {
    const items = server.floor ? deliveries(count).map(asFloorRow) : deliveries(count);
    const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency });
    const before = cpuNs(server.child.pid!);
    const load = options.rate > 0 ? await runPaced(items, options.rate, options.concurrency, (d) => post(server, d, agent)) : await runConcurrently(items, options.concurrency, (d) => post(server, d, agent));
    // With Temporal, the block's CPU includes its relay starting every row it stored.
    if (temporalServer && !server.floor) await startedAll(server.taskQueue!);
    const after = cpuNs(server.child.pid!);
    agent.destroy();
    const other = load.outcomes.filter((s) => s !== 202);
    if (other.length > 0) throw new Error(`${server.name}: ${other.length} answers were not 202 (${[...new Set(other)].join(', ')})`);
    const perDelivery = (ns: number) => Math.round(ns / 1000 / items.length);
    const others = [...after.threads].map(([tid, ns]) => ns - (before.threads.get(tid) ?? 0)).sort((a, b) => b - a);
    return {
      mainThreadUsPerDelivery: perDelivery(after.main - before.main),
      processUsPerDelivery: perDelivery(after.all - before.all),
      // The busiest other thread (the relay's, when it starts runs) and the rest (V8's GC helpers, libuv's pool), on a core (schedstat).
      relayThreadUsPerDelivery: perDelivery(others[0] ?? 0),
      restUsPerDelivery: perDelivery(others.slice(1).reduce((a, b) => a + b, 0)),
      // Each thread but the main one with 10 µs a delivery or more, by thread id (in the order they were made: V8's platform threads first, then libuv's pool and the relay's as they start).
      byThreadUs: Object.fromEntries([...after.threads].map(([tid, ns]) => [tid, perDelivery(ns - (before.threads.get(tid) ?? 0))] as const).filter(([, us]) => us >= 10)),
      ackMs: latencySummary(load.latenciesMs),
      loadAverage: Math.round(os.loadavg()[0]! * 10) / 10,
    };
  };

  for (const server of servers) await block(server, options.warmup);
  log(`warmed up with ${options.warmup} deliveries each; ${options.blocks} blocks each of ${options.deliveries} deliveries, ${options.rate > 0 ? `paced at ${options.rate}/s` : 'closed loop'}, at most ${options.concurrency} in flight`);
  // Each round starts one server further on (ABC, BCA, CAB…; two servers: AB, BA, AB…), so every
  // server takes each place in a round alike and none follows itself more often than another: a
  // block right after one of the same server's took ~15 % less CPU (its caches still warm), which
  // forwards-and-backwards rounds gave only to the first and last of three or more servers.
  const order = Array.from({ length: options.blocks }, (_, round) => [...servers.slice(round % servers.length), ...servers.slice(0, round % servers.length)]).flat();
  const results = Object.fromEntries(servers.map((s) => [s.name, [] as Awaited<ReturnType<typeof block>>[]]));
  for (const server of order) {
    const result = await block(server);
    results[server.name]!.push(result);
    log(`${server.name}: main thread ${result.mainThreadUsPerDelivery} µs, process ${result.processUsPerDelivery} µs (relay thread ${result.relayThreadUsPerDelivery}, rest ${result.restUsPerDelivery}; by thread ${JSON.stringify(result.byThreadUs)}) per delivery; ack p50 ${result.ackMs.p50} / p99 ${result.ackMs.p99} ms; load ${result.loadAverage}`);
  }
  const summary = Object.fromEntries(
    Object.entries(results).map(([name, blocks]) => [
      name,
      {
        root: variants.find((v) => v.name === name)?.root ?? 'bench/ack-floor-server.ts',
        mainThreadUsPerDelivery: { median: percentile(blocks.map((b) => b.mainThreadUsPerDelivery), 50), each: blocks.map((b) => b.mainThreadUsPerDelivery) },
        processUsPerDelivery: { median: percentile(blocks.map((b) => b.processUsPerDelivery), 50), each: blocks.map((b) => b.processUsPerDelivery) },
        relayThreadUsPerDelivery: { median: percentile(blocks.map((b) => b.relayThreadUsPerDelivery), 50), each: blocks.map((b) => b.relayThreadUsPerDelivery) },
        restUsPerDelivery: { median: percentile(blocks.map((b) => b.restUsPerDelivery), 50), each: blocks.map((b) => b.restUsPerDelivery) },
        ackP99Ms: blocks.map((b) => b.ackMs.p99),
      },
    ]),
  );
  // Each round measures every server once, close together in time: the ratio within a round to the
  // first server (the first --against) cancels most of a drift in the machine's load.
  const [first] = servers;
  const ratiosOf = (metric: 'mainThreadUsPerDelivery' | 'processUsPerDelivery') =>
    Object.fromEntries(
      servers.slice(1).map((s) => {
        const each = results[s.name]!.map((b, round) => Math.round((b[metric] / results[first!.name]![round]![metric]) * 1000) / 1000);
        return [s.name, { median: percentile(each, 50), each }];
      }),
    );
  console.log(JSON.stringify({ options: { ...options, temporal: temporalServer !== undefined }, order: order.map((s) => s.name), summary, mainThreadRatioTo: { [first!.name]: ratiosOf('mainThreadUsPerDelivery') }, processRatioTo: { [first!.name]: ratiosOf('processUsPerDelivery') } }, null, 2));
} finally {
  for (const { child } of servers) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  await db.destroy();
  await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  await admin.destroy();
  await postgres.stop();
  await temporalServer?.stop();
  rmSync(dir, { recursive: true, force: true });
}

/** Waits (polling, this is a benchmark) until the relay of `taskQueue` has marked every row it has stored started. */
async function startedAll(taskQueue: string): Promise<void> {
  const deadline = performance.now() + 120_000;
  for (;;) {
    const { pending } = await db
      .selectFrom('webhook_deliveries')
      .select(({ fn }) => fn.countAll<string>().as('pending'))
      .where('started_at', 'is', null)
      .where(sql<string>`start->>'taskQueue'`, '=', taskQueue)
      .executeTakeFirstOrThrow();
    if (Number(pending) === 0) return;
    if (performance.now() > deadline) throw new Error(`${taskQueue}: ${pending} stored deliveries not started within 120 s`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** What the floor server takes instead of a delivery: the row the receiver stores for it, as JSON, made before the clock runs (as bench/ingest.ts makes them). */
function asFloorRow(d: Delivery): Delivery {
  const events = normalizeWebhook(d.provider, d.headers, d.body);
  const connectionId = new URL(d.path, 'http://x').searchParams.get('c');
  const start = { taskQueue: 'ack-cpu-floor', summary: summarizeDelivery(events), ...(connectionId ? { connectionId, ...(BODY_DIGEST_PROVIDERS.has(d.provider) ? { bodyDigest: createHash('sha256').update(d.body).digest('hex') } : {}) } : {}) };
  const body = JSON.stringify([d.provider, d.deliveryId, connectionId, JSON.stringify(events), d.provider === 'github' ? GITHUB_FIXTURE_INSTALLATION_ID : null, null, JSON.stringify(start)]);
  return { ...d, path: '/', headers: { 'content-type': 'application/json' }, body };
}

/** CPU so far (ns): the process's main thread (its time on a core, schedstat), the whole process's (utime + stime, ended threads included), and each other thread's (schedstat). */
function cpuNs(pid: number): { main: number; all: number; threads: Map<number, number> } {
  const onCore = (tid: string) => Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
  const main = onCore(String(pid));
  const threads = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    if (Number(tid) === pid) continue;
    try {
      threads.set(Number(tid), onCore(tid));
    } catch {
      // The thread ended while we looked.
    }
  }
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th, in clock ticks (100 a second).
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { main, all: (Number(fields[11]) + Number(fields[12])) * 10_000_000, threads };
}
