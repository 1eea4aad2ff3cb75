import { type Kysely, sql } from 'kysely';

/**
 * When the hook-health pass last started a sweep of unattached hooks on the attachment's repository
 * (each attempt of the sweep sets it before any provider call, markHookSweepTried): the pick
 * (pendingHookSweepsPage) takes the ones not tried since their status changed first, then the
 * longest since tried, so a sweep that never completed (its reconcile failed at workflow level: every
 * attempt timed out) goes behind the connection's other due ones instead of being picked first every
 * night. Nullable, no default: adding it rewrites nothing.
 *
 * As 2026-12-07T2350-attachment-hooks-swept: under a lock timeout.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments add column hooks_sweep_tried_at timestamptz`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await sql`alter table attachments drop column hooks_sweep_tried_at`.execute(db);
}
