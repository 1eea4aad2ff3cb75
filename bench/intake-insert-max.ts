/**
 * The intake INSERT (storeDelivery) of a delivery whose events are as large as the receivers store:
 * twice webhooks.maxBodyBytes of UTF-8 JSON (50 MiB at the default 25 MiB), against the
 * statement_timeout an operator may set (forgelink sets none; PostgreSQL's default is none): a
 * 57014 there answers 503, and every redelivery of the same delivery would meet it again. Three
 * shapes: many short events, events named in 3-byte characters, and few events with long fields.
 * The wall time of the statement and the backend's CPU (pg_stat_activity's pid, /proc).
 *
 * Run: npx tsx bench/intake-insert-max.ts [maxBodyMiB=25] [rounds=3] [provider=bitbucket] [deadlines=none|api]
 * (`api`: through the API's pool with the default database.*TimeoutSeconds, as the receivers store it.)
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { sql } from 'kysely';
import { DATABASE_DEADLINE_DEFAULTS } from '../lib/config.ts';
import { createDb, deadlinesFromConfig } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { serializeEvents, storeDelivery } from '../lib/db/repositories/deliveries.ts';
import type { NormalizedEvent, Provider } from '../lib/domain.ts';
import { testPostgres } from '../test/support/postgres.ts';

const maxBodyBytes = Number(process.argv[2] ?? 25) * 1024 * 1024;
const rounds = Number(process.argv[3] ?? 3);
const provider = (process.argv[4] ?? 'bitbucket') as Provider;
const withDeadlines = process.argv[5] === 'api';
const limit = 2 * maxBodyBytes;

/** As many events of `make` as fit in the limit (serializeEvents' bytes). */
function fill(make: (i: number) => NormalizedEvent): { events: NormalizedEvent[]; json: string } {
  const one = Buffer.byteLength(JSON.stringify(make(100_000)), 'utf8') + 1;
  let n = Math.floor(limit / one);
  for (;;) {
    const events = Array.from({ length: n }, (_, i) => make(i));
    const json = serializeEvents(events, limit);
    if (json !== undefined) return { events, json };
    n = Math.floor(n * 0.995);
  }
}

const ideographs = (n: number) => Array.from({ length: n }, (_, i) => String.fromCharCode(0x4e00 + ((i * 7919) % 20000))).join('');
const base = (i: number, fullName: string, sender: string): NormalizedEvent => ({
  provider,
  deliveryId: 'd',
  kind: 'push',
  repository: { externalId: '1', fullName },
  ref: { type: 'branch', name: String(i), before: 'a', after: 'b' },
  sender,
});
const shapes = {
  shortEvents: fill((i) => base(i, 'P/r', 'a')),
  ideographNames: fill((i) => base(i, `P/${ideographs(330)}`, ideographs(85))),
  longFields: fill((i) => ({ ...base(i, `P/${'r'.repeat(1000)}`, 's'.repeat(255)), ref: { type: 'branch', name: 'x'.repeat(255), before: 'a'.repeat(40), after: 'b'.repeat(40) } })),
};

function backendCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const postgres = await testPostgres();
const admin = createDb(postgres.adminUrl, { max: 1 });
const database = `forgelink_insert_${Date.now()}`;
await sql`create database ${sql.id(database)}`.execute(admin);
const url = new URL(postgres.adminUrl);
url.pathname = `/${database}`;
const db = createDb(url.toString(), { max: 1, ...(withDeadlines ? { deadlines: deadlinesFromConfig(DATABASE_DEADLINE_DEFAULTS) } : {}) });
try {
  await migrateToLatest(db);
  const pid = (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows[0]!.pid;
  const settings = (await sql<{ statement_timeout: string }>`show statement_timeout`.execute(db)).rows[0]!;
  console.log(JSON.stringify({ provider, maxBodyBytes, eventsLimitBytes: limit, statementTimeout: settings.statement_timeout }));
  for (let round = 0; round < rounds; round++) {
    for (const [shape, { events, json }] of Object.entries(shapes)) {
      const cpu0 = backendCpuMs(pid);
      const t0 = performance.now();
      const outcome = await storeDelivery(db, { provider, deliveryId: randomUUID(), eventsJson: json }).then(
        () => 'stored',
        (error: Error & { code?: string }) => `failed: ${error.code ?? ''} ${error.message}`,
      );
      const wallMs = Math.round(performance.now() - t0);
      console.log(JSON.stringify({ round: round + 1, shape, events: events.length, utf8Bytes: Buffer.byteLength(json, 'utf8'), wallMs, backendCpuMs: backendCpuMs(pid) - cpu0, outcome }));
    }
  }
} finally {
  await db.destroy();
  await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  await admin.destroy();
}
