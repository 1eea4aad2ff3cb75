// A throwaway database on the machine's PostgreSQL (127.0.0.1:5432, trust), migrated to the latest schema.
import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import { createDb } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';

export async function ownDb(prefix: string): Promise<{ db: Kysely<any>; url: string; drop(): Promise<void> }> {
  const serverUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  const server = createDb(serverUrl, { max: 1 });
  await sql`create database ${sql.id(name)}`.execute(server);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const db = createDb(url.toString(), { max: 4 });
  await migrateToLatest(db);
  return {
    db,
    url: url.toString(),
    async drop() {
      await db.destroy();
      await sql`drop database if exists ${sql.id(name)} with (force)`.execute(server);
      await server.destroy();
    },
  };
}

export const TASK_QUEUE = 'rev-intake';

/** Inserts an unstarted GitHub intake row as the receiver would, received `ageMs` ago by the database's clock. */
export async function insertRow(db: Kysely<any>, deliveryId: string, ageMs = 0, extra: Record<string, unknown> = {}) {
  await sql`insert into webhook_deliveries (provider, delivery_id, events, start, received_at, attempts, next_attempt_at)
    values ('github', ${deliveryId}, '[]'::jsonb, ${JSON.stringify({ taskQueue: TASK_QUEUE, summary: { events: 0, kinds: {}, repositories: [] } })}::jsonb,
            now() - ${ageMs} * interval '1 millisecond', ${extra.attempts ?? 0}, ${extra.nextAttemptAt ?? null})`.execute(db);
}
