import { type Kysely, sql } from 'kysely';

/**
 * The `state` of each GitHub install redirect, until the setup callback uses it (once) or it
 * expires: a signed state alone could be replayed for as long as it is valid. Only its SHA-256 is
 * kept.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('github_install_states')
    .addColumn('state_hash', 'text', (c) => c.primaryKey())
    .addColumn('organization_id', 'uuid', (c) => c.notNull().references('organizations.id').onDelete('cascade'))
    .addColumn('expires_at', 'timestamptz', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex('github_install_states_expires').on('github_install_states').column('expires_at').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('github_install_states').execute();
}
