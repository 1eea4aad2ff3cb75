// What the receivers' backlog measure of one organization costs PostgreSQL with N unstarted rows of
// its connection: count and stored bytes (pg_column_size) of at most `cap` rows (organizationBacklog,
// the receivers' own statement), through webhook_deliveries_connection_backlog.
// Run: npx tsx bench/intake/backlog-measure-cost.mts [N=100000] [cap=100001]
import { sql } from 'kysely';
import { organizationBacklog } from '../../lib/db/repositories/deliveries.ts';
import { ownDb } from './own-db.mts';

const n = Number(process.argv[2] ?? 100_000);
const cap = Number(process.argv[3] ?? 100_001);
const { db, drop } = await ownDb('fair_measure');
try {
  const org = await sql<{ id: string }>`insert into organizations (slug, name) values ('m', 'm') returning id`.execute(db);
  const cn = await sql<{ id: string }>`insert into connections (organization_id, provider, base_url, status) values (${org.rows[0]!.id}, 'gitlab', 'https://gitlab.example.com', 'active') returning id`.execute(db);
  const connectionId = cn.rows[0]!.id;
  const start = JSON.stringify({ taskQueue: 'q', summary: { events: 1 } });
  const events = JSON.stringify([{ provider: 'gitlab', kind: 'push', repository: { externalId: '1', fullName: 'group/project' }, ref: { type: 'branch', name: 'main', before: 'a'.repeat(40), after: 'b'.repeat(40) } }]);
  await sql`insert into webhook_deliveries (provider, delivery_id, connection_id, events, start) select 'gitlab', 'd-' || i, ${connectionId}, ${events}::jsonb, ${start}::jsonb from generate_series(1, ${n}) i`.execute(db);
  await sql`vacuum analyze webhook_deliveries`.execute(db);
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    const measured = await organizationBacklog(db, org.rows[0]!.id, cap);
    times.push(performance.now() - t);
    if (i === 0) console.log(measured);
  }
  console.log(`${n} unstarted rows of one organization's connection, measured up to ${cap}: ${times.map((t) => t.toFixed(1)).join(', ')} ms`);
} finally {
  await drop();
}
