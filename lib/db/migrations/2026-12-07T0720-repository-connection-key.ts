import { type Kysely, sql } from 'kysely';

/**
 * A repository row names its connection and organization through one foreign key, (connection_id,
 * organization_id) → connections (id, organization_id), in place of one to each. PostgreSQL checks
 * a foreign key row by row (a query that locks the parent row), so a first listing of 10,000
 * repositories ran 20,000 checks, every one of an organization's listings locking the same
 * organization row; now 10,000, about a tenth of the database's CPU for those writes (issue 16).
 * The key is also stricter: a repository's organization must be its connection's. Deleting an
 * organization still removes its repositories (through its connections, each on delete cascade).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table connections add constraint connections_id_organization unique (id, organization_id)`.execute(db);
  // Added unchecked and then validated: the check reads every row without holding writes back.
  await sql`
    alter table repositories add constraint repositories_connection_organization_fkey
      foreign key (connection_id, organization_id) references connections (id, organization_id) on delete cascade not valid
  `.execute(db);
  await sql`alter table repositories validate constraint repositories_connection_organization_fkey`.execute(db);
  await sql`alter table repositories drop constraint repositories_connection_id_fkey`.execute(db);
  await sql`alter table repositories drop constraint repositories_organization_id_fkey`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table repositories add constraint repositories_organization_id_fkey foreign key (organization_id) references organizations (id) on delete cascade`.execute(db);
  await sql`alter table repositories add constraint repositories_connection_id_fkey foreign key (connection_id) references connections (id) on delete cascade`.execute(db);
  await sql`alter table repositories drop constraint repositories_connection_organization_fkey`.execute(db);
  await sql`alter table connections drop constraint connections_id_organization`.execute(db);
}
