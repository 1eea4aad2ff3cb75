import { type Kysely, sql } from 'kysely';

/**
 * Indexes on tables that grow without bound in production (events, webhook_deliveries), built with `create index
 * concurrently` after the migrations: a plain `create index` in a migration would block every write
 * to the table while it builds (the event runs' recordings, minutes on a large table), and
 * `concurrently` cannot run inside the migrations' transaction. Each is built once and is then left
 * alone; one whose build was cut short (left invalid by PostgreSQL) is dropped and built again.
 * A down migration that drops the table drops its index with it.
 */
export const CONCURRENT_INDEXES: readonly { name: string; table: string; definition: string }[] = [
  {
    // events.repository_id references repositories(id) ON DELETE SET NULL: without an index on it,
    // every repository row deleted (the vanished-row purge, a disconnect's purge of its cache) made
    // PostgreSQL read the whole events table to find rows to update (1,000 rows took 46 s against
    // 200,000 events). Only rows that name a repository are in it.
    name: 'events_repository',
    table: 'events',
    definition: 'events (repository_id) where repository_id is not null',
  },
  // The intake relay's claim and the receivers' backlog measure (migration 2026-12-07T2300 says
  // what each serves). They index only unstarted rows, but their build reads the whole intake
  // table (a week of deliveries): a plain `create index` holds every receiver's INSERT for that
  // long, each answered 503 after its lock deadline (2 s), which GitLab counts towards disabling
  // the hook. Built concurrently, deliveries are stored while they build.
  {
    name: 'webhook_deliveries_due',
    table: 'webhook_deliveries',
    definition: `webhook_deliveries ((start->>'taskQueue'), (coalesce(start->>'organizationId', connection_id::text, provider)), received_at) where started_at is null and next_attempt_at is null`,
  },
  {
    name: 'webhook_deliveries_retry_due',
    table: 'webhook_deliveries',
    definition: `webhook_deliveries ((start->>'taskQueue'), next_attempt_at) where started_at is null and next_attempt_at is not null`,
  },
  {
    name: 'webhook_deliveries_connection_backlog',
    table: 'webhook_deliveries',
    definition: 'webhook_deliveries (connection_id) where started_at is null and connection_id is not null',
  },
];

/** Builds the indexes of CONCURRENT_INDEXES that are missing or invalid; returns the names built. */
export async function ensureConcurrentIndexes(db: Kysely<any>): Promise<string[]> {
  const built: string[] = [];
  for (const index of CONCURRENT_INDEXES) {
    const { rows } = await sql<{ valid: boolean }>`
      select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid
      join pg_namespace n on n.oid = c.relnamespace
      where c.relname = ${index.name} and n.nspname = current_schema()`.execute(db);
    if (rows[0]?.valid) continue;
    if (rows[0]) await sql`drop index concurrently if exists ${sql.id(index.name)}`.execute(db);
    await sql`create index concurrently if not exists ${sql.id(index.name)} on ${sql.raw(index.definition)}`.execute(db);
    built.push(index.name);
  }
  return built;
}
