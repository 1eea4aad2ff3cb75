import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Logger } from '../logger.ts';
import { QUERY_READ_TIMEOUT_MESSAGE } from './errors.ts';
import type { Database } from './schema.ts';

export type Db = Kysely<Database>;

export interface DbOptions {
  max?: number;
  /** Where a failed idle connection is reported. */
  logger?: Pick<Logger, 'warn'>;
  /** Told each time the pool hands out a connection (the ingest benchmark's acknowledgement trace, api/ack-trace.ts). */
  onCheckout?: () => void;
  /**
   * How long a connect and each statement may take (the API's pool: database.*TimeoutSeconds).
   * Without it nothing is bounded: the migrations' pool (a migration and `create index
   * concurrently` can legitimately run for minutes) and the worker's (its activities have their
   * own timeouts).
   */
  deadlines?: DbDeadlines;
}

/**
 * The deadlines of a pool whose statements run on a request's behalf, in milliseconds (whole).
 * Chosen to answer a request promptly when PostgreSQL hangs instead of refusing:
 * - `connectMs`: a new connection's TCP connect, TLS and authentication, and the wait for a
 *   pooled one when all are taken (pg-pool's connectionTimeoutMillis covers both): an address
 *   that drops packets, a server that accepts and never answers, a pool whose connections are stuck.
 * - `statementMs`: PostgreSQL's statement_timeout (57014), set at connect as a startup parameter:
 *   the server cancels the statement, so it also stops spending PostgreSQL's time, and the
 *   connection stays usable.
 * - `lockMs`: PostgreSQL's lock_timeout (55P03): a statement waiting for a lock someone holds (a
 *   migration's, an operator's `lock table`) gives up sooner than one that is slow for its work.
 * - the client's own read deadline, statementMs + QUERY_READ_MARGIN_MS (pg's query_timeout): a
 *   network path that went silent after connecting, or a server past its statement_timeout that
 *   does not answer (a pooler that dropped the startup parameters, a wedged backend). The
 *   connection is then cut and dropped from the pool, never handed out again with its statement
 *   still waiting for an answer.
 */
export interface DbDeadlines {
  connectMs: number;
  statementMs: number;
  lockMs: number;
}

/** How much longer than statement_timeout the client waits for an answer before it gives up on the connection. */
export const QUERY_READ_MARGIN_MS = 1000;

/** The API pool's deadlines from the config's database.*TimeoutSeconds (lib/config.ts). */
export function deadlinesFromConfig(database: { connectTimeoutSeconds: number; statementTimeoutSeconds: number; lockTimeoutSeconds: number }): DbDeadlines {
  const ms = (seconds: number) => Math.max(1, Math.round(seconds * 1000));
  return { connectMs: ms(database.connectTimeoutSeconds), statementMs: ms(database.statementTimeoutSeconds), lockMs: ms(database.lockTimeoutSeconds) };
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

/**
 * Cuts the connection of a statement pg gave up waiting for (query_timeout): pg only stops
 * waiting, and the statement stays the connection's active one, so every later statement on it
 * (the transaction's rollback, the next request's) would queue behind an answer that may never
 * come. Cut, the next one fails at once, and the pool drops the connection when it is released
 * (and connects anew for the next request).
 */
function cutOnReadTimeout(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  client.query = ((...args: unknown[]) => {
    const result = query(...args);
    if (result instanceof Promise) {
      result.catch((error: unknown) => {
        if ((error as Error | undefined)?.message !== QUERY_READ_TIMEOUT_MESSAGE) return;
        // Ending it at once (pg destroys the socket of a client with a statement still active)
        // marks it ending before it is released, so the pool drops it instead of keeping it idle.
        // Checked out, it has no 'error' listener of the pool's: one is given, for what the cut may raise.
        client.on('error', () => {});
        void client.end().catch(() => {});
      });
    }
    return result;
  }) as typeof client.query;
}

export function createDb(connectionString: string, options: DbOptions = {}): Db {
  const { deadlines } = options;
  const pool = new pg.Pool({
    connectionString,
    max: options.max ?? 10,
    ...(deadlines
      ? { connectionTimeoutMillis: deadlines.connectMs, statement_timeout: deadlines.statementMs, lock_timeout: deadlines.lockMs, query_timeout: deadlines.statementMs + QUERY_READ_MARGIN_MS }
      : {}),
  });
  pool.on('connect', sendNamedStatements);
  if (deadlines) pool.on('connect', cutOnReadTimeout);
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
