// Finding (cost): the claim's only index is (received_at) where started_at is null; rows that are not
// due (failing rows put off up to 10 min) or belong to another task queue are walked and skipped by
// every round of every relay, heap fetch each (start->>'taskQueue', next_attempt_at). Measures one
// claim with N such rows ahead of 50 due ones.
// Run: npx tsx bench/intake/claim-scan-cost.mts [N=200000]   (copied from branch rev-intake, 9360ef9; EXPLAINs the tree's own claim)
import { sql } from 'kysely';
import pg from 'pg';
import * as deliveries from '../../lib/db/repositories/deliveries.ts';
import { ownDb, TASK_QUEUE, timeClaims } from './own-db.mts';

const n = Number(process.argv[2] ?? 200_000);
const { db, url, drop } = await ownDb('rev_scan');
try {
  const start = JSON.stringify({ taskQueue: TASK_QUEUE, summary: { events: 1, kinds: { push: 1 }, repositories: ['acme/web'] } });
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts, next_attempt_at, last_error)
    select 'github', 'failing-' || i, '[{"kind":"push"}]'::jsonb, ${start}::jsonb, now() - interval '1 hour' + i * interval '1 millisecond', 5,
           now() + interval '10 minutes', 'INVALID_ARGUMENT: search attribute ForgelinkRepositoryNames is not defined'
    from generate_series(1, ${n}) i`.execute(db);
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start) select 'github', 'due-' || i, '[]'::jsonb, ${start}::jsonb from generate_series(1, 50) i`.execute(db);
  await sql`analyze webhook_deliveries`.execute(db);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  // Nothing started: every claimed row fails on its own (so the due rows stay due for the next round only after 1 s; fine for timing the claim).
  const times = await timeClaims({ query: (q: string) => client.query(q.replace(/^\s*update webhook_deliveries w[\s\S]*?;/, '')), escapeLiteral: (v) => client.escapeLiteral(v) }, async (p) => p.map(() => ({ started: false as const, error: 'x', retryInMs: null })));
  // The claim as this tree writes it (before the fair claim: the global FIFO statement).
  const statement = 'claimStatement' in deliveries ? (deliveries as any).claimStatement(`'${TASK_QUEUE}'`, 50) : `select ctid from webhook_deliveries where started_at is null and start->>'taskQueue' = '${TASK_QUEUE}' and (next_attempt_at is null or next_attempt_at <= now()) order by received_at limit 50 for update skip locked`;
  const plan = await client.query(`explain (analyze, buffers) ${statement}`);
  await client.end();
  console.log(`${n} not-due rows ahead: one claim of 50 took ${times.map((t) => t.toFixed(0)).join(', ')} ms`);
  console.log(plan.rows.map((r) => r['QUERY PLAN']).filter((l: string) => /actual|Execution|Planning/.test(l)).join('\n'));
} finally {
  await drop();
}
