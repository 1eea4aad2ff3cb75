import type { Kysely, Transaction } from 'kysely';
import type { EventKind } from '../../domain.ts';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** A subscriber as the API shows it: never its secret. */
export interface PublicSubscriber {
  id: string;
  organizationId: string;
  url: string;
  /** Empty: every kind. */
  kinds: EventKind[];
  /** Empty: every ref (and events without one). */
  refGlobs: string[];
  createdAt: Date;
}

const PUBLIC_COLUMNS = ['id', 'organization_id as organizationId', 'url', 'kinds', 'ref_globs as refGlobs', 'created_at as createdAt'] as const;

export async function insertSubscriber(
  db: Executor,
  row: { id: string; organizationId: string; url: string; sealedSecret: string; kinds: EventKind[]; refGlobs: string[] },
): Promise<PublicSubscriber> {
  return db
    .insertInto('subscribers')
    .values({
      id: row.id,
      organization_id: row.organizationId,
      url: row.url,
      secret: row.sealedSecret,
      kinds: JSON.stringify(row.kinds),
      ref_globs: JSON.stringify(row.refGlobs),
    })
    .returning(PUBLIC_COLUMNS)
    .executeTakeFirstOrThrow();
}

export async function listSubscribers(db: Executor, organizationId: string): Promise<PublicSubscriber[]> {
  return db.selectFrom('subscribers').select(PUBLIC_COLUMNS).where('organization_id', '=', organizationId).orderBy('created_at').orderBy('id').execute();
}

export async function findSubscriber(db: Executor, organizationId: string, id: string): Promise<PublicSubscriber | undefined> {
  return db.selectFrom('subscribers').select(PUBLIC_COLUMNS).where('organization_id', '=', organizationId).where('id', '=', id).executeTakeFirst();
}

/** Deletes a subscriber and, with it, the record of its dispatch attempts. */
export async function deleteSubscriber(db: Executor, organizationId: string, id: string): Promise<boolean> {
  const result = await db.deleteFrom('subscribers').where('organization_id', '=', organizationId).where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/** Every subscriber of these organizations, with their filters: the event workflow matches events against them. */
export async function listSubscribersOf(db: Executor, organizationIds: readonly string[]): Promise<PublicSubscriber[]> {
  if (organizationIds.length === 0) return [];
  return db.selectFrom('subscribers').select(PUBLIC_COLUMNS).where('organization_id', 'in', [...new Set(organizationIds)]).orderBy('created_at').orderBy('id').execute();
}

/** The subscriber with its sealed secret, for the dispatch activity only. */
export async function loadSubscriberForDispatch(db: Executor, id: string) {
  return db.selectFrom('subscribers').select(['id', 'organization_id', 'url', 'secret']).where('id', '=', id).executeTakeFirst();
}

export interface DispatchAttempt {
  subscriberId: string;
  attempt: number;
  succeeded: boolean;
  statusCode: number | null;
  error: string | null;
  durationMs: number | null;
  attemptedAt: Date;
}

/** Records one attempt's outcome; a re-run of the same attempt (worker crash) overwrites it. */
export async function recordDispatchAttempt(
  db: Executor,
  row: { subscriberId: string; eventId: string; attempt: number; succeeded: boolean; statusCode?: number; error?: string; durationMs: number },
): Promise<void> {
  const values = {
    status_code: row.statusCode ?? null,
    error: row.error ?? null,
    succeeded: row.succeeded,
    duration_ms: row.durationMs,
  };
  await db
    .insertInto('dispatch_attempts')
    .values({ subscriber_id: row.subscriberId, event_id: row.eventId, attempt: row.attempt, ...values })
    .onConflict((oc) => oc.columns(['subscriber_id', 'event_id', 'attempt']).doUpdateSet(values))
    .execute();
}

/** Whether the subscriber already acknowledged the event: it is then not sent again. */
export async function hasSucceededDispatch(db: Executor, subscriberId: string, eventId: string): Promise<boolean> {
  const row = await db
    .selectFrom('dispatch_attempts')
    .select('id')
    .where('subscriber_id', '=', subscriberId)
    .where('event_id', '=', eventId)
    .where('succeeded', '=', true)
    .limit(1)
    .executeTakeFirst();
  return row !== undefined;
}

export async function listDispatchAttempts(db: Executor, eventId: string): Promise<DispatchAttempt[]> {
  return db
    .selectFrom('dispatch_attempts')
    .select(['subscriber_id as subscriberId', 'attempt', 'succeeded', 'status_code as statusCode', 'error', 'duration_ms as durationMs', 'attempted_at as attemptedAt'])
    .where('event_id', '=', eventId)
    .orderBy('attempted_at')
    .orderBy('subscriber_id')
    .orderBy('attempt')
    .execute();
}
