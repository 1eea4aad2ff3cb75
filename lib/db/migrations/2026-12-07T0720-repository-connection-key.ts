import { type Kysely, sql } from 'kysely';

/**
 * A repository row names its connection and organization through one foreign key, (connection_id,
 * organization_id) → connections (id, organization_id), in place of one to each. PostgreSQL checks
 * a foreign key row by row (a query that locks the parent row), so a first listing of 10,000
 * repositories ran 20,000 checks, every one of an organization's listings locking the same
 * organization row; now 10,000, about a tenth of the database's CPU for those writes (issue 16).
 * The key is also stricter: a repository's organization must be its connection's. Deleting an
 * organization still removes its repositories (through its connections, each on delete cascade).
 *
 * Every pending migration runs in one transaction (lib/db/migrate.ts), while the previous release's
 * pods still serve, so nothing here reads the repositories table: the key is added NOT VALID (rows
 * written from now on are checked; those already there were written by code that takes the
 * organization from the connection row) and left so. Validating it in this transaction would hold
 * the ACCESS EXCLUSIVE lock the unique constraint takes on `connections` (every webhook and API
 * request reads it) for a scan of every repository row; an operator may validate it at any time
 * with `alter table repositories validate constraint repositories_connection_organization_fkey`,
 * which lets reads and writes go on. What remains is metadata and a unique index over
 * `connections` (at most 50 live connections an organization), under a lock timeout, so that a
 * long transaction of the old pods makes the migration fail (and the deploy retry) instead of
 * queueing every reader of these tables behind it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table connections add constraint connections_id_organization unique (id, organization_id)`.execute(db);
  await sql`
    alter table repositories add constraint repositories_connection_organization_fkey
      foreign key (connection_id, organization_id) references connections (id, organization_id) on delete cascade not valid
  `.execute(db);
  await sql`alter table repositories drop constraint repositories_connection_id_fkey`.execute(db);
  await sql`alter table repositories drop constraint repositories_organization_id_fkey`.execute(db);
}

/** The two keys back, as unchecked as the up leaves its own (no scan of the repositories). */
export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table repositories add constraint repositories_organization_id_fkey foreign key (organization_id) references organizations (id) on delete cascade not valid`.execute(db);
  await sql`alter table repositories add constraint repositories_connection_id_fkey foreign key (connection_id) references connections (id) on delete cascade not valid`.execute(db);
  await sql`alter table repositories drop constraint repositories_connection_organization_fkey`.execute(db);
  await sql`alter table connections drop constraint connections_id_organization`.execute(db);
}
