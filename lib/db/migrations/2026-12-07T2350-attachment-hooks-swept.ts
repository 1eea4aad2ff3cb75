import { type Kysely, sql } from 'kysely';

/**
 * When the hook-health pass last swept the hooks at forgelink's delivery URL off a repository that
 * is not attached (its attach failed, or a run was terminated half-way): the sweep is due once per
 * change of the attachment's status (hooks_swept_at null or before updated_at), see
 * pendingHookSweepsPage (lib/db/repositories/attachments.ts). Nullable, no default: adding it
 * rewrites nothing; every attachment failed before it is due for one sweep.
 *
 * As 2026-12-07T1300-dispatch-attempt-retry-after: under a lock timeout, so that an old pod's open
 * transaction on attachments fails the migration (retried by the deploy) instead of queueing every
 * reader and writer of the table behind it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments add column hooks_swept_at timestamptz`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments drop column hooks_swept_at`.execute(db);
}
