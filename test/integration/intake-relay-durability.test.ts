import { randomUUID } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Client, Connection } from '@temporalio/client';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createIntakeSignal, startIntakeRelay } from '../../api/intake-relay.ts';
import { intakeBacklog, loadDelivery, startPendingDeliveries, type StartOutcome } from '../../lib/db/repositories/deliveries.ts';
import { createLogger } from '../../lib/logger.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { pruneDeliveries } from '../../worker/delivery-retention.ts';
import { createOwnDatabase, type OwnDatabase } from '../support/own-database.ts';

/**
 * What keeps an acknowledged delivery owed until its run has read it: retention counted from the
 * row's start (by the database's clock), rows stored by an API from before the relay neither
 * kept for ever nor counted as a backlog, a Temporal outage not lengthening a row's own retry delay,
 * and a claim whose relay went silent mid-round not holding its rows for hours.
 * On a database of its own: the backlog's numbers are the test's rows alone.
 */
const DAY_MS = 24 * 60 * 60 * 1000;
const TASK_QUEUE = `relay-durability-${randomUUID()}`;
const SUMMARY = { events: 0, kinds: {}, repositories: [] };

/** An intake row as the receiver stores it (`start` null: as an API from before the relay stored it), received and started that long ago. */
async function insertRow(
  db: Kysely<any>,
  deliveryId: string,
  { receivedAgoMs = 0, startedAgoMs, withStart = true }: { receivedAgoMs?: number; startedAgoMs?: number; withStart?: boolean } = {},
) {
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, started_at)
    values ('github', ${deliveryId}, '[]'::jsonb, ${withStart ? JSON.stringify({ taskQueue: TASK_QUEUE, summary: SUMMARY }) : null}::jsonb,
            now() - ${receivedAgoMs} * interval '1 millisecond',
            ${startedAgoMs === undefined ? null : sql`now() - ${startedAgoMs} * interval '1 millisecond'`})`.execute(db);
}

const remaining = async (db: Kysely<any>) =>
  (await sql<{ delivery_id: string }>`select delivery_id from webhook_deliveries order by delivery_id`.execute(db)).rows.map((r) => r.delivery_id);

describe('intake retention and backlog', () => {
  let own: OwnDatabase;
  beforeAll(async () => {
    own = await createOwnDatabase('intake_retention', { max: 2 });
  });
  afterAll(async () => {
    await own?.drop();
  });

  /** One relay round on a session of the test's own, every claimed row given `outcome`. */
  const round = async (outcome: StartOutcome) => {
    const client = new pg.Client({ connectionString: own.url });
    await client.connect();
    try {
      return await startPendingDeliveries(client, TASK_QUEUE, 50, async (pending) => pending.map(() => outcome));
    } finally {
      await client.end();
    }
  };

  it("sets the claim's idle deadline for its own transaction only (SET LOCAL), so no other user of a pooled server connection inherits it; none without it", async () => {
    await sql`delete from webhook_deliveries`.execute(own.db);
    const client = new pg.Client({ connectionString: own.url });
    await client.connect();
    const setting = async () => ((await client.query('show idle_in_transaction_session_timeout')).rows[0] as { idle_in_transaction_session_timeout: string }).idle_in_transaction_session_timeout;
    try {
      const before = await setting();
      await insertRow(own.db, 'local-1');
      let during: string | undefined;
      const outcome = await startPendingDeliveries(
        client,
        TASK_QUEUE,
        50,
        async (pending) => {
          during = await setting(); // inside the claim's transaction, on its connection
          return pending.map(() => ({ started: true }) as const);
        },
        4321,
      );
      expect(outcome.started).toBe(1);
      expect(during).toBe('4321ms');
      expect(await setting()).toBe(before); // gone with the transaction

      await insertRow(own.db, 'local-2');
      let unset: string | undefined;
      await startPendingDeliveries(client, TASK_QUEUE, 50, async (pending) => {
        unset = await setting();
        return pending.map(() => ({ started: true }) as const);
      });
      expect(unset).toBe(before);
    } finally {
      await client.end();
    }
  });

  it('counts the retention from the start: a row that waited past it for its run keeps it in full once started', async () => {
    await sql`delete from webhook_deliveries`.execute(own.db);
    // Acknowledged 8 days ago, its start refused until now (never dropped while owed).
    await insertRow(own.db, 'late', { receivedAgoMs: 8 * DAY_MS });
    expect(await pruneDeliveries(own.db, 7)).toBe(0);
    // The cause fixed: the relay starts it; the worker's next prune comes before its run has read it.
    expect(await round({ started: true })).toEqual({ locked: 1, started: 1, more: false });
    expect(await pruneDeliveries(own.db, 7)).toBe(0);
    expect(await loadDelivery(own.db, { provider: 'github', deliveryId: 'late' })).toBeDefined();
  });

  it('removes rows started longer ago than the retention, and rows of an API from before the relay received longer ago; keeps the rest', async () => {
    await sql`delete from webhook_deliveries`.execute(own.db);
    await insertRow(own.db, 'started-8d', { receivedAgoMs: 8 * DAY_MS, startedAgoMs: 8 * DAY_MS - 1000 });
    await insertRow(own.db, 'started-6d', { receivedAgoMs: 6 * DAY_MS, startedAgoMs: 6 * DAY_MS });
    await insertRow(own.db, 'received-8d-started-1d', { receivedAgoMs: 8 * DAY_MS, startedAgoMs: DAY_MS });
    await insertRow(own.db, 'unstarted-30d', { receivedAgoMs: 30 * DAY_MS });
    // Stored by a pre-relay API pod during a rolling upgrade (no start information): it started the run itself.
    await insertRow(own.db, 'pre-relay-8d', { receivedAgoMs: 8 * DAY_MS, withStart: false });
    await insertRow(own.db, 'pre-relay-6d', { receivedAgoMs: 6 * DAY_MS, withStart: false });
    expect(await pruneDeliveries(own.db, 7)).toBe(2);
    expect(await remaining(own.db)).toEqual(['pre-relay-6d', 'received-8d-started-1d', 'started-6d', 'unstarted-30d']);
  });

  it("leaves rows of an API from before the relay out of the backlog (their runs were started by that API)", async () => {
    await sql`delete from webhook_deliveries`.execute(own.db);
    await insertRow(own.db, 'pre-relay', { receivedAgoMs: 3 * DAY_MS, withStart: false });
    expect(await intakeBacklog(own.db)).toEqual({ pending: 0, failing: 0, byTaskQueue: {} });
    await insertRow(own.db, 'owed', { receivedAgoMs: 60_000 });
    const backlog = await intakeBacklog(own.db);
    expect(backlog).toMatchObject({ pending: 1, failing: 0, byTaskQueue: { [TASK_QUEUE]: 1 } });
    expect(backlog.oldestAgeSeconds).toBeGreaterThanOrEqual(60);
    expect(backlog.oldestAgeSeconds).toBeLessThan(3600);
  });

  it("does not count a Temporal outage's rounds in a row's attempts (its own retry delay starts from them), but shows their error", async () => {
    await sql`delete from webhook_deliveries`.execute(own.db);
    await insertRow(own.db, 'through-outage');
    const row = () => own.db.selectFrom('webhook_deliveries').select(['attempts', 'last_error', 'next_attempt_at']).where('delivery_id', '=', 'through-outage').executeTakeFirstOrThrow();
    // Rounds in which every start failed for want of an answer (the relay's retryInMs null).
    for (let i = 0; i < 12; i++) expect(await round({ started: false, error: 'UNAVAILABLE: connection refused', retryInMs: null })).toMatchObject({ locked: 1 });
    expect(await row()).toEqual({ attempts: 0, last_error: 'UNAVAILABLE: connection refused', next_attempt_at: null });
    const backlog = await intakeBacklog(own.db);
    expect(backlog).toMatchObject({ pending: 1, failing: 1, oldestFailure: { deliveryId: 'through-outage', attempts: 0, lastError: 'UNAVAILABLE: connection refused' } });
    // Its first failure of its own is its first attempt.
    expect(await round({ started: false, error: 'DEADLINE_EXCEEDED: context deadline exceeded', retryInMs: 1000 })).toMatchObject({ locked: 1 });
    expect(await row()).toMatchObject({ attempts: 1, last_error: 'DEADLINE_EXCEEDED: context deadline exceeded' });
  });
});

/**
 * A TCP proxy to PostgreSQL that, once, forwards a relay's claim (`… for update skip locked`) and
 * then drops everything on that connection both ways without closing it: the server runs the claim
 * and holds its rows' locks, the relay never hears the answer (a NAT entry lost, a partition).
 * Later connections pass.
 */
async function claimBlackhole(port: number) {
  const sockets = new Set<Socket>();
  let swallowed: (() => void) | undefined;
  const claimSwallowed = new Promise<number>((resolve) => (swallowed = () => resolve(performance.now())));
  const server: Server = createServer((client) => {
    const target = connect(port, '127.0.0.1');
    let dead = false;
    for (const s of [client, target]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        if (!dead) [client, target].forEach((x) => x.destroy());
      });
    }
    client.on('data', (chunk: Buffer) => {
      if (dead) return;
      target.write(chunk);
      if (swallowed && /skip locked/i.test(chunk.toString('latin1'))) {
        dead = true;
        swallowed();
        swallowed = undefined;
      }
    });
    target.on('data', (chunk: Buffer) => !dead && client.write(chunk));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    claimSwallowed,
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}

describe('intake relay: a claim whose relay went silent mid-round', () => {
  let own: OwnDatabase;
  let proxy: Awaited<ReturnType<typeof claimBlackhole>>;
  let connection: Connection;
  let temporal: Client;
  beforeAll(async () => {
    own = await createOwnDatabase('intake_orphan', { max: 2 });
    proxy = await claimBlackhole(Number(new URL(own.url).port || 5432));
    connection = await Connection.connect({ address: inject('temporalAddress') });
    temporal = new Client({ connection, namespace: 'default' });
  });
  afterAll(async () => {
    await proxy?.close();
    await connection?.close();
    await own?.drop();
  });

  it('frees its rows for a new claim within the server idle timeout, and the relay gives the silent connection up after one read deadline', async () => {
    const ids = Array.from({ length: 5 }, (_, i) => `orphan-${i}-${randomUUID()}`);
    for (const id of ids) await insertRow(own.db, id);
    const viaProxy = new URL(own.url);
    viaProxy.port = String(proxy.port);
    const lines: string[] = [];
    const logger = createLogger('relay', 'warn', { write: (line: string) => void lines.push(`${performance.now()} ${line}`) });
    const [statementTimeoutMs, claimIdleTimeoutMs] = [3000, 4000];
    const relay = startIntakeRelay(
      { intake: createIntakeSignal(), logger, temporal, taskQueue: TASK_QUEUE },
      { databaseUrl: viaProxy.toString(), statementTimeoutMs, claimIdleTimeoutMs, sweepMs: 250, track: true },
    );
    const runs = ids.map((id) => workflowIds.event('github', id));
    try {
      const swallowedAt = await proxy.claimSwallowed;
      // The relay waits one read deadline on the silent connection, not a second one for its rollback.
      await expect.poll(() => lines.find((l) => l.includes('the database did not answer')), { timeout: 4 * statementTimeoutMs, interval: 50 }).toBeDefined();
      const gaveUpAfter = Number(lines.find((l) => l.includes('the database did not answer'))!.split(' ')[0]) - swallowedAt;
      expect(gaveUpAfter).toBeGreaterThanOrEqual(statementTimeoutMs - 50);
      expect(gaveUpAfter).toBeLessThan(statementTimeoutMs + 1500);
      // The orphaned claim's rows: the server ends its idle transaction, and the relay's new connection starts them.
      const started = Promise.all(runs.map((id) => relay.whenStarted(id)));
      const limit = new Promise<'locked'>((resolve) => setTimeout(() => resolve('locked'), claimIdleTimeoutMs + 15_000).unref());
      expect(await Promise.race([started.then(() => 'started' as const), limit])).toBe('started');
      expect(performance.now() - swallowedAt).toBeGreaterThanOrEqual(claimIdleTimeoutMs - 50);
    } finally {
      await relay.stop();
      for (const id of runs) await temporal.workflow.getHandle(id).terminate('test over').catch(() => {});
    }
  });
});
