import { randomBytes } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
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
 * A database of its own on the PostgreSQL server at `serverUrl` (any database of it), named
 * `prefix_<random>`: createOwnDatabase's, outside vitest too (the intake's bench scripts).
 */
export async function createDatabaseOn(serverUrl: string, prefix: string, { max = 1, migrate = true }: { max?: number; migrate?: boolean } = {}): Promise<OwnDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
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
