// A throwaway database on the machine's PostgreSQL (127.0.0.1:5432, trust), migrated to the latest schema.
import { sql, type Kysely } from 'kysely';
import { startPendingDeliveries } from '../../lib/db/repositories/deliveries.ts';
import { createDatabaseOn, type OwnDatabase } from '../../test/support/database-on.ts';

export function ownDb(prefix: string): Promise<OwnDatabase> {
  return createDatabaseOn(process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres', prefix, { max: 4 });
}

export const TASK_QUEUE = 'rev-intake';

/** Inserts an unstarted GitHub intake row as the receiver would, received `ageMs` ago by the database's clock. */
export async function insertRow(db: Kysely<any>, deliveryId: string, ageMs = 0, extra: Record<string, unknown> = {}) {
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts, next_attempt_at)
    values ('github', ${deliveryId}, '[]'::jsonb, ${JSON.stringify({ taskQueue: TASK_QUEUE, summary: { events: 0, kinds: {}, repositories: [] } })}::jsonb,
            now() - ${ageMs} * interval '1 millisecond', ${extra.attempts ?? 0}, ${extra.nextAttemptAt ?? null})`.execute(db);
}

/**
 * Times `rounds` claims of 50 rows of TASK_QUEUE through `executor` (a pg client, or one that rewrites
 * the statements), each row answered `outcome`; throws when a claim locks fewer than `expected`.
 */
export async function timeClaims(executor: Parameters<typeof startPendingDeliveries>[0], outcome: Parameters<typeof startPendingDeliveries>[3], expected = 50, rounds = 5): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    const { locked } = await startPendingDeliveries(executor, TASK_QUEUE, 50, outcome);
    times.push(performance.now() - t);
    if (locked < expected) throw new Error(`claimed ${locked}`);
  }
  return times;
}
