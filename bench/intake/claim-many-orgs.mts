// The fair claim's cost with many organizations waiting: `orgs` organizations with `per` due rows each
// (its walk makes one index descent per organization), one claim of 50 timed 5 times, and its plan's execution time.
// Run: npx tsx bench/intake/claim-many-orgs.mts [orgs=1000] [per=200]
import { sql } from 'kysely';
import pg from 'pg';
import { claimStatement } from '../../lib/db/repositories/deliveries.ts';
import { ownDb, TASK_QUEUE, timeClaims } from './own-db.mts';

const orgs = Number(process.argv[2] ?? 1000);
const per = Number(process.argv[3] ?? 200);
const { db, url, drop } = await ownDb('fair_orgs');
try {
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at)
    select 'github', 'd-' || o || '-' || i, '[]'::jsonb,
           jsonb_build_object('taskQueue', ${TASK_QUEUE}::text, 'summary', '{}'::jsonb, 'organizationId', md5(o::text)),
           now() - interval '1 hour' + (i * ${orgs} + o) * interval '1 millisecond'
    from generate_series(1, ${orgs}) o, generate_series(1, ${per}) i`.execute(db);
  await sql`analyze webhook_deliveries`.execute(db);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const times = await timeClaims(client, async (p) => p.map(() => ({ started: true as const })));
  const plan = await client.query(`explain (analyze) ${claimStatement(`'${TASK_QUEUE}'`, 50)}`);
  await client.end();
  console.log(`${orgs} organizations x ${per} due rows: one claim of 50 (and its outcomes) took ${times.map((t) => t.toFixed(0)).join(', ')} ms; ${plan.rows.map((r) => r['QUERY PLAN']).find((l: string) => /Execution/.test(l))}`);
} finally {
  await drop();
}
