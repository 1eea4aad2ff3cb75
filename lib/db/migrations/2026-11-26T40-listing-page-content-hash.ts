import type { Kysely } from 'kysely';

/**
 * A listing page also remembers a digest of the repositories it held. A page answered 200 with the
 * same repositories (GitLab, Bitbucket and Azure DevOps have no conditional requests) is then not
 * written at all: an upsert of unchanged rows writes no row versions, but it still locks every row
 * it meets, and each lock is a write to the table and the WAL.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('repository_listing_pages').addColumn('content_hash', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('repository_listing_pages').dropColumn('content_hash').execute();
}
