import type { Kysely } from 'kysely';

/**
 * A listing page also remembers where it led: the page after it and the pages it let the listing
 * fetch in parallel. A GitHub page answered 304 carries no Link header, and without these a second
 * listing would have to walk its pages one by one.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('repository_listing_pages')
    .addColumn('next_cursor', 'text')
    .addColumn('fan_out', 'jsonb', (c) => c.notNull().defaultTo('[]'))
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('repository_listing_pages').dropColumn('next_cursor').dropColumn('fan_out').execute();
}
