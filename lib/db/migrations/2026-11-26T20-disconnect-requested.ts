import type { Kysely } from 'kysely';

/**
 * When a disconnect began. From then on the connection takes no new attach (API 409, and attach
 * activities refuse), so no hook can be created after the disconnect listed what to detach: a hook
 * made then would outlive the credential that could remove it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('connections').addColumn('disconnect_requested_at', 'timestamptz').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('connections').dropColumn('disconnect_requested_at').execute();
}
