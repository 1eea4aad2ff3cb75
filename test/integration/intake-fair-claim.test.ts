import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startPendingDeliveries, type PendingDelivery, type RelaySession } from '../../lib/db/repositories/deliveries.ts';

/**
 * The intake relay's claim on a real PostgreSQL (lib/db/repositories/deliveries.ts,
 * startPendingDeliveries): rows are taken in turns across organizations, so one organization's
 * backlog delays another's delivery by at most one round; oldest first within an organization;
 * two relays never claim one row; and the claim reads only the due rows of its own task queue.
 * Each test has a task queue of its own (the claim reads nothing else), rows written as the
 * receiver writes them; the starts are the test's (no Temporal): what is claimed is the point.
 */
describe('the intake claim: fair across organizations, due rows only', () => {
  const clients: pg.Client[] = [];
  const taskQueues: string[] = [];
  const session = async () => {
    const client = new pg.Client({ connectionString: inject('databaseUrl') });
    await client.connect();
    clients.push(client);
    return client;
  };
  let db: pg.Client;
  beforeAll(async () => {
    db = await session();
  });
  afterAll(async () => {
    await db.query(`delete from webhook_deliveries where start->>'taskQueue' = any($1)`, [taskQueues]);
    for (const c of clients) await c.end();
  });
  const queue = () => {
    const taskQueue = `fair-claim-${randomUUID()}`;
    taskQueues.push(taskQueue);
    return taskQueue;
  };
  /** `count` unstarted rows of `organizationId` (a GitHub App's delivery concerning one organization), received `ageMs` ago and 1 ms apart, oldest first. */
  const backlog = async (taskQueue: string, organizationId: string | undefined, count: number, ageMs: number, extra: { nextAttemptInMs?: number } = {}) => {
    const start = JSON.stringify({ taskQueue, summary: { events: 1 }, ...(organizationId ? { organizationId } : {}) });
    await db.query(
      `insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts, next_attempt_at)
       select 'github', $1 || '-' || i, '[]', $2, now() - make_interval(secs => $3 / 1000.0) + i * interval '1 millisecond', $5, now() + make_interval(secs => $4 / 1000.0)
       from generate_series(1, $6) i`,
      [`${organizationId ?? 'none'}-${randomUUID()}`, start, ageMs, extra.nextAttemptInMs ?? null, extra.nextAttemptInMs === undefined ? 0 : 1, count],
    );
  };
  /** One relay round that starts every row it claims; returns the claimed rows in the order handed to the starts. */
  const round = async (client: RelaySession, taskQueue: string, limit = 50, hold?: Promise<void>) => {
    let claimed: PendingDelivery[] = [];
    const outcome = await startPendingDeliveries(client, taskQueue, limit, async (pending) => {
      claimed = pending;
      await hold;
      return pending.map(() => ({ started: true as const }));
    });
    return { claimed, ...outcome };
  };
  const orgOf = (p: PendingDelivery) => p.start.organizationId;

  it("starts another organization's delivery in the next round, whatever one organization's backlog ahead of it; each organization's rows oldest first", async () => {
    const taskQueue = queue();
    const [flooding, other, third] = [randomUUID(), randomUUID(), randomUUID()];
    // 600 rows of one organization from an hour ago, then one delivery each of two others, just now.
    await backlog(taskQueue, flooding, 600, 3_600_000);
    await backlog(taskQueue, other, 1, 0);
    await backlog(taskQueue, undefined, 1, 0);
    const client = await session();
    const first = await round(client, taskQueue);
    // Both late deliveries are in the first round, not after the 600 (12 rounds of 50 in receipt order).
    expect(first.claimed.filter((p) => orgOf(p) === other)).toHaveLength(1);
    expect(first.claimed.filter((p) => orgOf(p) === undefined)).toHaveLength(1);
    // In turns: every organization's oldest before anyone's second.
    expect(new Set(first.claimed.slice(0, 3).map(orgOf))).toEqual(new Set([flooding, other, undefined]));
    // The flooding organization's share, its oldest rows in order.
    const ofFlooding = first.claimed.filter((p) => orgOf(p) === flooding);
    expect(ofFlooding.length).toBeGreaterThanOrEqual(16);
    expect(first.claimed.length).toBeLessThanOrEqual(52);
    expect(ofFlooding.map((p) => p.deliveryId.replace(/^.*-/, ''))).toEqual(ofFlooding.map((_, i) => String(i + 1)));
    expect(first.more).toBe(true);
    // The next round: the flooding organization alone (a full batch, its next-oldest), until a third one's delivery comes in.
    const second = await round(client, taskQueue);
    expect(second.claimed).toHaveLength(50);
    expect(second.claimed[0]!.deliveryId.replace(/^.*-/, '')).toBe(String(ofFlooding.length + 1));
    await backlog(taskQueue, third, 1, 0);
    const next = await round(client, taskQueue);
    expect(next.claimed.map(orgOf)).toContain(third);
  });

  it('two relays at once (API replicas) claim different rows, each in turns, never one row twice', async () => {
    const taskQueue = queue();
    const orgs = [randomUUID(), randomUUID(), randomUUID()];
    for (const org of orgs) await backlog(taskQueue, org, 100, 60_000);
    const [a, b] = [await session(), await session()];
    const pidOfA = (await a.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // A's round holds its rows locked (its starts not returned) while B claims.
    const first = round(a, taskQueue, 30, held);
    await expect.poll(async () => (await db.query(`select count(*)::int as n from pg_locks l join pg_stat_activity s using (pid) where s.pid = $1 and l.mode = 'RowShareLock'`, [pidOfA])).rows[0].n).toBeGreaterThan(0);
    const second = await round(b, taskQueue, 30);
    release();
    const [ra, rb] = [await first, second];
    expect(ra.claimed).toHaveLength(30);
    expect(rb.claimed).toHaveLength(30);
    const ids = [...ra.claimed, ...rb.claimed].map((p) => p.deliveryId);
    expect(new Set(ids).size).toBe(60);
    for (const r of [ra, rb]) for (const org of orgs) expect(r.claimed.filter((p) => orgOf(p) === org)).toHaveLength(10);
  });

  it("reads only its task queue's due rows: rows put off after a failure and other queues' rows are not walked", async () => {
    const taskQueue = queue();
    const elsewhere = queue();
    // Rows put off for ten minutes ahead of the due ones, and another deployment's backlog.
    await backlog(taskQueue, randomUUID(), 20_000, 7_200_000, { nextAttemptInMs: 600_000 });
    await backlog(elsewhere, randomUUID(), 20_000, 7_200_000);
    await backlog(taskQueue, randomUUID(), 50, 0);
    await backlog(taskQueue, randomUUID(), 5, 60_000, { nextAttemptInMs: -1000 });
    await db.query('analyze webhook_deliveries');
    // The claim as the relay sends it, EXPLAINed (its BEGIN left out; the locks end with the statement).
    let claimText = '';
    const spy: RelaySession = { escapeLiteral: (v) => db.escapeLiteral(v), query: async (q) => ((claimText ||= q), db.query(q)) };
    const claimed = await round(spy, taskQueue);
    const plan = (await db.query(`explain (analyze, format json) ${claimText.replace(/^\s*begin;/, '')}`)).rows[0]['QUERY PLAN'][0].Plan;
    const scans: { type: string; index?: string; read: number; removed: number }[] = [];
    const walk = (node: Record<string, any>) => {
      if (node['Relation Name'] === 'webhook_deliveries') {
        scans.push({ type: node['Node Type'], index: node['Index Name'], read: node['Actual Rows'] * node['Actual Loops'], removed: (node['Rows Removed by Filter'] ?? 0) + (node['Rows Removed by Index Recheck'] ?? 0) });
      }
      for (const child of node.Plans ?? []) walk(child);
    };
    walk(plan);
    expect(scans.length).toBeGreaterThan(0);
    for (const scan of scans) {
      expect(scan.type).toMatch(/^Index (Only )?Scan$/);
      expect(scan.index).toMatch(/^webhook_deliveries_(due|retry_due)$/);
      expect(scan.removed).toBe(0);
    }
    // Rows read in all: the due ones (and an organization's head per descent), never the 40,000 others.
    expect(scans.reduce((n, s) => n + s.read, 0)).toBeLessThan(200);
    // Two turns: the due organization's oldest 25, and the 5 rows due again after a failure.
    expect(claimed.claimed).toHaveLength(30);
    expect(claimed.claimed.filter((p) => p.attempts === 1)).toHaveLength(5);
  });
});
