import { type Kysely, sql } from 'kysely';

/**
 * Organization tokens get a life cycle: a name to tell them apart in the list, an optional expiry
 * (checked on every request) and when each was last used (written at most once a minute). Existing
 * tokens are named after their id and never expire; revoking deletes the row.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('api_tokens')
    .addColumn('name', 'text')
    .addColumn('expires_at', 'timestamptz')
    .addColumn('last_used_at', 'timestamptz')
    .execute();
  await sql`update api_tokens set name = 'token-' || left(id::text, 8)`.execute(db);
  await db.schema.alterTable('api_tokens').alterColumn('name', (c) => c.setNotNull()).execute();
  await db.schema.createIndex('api_tokens_org').on('api_tokens').columns(['organization_id', 'created_at']).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('api_tokens_org').execute();
  await db.schema.alterTable('api_tokens').dropColumn('name').dropColumn('expires_at').dropColumn('last_used_at').execute();
}
