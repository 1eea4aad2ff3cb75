import { type Kysely, sql } from 'kysely';

/**
 * When the hook-health pass last picked an attachment for its sweep of unattached hooks
 * (pendingHookSweepsPage sets it as it picks): the pick takes the ones not yet picked since their
 * status changed first, then the longest since picked, so a sweep that never completed (its
 * reconcile failed at workflow level, or the pass was cut short) goes behind the other due ones
 * instead of being picked first every night. Nullable, no default: adding it rewrites nothing.
 *
 * As 2026-12-07T2350-attachment-hooks-swept: under a lock timeout.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments add column hooks_sweep_picked_at timestamptz`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments drop column hooks_sweep_picked_at`.execute(db);
}
