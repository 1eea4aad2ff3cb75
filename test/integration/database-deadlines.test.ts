import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { DATABASE_DEADLINE_DEFAULTS } from '../../lib/config.ts';
import { databaseUnavailable, sqlStateOf } from '../../lib/db/errors.ts';
import { createDb, deadlinesFromConfig, poolSettingsOf, QUERY_READ_MARGIN_MS, sizedStatementMs, type Db } from '../../lib/db/index.ts';
import type { Provider } from '../../lib/domain.ts';
import { createWorkerDb } from '../../worker/database.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';
import { stallingProxy } from '../support/temporal-outage.ts';

/**
 * "A failing dependency is a 503, not a hang": the API's pool (database.*TimeoutSeconds,
 * lib/db/index.ts) against a PostgreSQL that hangs instead of refusing, on a database of this
 * file's own (its locks disturb no other test):
 * - another session holds `lock table webhook_deliveries in access exclusive mode`: a signed
 *   delivery answers 503 with Retry-After at the lock deadline, stores nothing, and its redelivery
 *   once the lock is gone answers 202 and is stored once;
 * - an address that accepts TCP and never answers: a delivery and /readyz answer 503 at the connect deadline;
 * - a connection whose answers stop coming (a silent network path): the statement gives up at the
 *   client's read deadline, and its connection is dropped, not handed to the next request;
 * - `npm run migrate` with the same short deadlines configured: a `create index concurrently` that
 *   waits for a lock longer than they allow is not cut;
 * - a delivery of webhooks.maxBodyBytes whose INSERT takes longer than the default statement and
 *   read deadlines is stored (its deadline grows with its size), while a small one is still cut;
 * - a pooler that refuses startup parameters it does not know (as PgBouncer does) still lets the
 *   API's pool connect, and PostgreSQL holds its deadlines (a `SET`), or none with serverDeadlines off;
 * - a pooler that refuses the `SET` of the deadlines: each new connection is dropped (its request
 *   answers 503) and the log names database.serverDeadlines, which, off, lets the same pooler serve;
 * - the worker's pool: a statement whose answer never comes is given up at its read deadline; the
 *   pool worker/main.ts makes (createWorkerDb) has its bounds, and gives up a connect at 10 s.
 * The bounds asserted are the deadline plus generous slack for a loaded machine.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Short deadlines, so that a test waits little; the lock's is the shortest, as in the defaults. */
const DATABASE = { connectTimeoutSeconds: 1, statementTimeoutSeconds: 4, lockTimeoutSeconds: 0.5 };
const DEADLINES = deadlinesFromConfig(DATABASE);
/** What a loaded machine may add to a deadline before the answer is sent. */
const SLACK_MS = 2000;

/** A TCP server that accepts every connection and never sends a byte: a database address that hangs. */
async function silentServer() {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server: Server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `postgres://forgelink:secret@127.0.0.1:${(server.address() as { port: number }).port}/forgelink`,
    accepted: () => accepted,
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}

async function timed<T>(run: () => Promise<T> | T): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await run();
  return { value, ms: performance.now() - started };
}

describe('database deadlines: a PostgreSQL that hangs is a 503, not a hang', () => {
  let own: OwnDatabase;
  let h: Harness;
  let api: Db;
  const attached = {} as Record<'github' | 'gitlab' | 'bitbucket', { externalId: string; fullName: string }>;
  const hooks = {} as Record<'github' | 'gitlab' | 'bitbucket', DeliveringHook>;
  const pools: Db[] = [];
  /** A pool as the API opens it (api/main.ts): with the configured deadlines. */
  const apiPool = (url: string, max = 5) => {
    const db = createDb(url, { max, deadlines: DEADLINES });
    pools.push(db);
    return db;
  };

  beforeAll(async () => {
    own = await createOwnDatabase('deadlines', { max: 2 });
    h = await startHarness({ databaseUrl: own.url, withoutWorker: true, withoutIntakeRelay: true });
    const { org } = await createOrgWithToken(h);
    for (const provider of ['github', 'gitlab', 'bitbucket'] as const) {
      attached[provider] = { externalId: uniqueExternalId(provider), fullName: provider === 'github' ? 'octo-org/deadlines' : provider === 'gitlab' ? 'group/deadlines' : 'PROJ/deadlines' };
      ({ hook: hooks[provider] } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...attached[provider] }));
    }
    api = apiPool(own.url);
  });
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.destroy()));
    await h?.close();
    await own?.drop();
  });

  const push = (provider: 'github' | 'gitlab') => {
    const payload = { ...withRepository(provider, fixture(PUSH_FIXTURES[provider]), attached[provider]), test_push: randomUUID() };
    return delivery(provider, payload, { deliveryId: randomUUID(), ...hooks[provider] });
  };
  const storedRows = async (deliveryId: string) => (await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', deliveryId).execute()).length;

  it('answers a delivery 503 with Retry-After at the lock deadline while the intake table is locked, stores nothing, and stores its redelivery once', { timeout: 60_000 }, async () => {
    const app = h.appWith({ db: api });
    const sent = { github: push('github'), gitlab: push('gitlab') };
    const locker = new pg.Client({ connectionString: own.url });
    await locker.connect();
    // Should the deadlines not hold, the lock is let go after a while so the requests end and the test fails instead of hanging.
    let unlock: NodeJS.Timeout | undefined;
    try {
      await locker.query('begin');
      await locker.query('lock table webhook_deliveries in access exclusive mode');
      unlock = setTimeout(() => void locker.query('rollback').catch(() => {}), 20_000);
      for (const provider of ['github', 'gitlab'] as const) {
        const d = sent[provider];
        const { value: res, ms } = await timed(() => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body }));
        expect(res.status, `${provider}: ${await res.clone().text()}`).toBe(503);
        expect(res.headers.get('content-type')).toBe('application/problem+json');
        expect(res.headers.get('retry-after')).toBe('5');
        expect(((await res.json()) as { detail: string }).detail).toBe('the database is busy or did not answer in time; deliver it again');
        expect(ms, `${provider} answered in ${Math.round(ms)} ms`).toBeLessThan(DEADLINES.lockMs + SLACK_MS);
        // The lock deadline (55P03), not the statement's (57014, later), cut it.
        expect(h.logs.find((l) => l.includes(d.deliveryId) && l.includes('could not store the delivery'))).toMatch(/"sqlState":"55P03"/);
      }
    } finally {
      clearTimeout(unlock);
      await locker.query('rollback').catch(() => {});
      await locker.end();
    }
    for (const provider of ['github', 'gitlab'] as const) {
      const d = sent[provider];
      expect(await storedRows(d.deliveryId)).toBe(0);
      const again = await app.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
      expect(again.status, await again.clone().text()).toBe(202);
      expect(await storedRows(d.deliveryId)).toBe(1);
    }
  });

  it('answers a delivery and /readyz 503 at the connect deadline when the database accepts TCP and never answers', { timeout: 60_000 }, async () => {
    const silent = await silentServer();
    try {
      const app = h.appWith({ db: apiPool(silent.url) });
      const d = push('gitlab');
      const { value: res, ms } = await timed(() => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body }));
      expect(res.status, await res.clone().text()).toBe(503);
      expect(res.headers.get('retry-after')).toBe('5');
      expect(ms, `the delivery answered in ${Math.round(ms)} ms`).toBeLessThan(DEADLINES.connectMs + SLACK_MS);
      const github = push('github');
      const second = await timed(() => app.request(github.path, { method: 'POST', headers: github.headers, body: github.body }));
      expect(second.value.status).toBe(503);
      expect(second.ms, `the GitHub delivery answered in ${Math.round(second.ms)} ms`).toBeLessThan(DEADLINES.connectMs + SLACK_MS);
      const ready = await timed(() => app.request('/readyz'));
      expect(ready.value.status).toBe(503);
      expect(await ready.value.json()).toEqual({ status: 'not ready', checks: { database: 'unavailable', temporal: 'ok' } });
      expect(ready.ms, `/readyz answered in ${Math.round(ready.ms)} ms`).toBeLessThan(DEADLINES.connectMs + SLACK_MS);
      const listed = await timed(() => app.request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } }));
      expect(listed.value.status).toBe(503);
      expect(listed.value.headers.get('retry-after')).toBe('5');
      expect(listed.ms).toBeLessThan(DEADLINES.connectMs + SLACK_MS);
      expect(silent.accepted()).toBeGreaterThanOrEqual(4);
      expect(await storedRows(d.deliveryId)).toBe(0);
    } finally {
      await silent.close();
    }
  });

  it("gives up on a statement whose answer never comes at the client's read deadline, and drops its connection", { timeout: 60_000 }, async () => {
    const proxy = await stallingProxy('127.0.0.1:5432');
    try {
      const url = new URL(own.url);
      url.host = proxy.address;
      const db = apiPool(url.toString(), 1);
      // Connected and idle in the pool, as a running API's are; then the path goes silent.
      await sql`select 1`.execute(db);
      proxy.stall();
      const app = h.appWith({ db });
      const listed = await timed(() => app.request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } }));
      expect(listed.value.status).toBe(503);
      expect(listed.value.headers.get('retry-after')).toBe('5');
      expect(((await listed.value.json()) as { detail: string }).detail).toBe('the database is busy or did not answer in time; try again');
      const readMs = DEADLINES.statementMs + 1000;
      expect(listed.ms).toBeGreaterThanOrEqual(readMs - 50);
      expect(listed.ms, `answered in ${Math.round(listed.ms)} ms`).toBeLessThan(readMs + SLACK_MS);
      // The connection was cut: the next request connects anew (and meets the connect deadline),
      // instead of queueing behind the answer that never came (the read deadline again).
      const next = await timed(() => app.request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } }));
      expect(next.value.status).toBe(503);
      expect(next.ms, `the next request answered in ${Math.round(next.ms)} ms`).toBeLessThan(DEADLINES.connectMs + SLACK_MS);
    } finally {
      await proxy.close();
    }
  });

  it('runs `npm run migrate` without the deadlines: an index build waiting on a lock past them is not cut', { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-deadlines-'));
    const migrated = await createOwnDatabase('deadlines_migrate');
    const locker = new pg.Client({ connectionString: migrated.url });
    await locker.connect();
    let unlock: NodeJS.Timeout | undefined;
    try {
      // The concurrent index is built again (lib/db/concurrent-indexes.ts) and must wait for the lock held here.
      await sql`drop index events_repository`.execute(migrated.db);
      await locker.query('begin');
      await locker.query('lock table events in share update exclusive mode');
      const configFile = path.join(dir, 'forgelink.yml');
      writeFileSync(
        configFile,
        toYaml({
          publicUrl: 'http://127.0.0.1:8080',
          database: { url: migrated.url, ...DATABASE },
          auth: { adminToken: randomBytes(24).toString('hex') },
          encryption: { key: randomBytes(32).toString('base64') },
        }),
        { mode: 0o600 },
      );
      const migrate = spawn(process.execPath, ['--import', 'tsx', 'lib/db/migrate-cli.ts'], { cwd: ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile }, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      for (const stream of [migrate.stdout, migrate.stderr]) stream.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
      const exited = new Promise<number | null>((resolve) => migrate.once('exit', (code) => resolve(code)));
      unlock = setTimeout(() => void locker.query('rollback').catch(() => {}), 60_000);
      // The build waits on the lock for longer than every deadline configured (twice the statement's), and is still waiting.
      const waitedMs = 2 * DEADLINES.statementMs;
      const waited = expect
        .poll(
          async () => {
            // Asked on another session: the locker's transaction would see one snapshot of the statistics.
            const { rows } = await sql<{ waited_ms: number }>`select extract(epoch from clock_timestamp() - query_start) * 1000 as waited_ms from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock' and query ilike 'create index concurrently%'`.execute(migrated.db);
            return Number(rows[0]?.waited_ms ?? 0);
          },
          { timeout: 60_000, interval: 200 },
        )
        .toBeGreaterThan(waitedMs);
      // A migration that ends while the lock is still held was cut (a deadline): that fails at once.
      let released = false;
      await Promise.race([waited, exited.then((code) => released || expect.fail(`npm run migrate ended (${code}) while the lock was held:\n${output}`))]);
      released = true;
      await locker.query('rollback');
      expect(await exited, output).toBe(0);
      const { rows } = await sql<{ valid: boolean }>`select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid where c.relname = 'events_repository'`.execute(migrated.db);
      expect(rows).toEqual([{ valid: true }]);
    } finally {
      clearTimeout(unlock);
      await locker.query('rollback').catch(() => {});
      await locker.end();
      await migrated.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /**
   * A signed Bitbucket push of `refChanges` ref changes, each becoming an event: a body near
   * webhooks.maxBodyBytes stores tens of MB of events.
   */
  const bitbucketPush = (refChanges: number) => {
    const payload = withRepository('bitbucket', fixture(PUSH_FIXTURES.bitbucket), attached.bitbucket);
    const template = payload.changes[0];
    payload.changes = Array.from({ length: refChanges }, (_, i) => ({ ...template, refId: `refs/heads/${'b'.repeat(150)}${i}`, ref: { ...template.ref, id: `refs/heads/${'b'.repeat(150)}${i}`, displayId: `${'b'.repeat(150)}${i}` } }));
    return delivery('bitbucket', payload, { deliveryId: randomUUID(), ...hooks.bitbucket });
  };

  it("stores a delivery of webhooks.maxBodyBytes whose INSERT outlasts the default statement and read deadlines (its deadline grows with its size), while a small one's is still cut", { timeout: 120_000 }, async () => {
    const maxBodyBytes = 25 * 1024 * 1024; // webhooks.maxBodyBytes' default
    const defaults = deadlinesFromConfig(DATABASE_DEADLINE_DEFAULTS);
    // Every INSERT into the intake table takes longer than the statement's deadline and the
    // client's read deadline after it: the database, not the machine's speed, makes it slow. The
    // trigger sleeps until the statement is that old, so the time a loaded machine takes to receive
    // and convert the large delivery's events is part of the wait rather than added to it.
    const slowMs = defaults.statementMs + QUERY_READ_MARGIN_MS + 500;
    await sql`create function slow_intake() returns trigger language plpgsql as $$ begin perform pg_sleep(greatest(0, ${sql.lit(slowMs / 1000)} - extract(epoch from clock_timestamp() - statement_timestamp()))); return new; end $$`.execute(own.db);
    await sql`create trigger slow_intake before insert on webhook_deliveries for each row execute function slow_intake()`.execute(own.db);
    try {
      const app = h.appWith({ db: apiPool(own.url), webhooks: { ...h.apiDeps.webhooks, maxBodyBytes } });
      // As many ref changes as fit the limit.
      const one = bitbucketPush(1000).body.length / 1000;
      let large = bitbucketPush(Math.floor((maxBodyBytes * 0.98) / one));
      while (large.body.length > maxBodyBytes) large = bitbucketPush(Math.floor(JSON.parse(large.body).changes.length * 0.98));
      expect(large.body.length).toBeGreaterThan(maxBodyBytes * 0.9);

      const small = push('gitlab');
      const cut = await timed(() => app.request(small.path, { method: 'POST', headers: small.headers, body: small.body }));
      expect(cut.value.status, await cut.value.clone().text()).toBe(503);
      expect(cut.ms).toBeLessThan(defaults.statementMs + SLACK_MS);
      expect(h.logs.find((l) => l.includes(small.deliveryId) && l.includes('could not store the delivery'))).toMatch(/"sqlState":"57014"/);
      expect(await storedRows(small.deliveryId)).toBe(0);

      const { value: res, ms } = await timed(() => app.request(large.path, { method: 'POST', headers: large.headers, body: large.body }));
      expect(res.status, await res.clone().text()).toBe(202);
      expect(ms).toBeGreaterThan(slowMs);
      const [row] = (await sql<{ bytes: number }>`select octet_length(events::text) as bytes from webhook_deliveries where delivery_id = ${large.deliveryId}`.execute(own.db)).rows;
      expect(row, 'stored').toBeDefined();
      // Tens of MB of events: a deadline of its own well past the one that would have cut it.
      expect(row!.bytes).toBeGreaterThan(15 * 1024 * 1024);
      expect(sizedStatementMs(defaults, row!.bytes)).toBeGreaterThan(slowMs + SLACK_MS);
    } finally {
      await sql`drop trigger if exists slow_intake on webhook_deliveries`.execute(own.db);
      await sql`drop function if exists slow_intake()`.execute(own.db);
    }
  });

  it('connects through a pooler that refuses unknown startup parameters (as PgBouncer does), with PostgreSQL holding the deadlines, or none when serverDeadlines is off', { timeout: 60_000 }, async () => {
    const pooler = await strictPooler('127.0.0.1:5432');
    try {
      const url = new URL(own.url);
      url.host = pooler.address;
      const db = apiPool(url.toString(), 1);
      const { rows } = await sql<{ statement_timeout: string; lock_timeout: string }>`select current_setting('statement_timeout') as statement_timeout, current_setting('lock_timeout') as lock_timeout`.execute(db);
      // PostgreSQL shows 4000 ms and 500 ms (DATABASE) as:
      expect(rows).toEqual([{ statement_timeout: '4s', lock_timeout: '500ms' }]);
      const off = createDb(url.toString(), { max: 1, deadlines: { ...DEADLINES, server: false } });
      pools.push(off);
      const offRows = (await sql<{ statement_timeout: string }>`select current_setting('statement_timeout') as statement_timeout`.execute(off)).rows;
      expect(offRows).toEqual([{ statement_timeout: '0' }]);
      expect(pooler.refused()).toEqual([]);
      // The pooler refuses what PgBouncer refuses: the startup parameters the pool sent before.
      const before = new pg.Client({ connectionString: url.toString(), statement_timeout: 1000 } as pg.ClientConfig);
      await expect(before.connect()).rejects.toThrow(/unsupported startup parameter: statement_timeout/);
      expect(pooler.refused()).toEqual(['statement_timeout']);
    } finally {
      await pooler.close();
    }
  });

  it('drops a new connection whose SET of the deadlines a pooler refuses (its request answers 503), and the log names database.serverDeadlines; with it off the same pooler serves', { timeout: 60_000 }, async () => {
    const pooler = await setRefusingPooler('127.0.0.1:5432');
    try {
      const url = new URL(own.url);
      url.host = pooler.address;
      const db = createDb(url.toString(), { max: 1, deadlines: DEADLINES, logger: h.apiDeps.logger });
      pools.push(db);
      const app = h.appWith({ db });
      const logged = () => h.logs.filter((l) => l.includes('could not set the statement and lock deadlines on a new database connection'));
      for (const attempt of [1, 2]) {
        const res = await app.request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } });
        expect(res.status, await res.clone().text()).toBe(503);
        expect(res.headers.get('retry-after')).toBe('5');
        // Each request met a new connection (the refused one was not kept), and its SET was refused.
        expect(pooler.refused()).toBe(attempt);
        expect(logged()).toHaveLength(attempt);
      }
      expect(logged()[0]).toContain('set database.serverDeadlines: false');
      expect(logged()[0]).toMatch(/"sqlState":"0A000"/);
      // Dropped: no connection through the pooler is left open, idle in the pool.
      await expect.poll(() => pooler.open(), { timeout: 5000 }).toBe(0);

      // database.serverDeadlines: false sends no SET: the same pooler serves it.
      const off = createDb(url.toString(), { max: 1, deadlines: { ...DEADLINES, server: false }, logger: h.apiDeps.logger });
      pools.push(off);
      const served = await h.appWith({ db: off }).request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } });
      expect(served.status, await served.clone().text()).toBeLessThan(500);
      expect(pooler.refused()).toBe(2);
      expect(logged()).toHaveLength(2);
    } finally {
      await pooler.close();
    }
  });

  it("gives up on a worker's statement whose answer never comes at its read deadline, and drops its connection", { timeout: 60_000 }, async () => {
    const proxy = await stallingProxy('127.0.0.1:5432');
    try {
      const url = new URL(own.url);
      url.host = proxy.address;
      // The worker's pool (worker/main.ts: WORKER_CLIENT_DEADLINES), with a read deadline a test can wait for.
      const bounds = { connectMs: 1000, readMs: 3000 };
      const db = createDb(url.toString(), { max: 1, clientDeadlines: bounds });
      pools.push(db);
      await sql`select 1`.execute(db);
      // No server deadline: PostgreSQL is told none.
      expect((await sql<{ s: string }>`select current_setting('statement_timeout') as s`.execute(db)).rows).toEqual([{ s: '0' }]);
      proxy.stall();
      const lost = await timed(() => sql`select 1`.execute(db).then(() => 'answered', (error: Error) => error.message));
      expect(lost.value).toBe('Query read timeout');
      expect(lost.ms).toBeGreaterThanOrEqual(bounds.readMs - 50);
      expect(lost.ms).toBeLessThan(bounds.readMs + SLACK_MS);
      // Dropped: the next statement connects anew (to a silent path: the connect deadline), not behind the lost answer.
      const next = await timed(() => sql`select 1`.execute(db).then(() => 'answered', (error: Error) => error.message));
      expect(next.value).toMatch(/timeout exceeded when trying to connect|connection timeout/);
      expect(next.ms).toBeLessThan(bounds.connectMs + SLACK_MS);
    } finally {
      await proxy.close();
    }
  });

  it("the worker's pool as worker/main.ts makes it: a 10 s connect deadline, TCP keepalive, a 120 s read deadline, no server deadline", { timeout: 60_000 }, async () => {
    const proxy = await stallingProxy('127.0.0.1:5432');
    try {
      const url = new URL(own.url);
      url.host = proxy.address;
      const db = createWorkerDb(url.toString(), h.apiDeps.logger);
      pools.push(db);
      // What pg was given (the read deadline is too long for a test to wait for).
      expect(poolSettingsOf(db)).toEqual({ max: 10, connectionTimeoutMillis: 10_000, query_timeout: 120_000, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
      const { rows } = await sql<{ statement: string; lock: string }>`select current_setting('statement_timeout') as statement, current_setting('lock_timeout') as lock`.execute(db);
      expect(rows).toEqual([{ statement: '0', lock: '0' }]);
      // A path silent from the start: a new pool's first statement gives up at the connect deadline.
      proxy.stall();
      const stalled = createWorkerDb(url.toString(), h.apiDeps.logger);
      pools.push(stalled);
      const lost = await timed(() => sql`select 1`.execute(stalled).then(() => 'answered', (error: Error) => error.message));
      expect(lost.value).toMatch(/timeout exceeded when trying to connect|connection timeout/);
      expect(lost.ms).toBeGreaterThanOrEqual(10_000 - 50);
      expect(lost.ms).toBeLessThan(10_000 + SLACK_MS);
    } finally {
      await proxy.close();
    }
  });

  it("a transaction cut at the read deadline fails with the deadline's error (a 503), not the rollback's on the cut connection", { timeout: 60_000 }, async () => {
    const proxy = await stallingProxy('127.0.0.1:5432');
    const url = new URL(own.url);
    url.host = proxy.address;
    const db = createDb(url.toString(), { max: 1, deadlines: { connectMs: 1000, statementMs: 500, lockMs: 200 } });
    pools.push(db);
    try {
      await sql`select 1`.execute(db);
      const failure = await db
        .transaction()
        .execute(async (trx) => {
          await sql`select 1`.execute(trx);
          proxy.stall();
          await sql`select 2`.execute(trx);
        })
        .then(() => undefined, (error: unknown) => error);
      // Kysely rolls back after the failure and throws the rollback's error if that fails too.
      expect((failure as Error | undefined)?.message).toBe('Query read timeout');
      expect(databaseUnavailable(failure)).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  it('ends the session of a transaction cut over a path that drops everything, so its row locks do not outlive the deadlines', { timeout: 60_000 }, async () => {
    await sql`create table if not exists deadline_locks (id int primary key)`.execute(h.db);
    await sql`insert into deadline_locks values (1) on conflict do nothing`.execute(h.db);
    const proxy = await stallingProxy(new URL(own.url).host);
    const url = new URL(own.url);
    url.host = proxy.address;
    const deadlines = { connectMs: 1000, statementMs: 500, lockMs: 300 };
    const viaProxy = createDb(url.toString(), { max: 1, deadlines });
    pools.push(viaProxy);
    try {
      const failure = await viaProxy
        .transaction()
        .execute(async (trx) => {
          await sql`select id from deadline_locks where id = 1 for update`.execute(trx);
          proxy.partition();
          await sql`select 2`.execute(trx);
        })
        .then(() => undefined, (error: unknown) => error);
      expect((failure as Error | undefined)?.message).toBe('Query read timeout');
      // The cut's close never reached the server: the row stays locked until the server ends the
      // session, idle in its transaction past statementMs + the margin (1.5 s, about when the client
      // gave up). Each try below waits at most its lock deadline (0.3 s); 40 tries outlast the idle
      // deadline several times over. Without it the session holds the lock for as long as TCP does.
      const direct = createDb(own.url, { max: 1, deadlines });
      pools.push(direct);
      let locked = false;
      for (let i = 0; i < 40 && !locked; i++) {
        locked = await sql`select id from deadline_locks where id = 1 for update`.execute(direct).then(() => true, (error: unknown) => (sqlStateOf(error) === '55P03' ? false : Promise.reject(error)));
      }
      expect(locked).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  it("answers an organization token's request 503 with Retry-After when the database cannot check the token", { timeout: 60_000 }, async () => {
    const { org, token } = await createOrgWithToken(h);
    const silent = await silentServer();
    const db = createDb(silent.url, { max: 2, deadlines: { connectMs: 500, statementMs: 1000, lockMs: 500 } });
    pools.push(db);
    try {
      const res = await h.appWith({ db }).request(`/api/v1/orgs/${org.slug}/connections`, { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('5');
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(silent.accepted()).toBeGreaterThan(0);
    } finally {
      await silent.close();
    }
  });
});

/**
 * A TCP proxy to PostgreSQL that, like PgBouncer without ignore_startup_parameters, refuses a
 * startup packet carrying a parameter other than those it tracks (FATAL 08P01 "unsupported
 * startup parameter"), and forwards everything else as it is.
 */
async function strictPooler(upstream: string) {
  const [host, port] = upstream.split(':') as [string, string];
  const allowed = new Set(['user', 'database', 'client_encoding', 'datestyle', 'timezone', 'standard_conforming_strings', 'application_name']);
  const refused: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on('error', () => {});
    client.on('close', () => sockets.delete(client));
    let pending = Buffer.alloc(0);
    let target: Socket | undefined;
    client.on('data', (chunk: Buffer) => {
      if (target) return void target.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      if (pending.length < 4 || pending.length < pending.readInt32BE(0)) return;
      const length = pending.readInt32BE(0);
      const fields = pending.subarray(8, length - 1).toString('utf8').split('\0');
      const unknown = fields.filter((_, i) => i % 2 === 0).find((name) => name !== '' && !allowed.has(name));
      if (unknown !== undefined) {
        refused.push(unknown);
        const body = Buffer.from(`SFATAL\0C08P01\0Munsupported startup parameter: ${unknown}\0\0`, 'utf8');
        const header = Buffer.alloc(5);
        header.write('E', 0);
        header.writeInt32BE(body.length + 4, 1);
        return void client.end(Buffer.concat([header, body]));
      }
      target = connect(Number(port), host);
      sockets.add(target);
      target.on('error', () => {});
      target.on('close', () => (sockets.delete(target!), client.destroy()));
      client.on('close', () => target?.destroy());
      target.on('data', (answer) => client.write(answer));
      target.write(pending);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    refused: () => [...refused],
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}

/**
 * A TCP proxy to PostgreSQL that, like a transaction pooler that does not allow session state,
 * refuses a simple query starting with `SET statement_timeout` (ERROR 0A000, then ready for the next
 * query, the server never seeing it) and forwards everything else as it is.
 */
async function setRefusingPooler(upstream: string) {
  const [host, port] = upstream.split(':') as [string, string];
  let refused = 0;
  const clients = new Set<Socket>();
  const sockets = new Set<Socket>();
  const message = (type: string, body: Buffer) => {
    const header = Buffer.alloc(5);
    header.write(type, 0);
    header.writeInt32BE(body.length + 4, 1);
    return Buffer.concat([header, body]);
  };
  const server: Server = createServer((client) => {
    clients.add(client);
    sockets.add(client);
    client.on('error', () => {});
    client.on('close', () => (clients.delete(client), sockets.delete(client)));
    const target = connect(Number(port), host);
    sockets.add(target);
    target.on('error', () => {});
    target.on('close', () => (sockets.delete(target), client.destroy()));
    client.on('close', () => target.destroy());
    target.on('data', (answer) => client.write(answer));
    let pending = Buffer.alloc(0);
    let started = false;
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        // The startup packet has no type byte; every later message has one.
        const at = started ? 1 : 0;
        if (pending.length < at + 4) return;
        const length = at + pending.readInt32BE(at);
        if (pending.length < length) return;
        const packet = pending.subarray(0, length);
        pending = pending.subarray(length);
        const text = started && packet[0] === 0x51 ? packet.subarray(5, length - 1).toString('utf8') : '';
        started = true;
        if (/^\s*set statement_timeout/i.test(text)) {
          refused++;
          const error = Buffer.from('SERROR\0C0A000\0MSET is not allowed in transaction pooling mode\0\0', 'utf8');
          client.write(Buffer.concat([message('E', error), message('Z', Buffer.from('I'))]));
        } else target.write(packet);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    /** How many SETs of the deadlines it refused. */
    refused: () => refused,
    /** Client connections open through it. */
    open: () => clients.size,
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}
