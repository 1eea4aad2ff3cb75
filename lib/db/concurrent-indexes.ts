import { type Kysely, sql } from 'kysely';

/**
 * Indexes on tables that grow without bound in production (events), built with `create index
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
