import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Logger } from '../logger.ts';
import type { Database } from './schema.ts';

export type Db = Kysely<Database>;

export interface DbOptions {
  max?: number;
  /** Where a failed idle connection is reported. */
  logger?: Pick<Logger, 'warn'>;
  /** Told each time the pool hands out a connection (the ingest benchmark's acknowledgement trace, api/ack-trace.ts). */
  onCheckout?: () => void;
}

export function createDb(connectionString: string, options: DbOptions = {}): Db {
  const pool = new pg.Pool({ connectionString, max: options.max ?? 10 });
  // An idle pooled connection failed (PostgreSQL restarted or failed over, a proxy closed it): the
  // pool drops it and connects anew for the next query. Without a listener, pg's 'error' event
  // would end the process. Only the message and code are logged: the error holds the client, and
  // the client its connection parameters (the password among them).
  pool.on('error', (error: Error & { code?: string }) => {
    options.logger?.warn({ code: error.code, reason: error.message }, 'an idle database connection failed; the pool replaces it');
  });
  const { onCheckout } = options;
  if (onCheckout) {
    const connect = pool.connect.bind(pool) as () => Promise<pg.PoolClient>;
    pool.connect = (async () => {
      const client = await connect();
      onCheckout();
      return client;
    }) as typeof pool.connect;
  }
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}
