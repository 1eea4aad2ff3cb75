/**
 * `npx tsx bench/listing-writes.ts [--rounds=N] [--against=DIR[,DIR…]] [--perPage=N]`: the
 * database side of a refresh alone (no Temporal, no provider): a first listing of 10,000
 * repositories over four connections written page by page as the listing activity writes them
 * (writeListingPage, two pages at once per connection, the four connections at once), each
 * connection's listing ended as the activity ends it (finishListingInDb, and purgeVanishedRepositories where it says so), then an unchanged
 * second listing (the same, with no page written). Each checkout named (this one first) gets a fresh
 * database migrated by its own migrations and is driven by its own lib/db code, in alternating
 * rounds; per round and checkout: wall time of the first and second listing, the CPU the
 * PostgreSQL backends doing it took (from /proc: the server must run on this machine), the CPU of
 * the server's WAL writer, checkpointer and background writer meanwhile (`PgServerCpuMs`: shared
 * with whatever else the server does), and this process's CPU (`ClientCpuMs`: the worker's part).
 * Writes bench/results/listing-writes.json; KEEP_DATABASES=1 keeps the databases (to EXPLAIN in).
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { type Kysely, sql } from 'kysely';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const flags = Object.fromEntries(process.argv.slice(2).map((a) => /^--(\w+)=(.*)$/.exec(a)!.slice(1, 3))) as Record<string, string>;
const rounds = Number(flags.rounds ?? 8);
const checkouts = [ROOT, ...(flags.against ? flags.against.split(',') : [])];
const ADMIN = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const TICK = 1000 / 100; // ms per clock tick (USER_HZ 100)

const withDatabase = (url: string, database: string) => {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
};

/**
 * The server's own processes that a listing's commits make work (the WAL writer, which writes and
 * flushes what asynchronous commits leave it; the checkpointer and background writer): their CPU
 * counts too, since work moved there from the backends is not work saved. The server is shared, so
 * this includes other databases' share of it.
 */
function serverProcessPids(backend: number): number[] {
  const parent = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
  const postmaster = parent(backend);
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'postgres' || parent(Number(entry)) !== postmaster) continue;
      const title = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (/walwriter|checkpointer|background writer/.test(title)) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

/**
 * CPU of the backends serving `database` now (by their process titles, `postgres: user database
 * host state`): the pool replaces a connection idle for 10 s, so the backends of a round are not
 * always those seen before it; one that starts during a round counts whole (its start is the pool's
 * work for the round).
 */
function backendsCpuMs(database: string): number {
  let sum = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'postgres') continue;
      if (!readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').split(/\s+/).includes(database)) continue;
      sum += cpuMs(Number(entry));
    } catch {
      // gone
    }
  }
  return sum;
}

/** utime + stime of a process, in ms. */
function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICK;
  } catch {
    return 0;
  }
}

type Page = { key: string; next?: string; repos: { externalId: string; fullName: string; project?: string; defaultBranch?: string; webUrl?: string }[] };

/** A provider's listing as pages: `perPage` repositories each, keyed and linked as the listing keys them. */
function pagesOf(provider: string, count: number, perPage: number, salt: string): Page[] {
  const pages: Page[] = [];
  for (let start = 0, n = 0; start < count; start += perPage, n++) {
    const repos = [];
    for (let i = start; i < Math.min(count, start + perPage); i++) {
      repos.push({
        externalId: `${provider}-${salt}-${i}`,
        fullName: `group-${i % 37}/repository-${salt}-${i}`,
        project: provider === 'azure-devops' || provider === 'bitbucket' ? `project-${i % 11}` : undefined,
        defaultBranch: 'main',
        webUrl: `https://${provider}.example/group-${i % 37}/repository-${salt}-${i}`,
      });
    }
    pages.push({ key: n === 0 ? 'first' : `page-${n}`, repos });
  }
  pages.forEach((p, i) => (p.next = pages[i + 1]?.key));
  return pages;
}

/** Repositories a page of GitHub, GitLab and Azure DevOps holds (`--perPage=N`; Bitbucket's pages hold 1,000). */
const PER_PAGE = Number(flags.perPage ?? 100);
const PROVIDERS: [string, number][] = [
  ['github', PER_PAGE],
  ['gitlab', PER_PAGE],
  ['bitbucket', 1000],
  ['azure-devops', PER_PAGE],
];

interface Checkout {
  dir: string;
  db: Kysely<any>;
  /** The server's WAL writer, checkpointer and background writer (serverProcessPids). */
  serverPids: number[];
  cache: any;
  database: string;
}

async function prepare(dir: string, index: number): Promise<Checkout> {
  const database = `bench_writes_${process.pid}_${index}`;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`drop database if exists ${database}`);
  await admin.query(`create database ${database}`);
  await admin.end();
  // The checkout's own pool (lib/db/index.ts createDb), as its worker makes it.
  const { createDb } = await import(pathToFileURL(path.join(dir, 'lib/db/index.ts')).href);
  const db: Kysely<any> = createDb(withDatabase(ADMIN, database), { max: 10 });
  const { migrateToLatest } = await import(pathToFileURL(path.join(dir, 'lib/db/migrate.ts')).href);
  await migrateToLatest(db);
  const cache = await import(pathToFileURL(path.join(dir, 'lib/db/repositories/repository-cache.ts')).href);
  // Open every pooled connection once.
  await Promise.all(Array.from({ length: 10 }, () => sql`select pg_sleep(0.05)`.execute(db)));
  const backend = (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows[0]!.pid;
  return { dir, db, serverPids: serverProcessPids(backend), cache, database };
}

async function organization(c: Checkout, salt: string) {
  const org = await c.db.insertInto('organizations').values({ slug: `w-${salt}`, name: salt }).returning('id').executeTakeFirstOrThrow();
  const scopes = [];
  for (const [provider] of PROVIDERS) {
    const conn = await c.db
      .insertInto('connections')
      .values({ organization_id: org.id, provider, base_url: `https://${provider}.example`, external_key: `${provider}-${salt}`, account: 'w', status: 'active' })
      .returning('id')
      .executeTakeFirstOrThrow();
    scopes.push({ organizationId: org.id, connectionId: conn.id, provider });
  }
  return scopes;
}

/** One listing of every connection at once; `first`: every page is new and written. */
async function listing(c: Checkout, scopes: { organizationId: string; connectionId: string; provider: string }[], salt: string, first: boolean) {
  const holder = `bench-${salt}-${first ? 1 : 2}`;
  await Promise.all(
    scopes.map(async (scope, i) => {
      const [provider, perPage] = PROVIDERS[i]!;
      const pages = pagesOf(provider, 2500, perPage, salt);
      const hasLease = typeof c.cache.takeListingLease === 'function';
      await Promise.all([hasLease ? c.cache.takeListingLease(c.db, scope.connectionId, holder) : null, c.cache.listingPages(c.db, scope.connectionId)]);
      if (first) {
        const queue = [...pages];
        // As the listing activity does: a listing that starts with an empty cache (here, every first one) inserts its rows (NewRows; ignored by checkouts without it).
        const newRows = { likely: true };
        const writer = async () => {
          for (let page = queue.shift(); page; page = queue.shift()) {
            const contentHash = c.cache.repositoriesDigest(page.repos);
            await c.cache.writeListingPage(c.db, scope, page.key, page.repos, {
              externalIds: page.repos.map((r) => r.externalId),
              nextCursor: page.next,
              fanOut: [],
              contentHash,
            }, { newRows });
            if (page.key === 'first' && typeof c.cache.makeListingDurable === 'function') await c.cache.makeListingDurable(c.db, scope.connectionId, holder);
          }
        };
        await Promise.all([writer(), writer()]);
        // Where pages commit asynchronously, the listing makes them durable before it heartbeats:
        // as its first page is written, at most once a second after, and as it stops (in a listing
        // this short: the first and the last).
        if (typeof c.cache.makeListingDurable === 'function') await c.cache.makeListingDurable(c.db, scope.connectionId, holder);
      } else {
        for (const page of pages) c.cache.repositoriesDigest(page.repos);
      }
      const finished = await c.cache.finishListingInDb(c.db, scope.connectionId, pages.map((p) => p.key), {
        holder,
        counts: { pages: pages.length, apiCalls: pages.length, rowsWritten: first ? 2500 : 0, notModifiedPages: 0 },
        retentionDays: 7,
      });
      // As the listing activity of that checkout does: a finish that says whether anything expired is followed by a purge only then.
      if (finished.expired !== false) await c.cache.purgeVanishedRepositories(c.db, scope.connectionId, 7);
    }),
  );
}

async function measure(c: Checkout, round: number) {
  const salt = `${round}-${Math.random().toString(36).slice(2, 8)}`;
  const scopes = await organization(c, salt);
  const cpu = () => backendsCpuMs(c.database);
  const serverCpu = () => c.serverPids.reduce((sum, pid) => sum + cpuMs(pid), 0);
  const out: Record<string, number> = {};
  for (const first of [true, false]) {
    const cpu0 = cpu();
    const server0 = serverCpu();
    const client0 = process.cpuUsage();
    const t0 = performance.now();
    await listing(c, scopes, salt, first);
    const wall = performance.now() - t0;
    const client = process.cpuUsage(client0);
    // Backends' counters are read after the work: let the last ticks land (and the WAL writer's
    // flush of what committed asynchronously: it runs every wal_writer_delay, 200 ms by default).
    await new Promise((r) => setTimeout(r, first ? 250 : 20));
    const which = first ? 'first' : 'second';
    out[`${which}WallMs`] = Math.round(wall * 10) / 10;
    out[`${which}PgCpuMs`] = cpu() - cpu0;
    out[`${which}PgServerCpuMs`] = serverCpu() - server0;
    // This process's CPU: it is the worker here (digests, parameters, the pg client).
    out[`${which}ClientCpuMs`] = Math.round((client.user + client.system) / 100) / 10;
  }
  return out;
}

const prepared: Checkout[] = [];
for (const [i, dir] of checkouts.entries()) prepared.push(await prepare(dir, i));
const results: Record<string, Record<string, number>[]> = Object.fromEntries(checkouts.map((d) => [d, []]));
// One warm-up round each (not recorded), then alternating rounds, each starting with the next checkout.
for (const c of prepared) await measure(c, -1);
for (let round = 0; round < rounds; round++) {
  for (let k = 0; k < prepared.length; k++) {
    const c = prepared[(round + k) % prepared.length]!;
    const r = await measure(c, round);
    results[c.dir]!.push(r);
    console.log(`round ${round} ${path.basename(c.dir)} ${JSON.stringify(r)}`);
  }
}
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const summary = Object.fromEntries(
  Object.entries(results).map(([dir, rs]) => [dir, Object.fromEntries(Object.keys(rs[0] ?? {}).map((k) => [k, median(rs.map((r) => r[k]!))]))]),
);
console.log(JSON.stringify(summary, null, 1));
writeFileSync(
  path.join(ROOT, 'bench/results/listing-writes.json'),
  JSON.stringify({ benchmark: 'listing-writes', startedAt: new Date().toISOString(), loadAverage: os.loadavg(), rounds, summary, results }, null, 1) + '\n',
);
for (const c of prepared) {
  await c.db.destroy();
  if (process.env.KEEP_DATABASES) continue;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`drop database if exists ${c.database}`);
  await admin.end();
}
