import { randomBytes } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import { inject } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';

export interface OwnDatabase {
  /** A connection pool to the test's own database. */
  db: Kysely<any>;
  /** Its connection URL (for a pool, a harness or a process of the test's own). */
  url: string;
  /** Another pool to it (another pod's, another session's), closed by `drop`. */
  pool(max?: number): Kysely<any>;
  /** Closes the pools and drops the database (other connections to it are ended). */
  drop(): Promise<void>;
}

/**
 * A database of the test file's own on the integration tests' server, for a test that counts or
 * plans what the shared database's other users would disturb (statistics, sequential scans), or
 * that migrates down. `migrate` (default true) brings it to the latest schema.
 */
export async function createOwnDatabase(prefix: string, { max = 1, migrate = true }: { max?: number; migrate?: boolean } = {}): Promise<OwnDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const serverUrl = inject('databaseUrl');
  const server = createDb(serverUrl, { max: 1 });
  await sql`create database ${sql.id(name)}`.execute(server);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const db = createDb(url.toString(), { max });
  if (migrate) await migrateToLatest(db);
  const pools: Kysely<any>[] = [db];
  return {
    db,
    url: url.toString(),
    pool(poolMax = 1) {
      const pool = createDb(url.toString(), { max: poolMax });
      pools.push(pool);
      return pool;
    },
    async drop() {
      await Promise.all(pools.map((pool) => pool.destroy()));
      await sql`drop database if exists ${sql.id(name)} with (force)`.execute(server);
      await server.destroy();
    },
  };
}
