import { type Kysely, sql } from 'kysely';

/**
 * The last hook-health check of an attachment (the nightly reconcile): when, what it found
 * (healthy, repaired, failing) and why, as GET …/attachment shows it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('attachments')
    .addColumn('hook_health_checked_at', 'timestamptz')
    .addColumn('hook_health_status', 'text', (col) => col.check(sql`hook_health_status in ('healthy','repaired','failing')`))
    .addColumn('hook_health_reason', 'text')
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('attachments').dropColumn('hook_health_checked_at').dropColumn('hook_health_status').dropColumn('hook_health_reason').execute();
}
