import { type Kysely, sql } from 'kysely';

/**
 * What each page of a connection's last repository listing held. It makes a listing resumable and
 * cheap to repeat: GitHub pages answered 304 still count their repositories as seen, and a listing
 * that changed nothing writes nothing. Plus when and how each connection's last refresh ended.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('repository_listing_pages')
    .addColumn('connection_id', 'uuid', (c) => c.notNull().references('connections.id').onDelete('cascade'))
    .addColumn('page_key', 'text', (c) => c.notNull())
    .addColumn('etag', 'text')
    .addColumn('external_ids', 'jsonb', (c) => c.notNull())
    .addPrimaryKeyConstraint('repository_listing_pages_pk', ['connection_id', 'page_key'])
    .execute();
  await db.schema
    .alterTable('connections')
    .addColumn('refreshed_at', 'timestamptz')
    .addColumn('refresh_error', 'text')
    .execute();
  await db.schema.createIndex('repositories_org_project_name').on('repositories').columns(['organization_id', 'project', 'full_name', 'id']).execute();
  await sql`create index repositories_org_full_name_lower on repositories (organization_id, lower(full_name))`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('repositories_org_full_name_lower').execute();
  await db.schema.dropIndex('repositories_org_project_name').execute();
  await db.schema.dropTable('repository_listing_pages').execute();
  await db.schema.alterTable('connections').dropColumn('refreshed_at').dropColumn('refresh_error').execute();
}
