import { type Kysely, sql } from 'kysely';

/**
 * One index that serves the repository picker, in place of three that did not. The picker pages
 * through an organization's visible repositories in (project or '', full name, id) order with a
 * keyset cursor; none of the earlier indexes had that order (the project column was not wrapped in
 * the coalesce the query sorts by), so every page scanned and sorted the whole table. This one has
 * the exact order and holds only visible rows, so a page is a range read of `limit` entries.
 * Dropping the three also means a repository written during a refresh updates four indexes, not six.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`create index repositories_picker on repositories (organization_id, (coalesce(project, '')), full_name, id) where vanished_at is null`.execute(db);
  for (const index of ['repositories_org_full_name', 'repositories_org_project_name', 'repositories_org_full_name_lower']) {
    await db.schema.dropIndex(index).execute();
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('repositories_org_full_name').on('repositories').columns(['organization_id', 'full_name', 'id']).execute();
  await db.schema.createIndex('repositories_org_project_name').on('repositories').columns(['organization_id', 'project', 'full_name', 'id']).execute();
  await sql`create index repositories_org_full_name_lower on repositories (organization_id, lower(full_name))`.execute(db);
  await db.schema.dropIndex('repositories_picker').execute();
}
