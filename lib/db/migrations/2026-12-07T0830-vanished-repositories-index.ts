import { type Kysely, sql } from 'kysely';

/**
 * The purge of repositories vanished past their retention (purgeVanishedRepositories, after every
 * complete listing) finds a connection's long-vanished rows by this index, a range read of the rows
 * it deletes, instead of reading all of the connection's rows each time. Only vanished rows are in
 * it: visible ones, nearly all, cost it nothing when written.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`create index repositories_vanished on repositories (connection_id, vanished_at) where vanished_at is not null`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index repositories_vanished`.execute(db);
}
