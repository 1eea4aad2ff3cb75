import { type Kysely, sql } from 'kysely';

/**
 * A connection's listing, one row per connection: who is listing it now (a lease, so two refreshes
 * never list one connection at once now that a refresh lists its connections itself instead of in
 * a child workflow per connection, whose id gave that guarantee) and what its last complete
 * listing found (the counts the child workflow's result used to carry).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('repository_listings')
    .addColumn('connection_id', 'uuid', (c) => c.primaryKey().references('connections.id').onDelete('cascade'))
    // The refresh run listing the connection now, and until when its lease holds unless renewed; null: none.
    .addColumn('holder', 'text')
    .addColumn('held_until', 'timestamptz')
    .addColumn('last_listing', 'jsonb')
    .addColumn('listed_at', 'timestamptz')
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('repository_listings').execute();
}
