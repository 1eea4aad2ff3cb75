import type { Kysely } from 'kysely';

/**
 * A credential rotation (PUT …/connections/{id}/credential) of its own: the connection stays on its
 * old credential while the new one (in pending_credential) is validated, and the rotation's id,
 * outcome and time are kept, so only the credential that was validated is promoted.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('connections')
    .addColumn('rotation_id', 'uuid')
    .addColumn('rotation_status', 'text')
    .addColumn('rotation_reason', 'text')
    .addColumn('rotation_requested_at', 'timestamptz')
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('connections').dropColumn('rotation_id').dropColumn('rotation_status').dropColumn('rotation_reason').dropColumn('rotation_requested_at').execute();
}
