import { sql } from 'kysely';
import { describe, expect, inject, it } from 'vitest';
import { createDb } from '../../lib/db/index.ts';

/**
 * A pooled connection that dies while idle (PostgreSQL restarted or failed over, a proxy closed it)
 * must cost one replaced connection, not the API or worker process: pg emits 'error' on the pool,
 * which ends the process when nothing listens.
 */
describe('database pool', () => {
  it('replaces an idle connection that the server ended, logging its reason without connection parameters', async () => {
    let reported: (entry: Record<string, unknown>) => void;
    const warned = new Promise<Record<string, unknown>>((resolve) => (reported = resolve));
    const db = createDb(inject('databaseUrl'), { max: 1, logger: { warn: (entry: object) => reported(entry as Record<string, unknown>) } as never });
    const killer = createDb(inject('databaseUrl'), { max: 1 });
    try {
      const { rows } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db);
      await sql`select pg_terminate_backend(${rows[0]!.pid})`.execute(killer);
      const entry = await warned;
      expect(entry).toEqual({ code: '57P01', reason: expect.stringContaining('terminating connection') });
      const again = await sql<{ one: number }>`select 1 as one`.execute(db);
      expect(again.rows).toEqual([{ one: 1 }]);
    } finally {
      await Promise.all([db.destroy(), killer.destroy()]);
    }
  });
});
