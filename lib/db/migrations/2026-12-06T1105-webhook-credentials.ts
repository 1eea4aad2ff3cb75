import { type Kysely, sql } from 'kysely';

/**
 * Per-connection webhook credentials (GitLab, Bitbucket DC, Azure DevOps). Until now every hook
 * carried the one secret configured per provider, which every tenant could read from its own hook
 * and use to forge deliveries for another. From now on each connection has its own credential,
 * versioned so a rotation can keep the old one accepted until every hook carries the new one.
 *
 * Existing data: every hook recorded so far carries the global secret. Its row keeps
 * `credential_version` null, which marks it legacy: deliveries verified with the global secret act
 * only on attachments holding such a hook, until the reconcile replaces it. Connections made
 * before get their credential from the first activity that needs one (the migration has no key to
 * seal it with).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('webhook_credentials')
    .addColumn('connection_id', 'uuid', (c) => c.notNull().references('connections.id').onDelete('cascade'))
    // 1, 2, …: the highest is the one new hooks get; every row is accepted.
    .addColumn('version', 'integer', (c) => c.notNull())
    // Azure DevOps Basic auth user (not secret on its own); null for GitLab and Bitbucket.
    .addColumn('basic_auth_user', 'text')
    // Sealed (AES-256-GCM) random secret: GitLab token, Bitbucket HMAC key, Azure DevOps password.
    .addColumn('secret', 'text', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint('webhook_credentials_pk', ['connection_id', 'version'])
    .execute();

  // Which credential version the hook carries; null: the global configured secret (a legacy hook).
  await db.schema.alterTable('hooks').addColumn('credential_version', 'integer').execute();

  // Bodies already recorded per connection, so a replay under a new delivery id records nothing.
  await db.schema
    .createTable('delivery_digests')
    .addColumn('connection_id', 'uuid', (c) => c.notNull().references('connections.id').onDelete('cascade'))
    .addColumn('digest', 'text', (c) => c.notNull())
    .addColumn('delivery_id', 'text', (c) => c.notNull())
    .addColumn('received_at', 'timestamptz', (c) => c.notNull())
    .addPrimaryKeyConstraint('delivery_digests_pk', ['connection_id', 'digest'])
    .execute();
  await db.schema.createIndex('delivery_digests_received').on('delivery_digests').columns(['connection_id', 'received_at']).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('delivery_digests').execute();
  await db.schema.alterTable('hooks').dropColumn('credential_version').execute();
  await db.schema.dropTable('webhook_credentials').execute();
}
