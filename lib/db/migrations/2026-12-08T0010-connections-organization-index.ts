import { type Kysely, sql } from 'kysely';

/**
 * An organization's connections by organization: the receivers' backlog bound measures an
 * organization's unstarted deliveries over its connections (organizationBacklog: `connection_id in
 * (select id from connections where organization_id = $1)`) up to once a second per organization
 * and API replica, and no index served it (`connections_org_external_key_live` is partial, for live
 * connections only; `connections_id_organization` leads with the id): each measure read every
 * connection of every tenant. Deleting an organization (its connections cascade) uses it too.
 * Connections are few (at most 50 live an organization), so the build is short; under a lock
 * timeout as the other migrations that take the receivers' tables.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`create index connections_organization on connections (organization_id)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`drop index connections_organization`.execute(db);
}
