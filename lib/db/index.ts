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

/** Statement text → its name, for statements sent as named prepared statements (namedStatement). */
const statementNames = new Map<string, string>();

/**
 * Marks a statement (constant text, sent with CompiledQuery.raw) to be sent as a named prepared
 * statement: each pooled connection parses it once and then only binds and runs it, and the server
 * plans it once it finds the generic plan as good as the custom ones (plan_cache_mode auto). For the
 * statements a listing sends for every page: parsing and planning them again each time was ~10 % of
 * the database's CPU for a first listing (bench/listing-writes.ts). Returns the text. A pooler in
 * front of PostgreSQL must keep a connection's prepared statements (PgBouncer: session pooling, or
 * max_prepared_statements in transaction pooling).
 */
export function namedStatement(name: string, text: string): string {
  const known = statementNames.get(text);
  if (known !== undefined && known !== name) throw new Error(`statement ${name} is already named ${known}`);
  statementNames.set(text, name);
  return text;
}

/** Sends the texts namedStatement named under their names on this connection (Kysely sends a text and its parameters). */
function sendNamedStatements(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  client.query = ((config: unknown, values?: unknown, callback?: unknown) => {
    const name = typeof config === 'string' ? statementNames.get(config) : undefined;
    return name === undefined ? query(config, values, callback) : query({ name, text: config, values }, callback);
  }) as typeof client.query;
}

export function createDb(connectionString: string, options: DbOptions = {}): Db {
  const pool = new pg.Pool({ connectionString, max: options.max ?? 10 });
  pool.on('connect', sendNamedStatements);
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
