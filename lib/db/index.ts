import { Kysely, PostgresDialect, type CompiledQuery } from 'kysely';
import pg from 'pg';
import type { Logger } from '../logger.ts';
import { QUERY_READ_TIMEOUT_MESSAGE, sqlStateOf } from './errors.ts';
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
   * Without it (nor `clientDeadlines`) nothing is bounded: the migrations' pool (a migration and
   * `create index concurrently` can legitimately run for minutes).
   */
  deadlines?: DbDeadlines;
  /**
   * Only the client's bounds, no server-side deadline (the worker's pool: WORKER_CLIENT_DEADLINES):
   * a connect, TCP keepalive, and a read deadline past which the connection is cut.
   */
  clientDeadlines?: ClientDeadlines;
}

/**
 * The deadlines of a pool whose statements run on a request's behalf, in milliseconds (whole).
 * Chosen to answer a request promptly when PostgreSQL hangs instead of refusing:
 * - `connectMs`: a new connection's TCP connect, TLS and authentication, and the wait for a
 *   pooled one when all are taken (pg-pool's connectionTimeoutMillis covers both): an address
 *   that drops packets, a server that accepts and never answers, a pool whose connections are stuck.
 * - `statementMs`: PostgreSQL's statement_timeout (57014), set by a `SET` on each new connection
 *   (setServerDeadlines): the server cancels the statement, so it also stops spending PostgreSQL's
 *   time, and the connection stays usable. A write whose work grows with what it sends gets more
 *   (runSizedWrite).
 * - `lockMs`: PostgreSQL's lock_timeout (55P03): a statement waiting for a lock someone holds (a
 *   migration's, an operator's `lock table`) gives up sooner than one that is slow for its work.
 * - the client's own read deadline, statementMs + QUERY_READ_MARGIN_MS (pg's query_timeout): a
 *   network path that went silent after connecting, or a server past its statement_timeout that
 *   does not answer (server deadlines off or lost behind a pooler, a wedged backend). The
 *   connection is then cut and dropped from the pool, never handed out again with its statement
 *   still waiting for an answer.
 */
export interface DbDeadlines {
  connectMs: number;
  statementMs: number;
  lockMs: number;
  /**
   * Whether PostgreSQL is told statementMs and lockMs (database.serverDeadlines): a `SET` once per
   * new connection, before its first statement (not startup parameters, which PgBouncer refuses
   * unless they are in its ignore_startup_parameters, and then drops). False: only the client's
   * deadlines (connect, read) hold; for a transaction-pooling pooler, where a session's `SET` stays
   * on whichever server connection ran it and is not on the next one. Default true.
   */
  server?: boolean;
}

/** The bounds of a pool whose statements have no server-side deadline (the worker's). */
export interface ClientDeadlines {
  connectMs: number;
  /** pg's query_timeout: past it the client stops waiting for an answer and cuts the connection. */
  readMs: number;
}

/**
 * The worker's pool (worker/main.ts). Its activities' statements are short (a page of a listing's
 * writes, purges in batches of 1,000 / 10,000 rows, a dispatch claim: milliseconds to a few
 * seconds on a loaded machine), but some wait for a row or advisory lock another transaction of
 * the worker holds, so no server deadline is set. What is bounded is an answer that never comes (a
 * silent network path, a wedged backend): without a bound the statement kept its connection and
 * its activity's slot for ever. 120 s is past every activity's own deadline (startToCloseTimeout at
 * most 2 minutes, or a 30 s heartbeat timeout for the listing, which heartbeats per page): a
 * statement still unanswered then serves an attempt Temporal has already timed out and retried.
 * 10 s to connect: as the intake relay's connection.
 */
export const WORKER_CLIENT_DEADLINES: ClientDeadlines = { connectMs: 10_000, readMs: 120_000 };

/** TCP keepalive of a bounded pool's connections: the first probe after this much idle (Node's socket.setKeepAlive), so a peer gone away is noticed on an idle connection too. */
export const KEEPALIVE_INITIAL_DELAY_MS = 10_000;

/** How much longer than statement_timeout the client waits for an answer before it gives up on the connection. */
export const QUERY_READ_MARGIN_MS = 1000;

/** The API pool's deadlines from the config's database.*TimeoutSeconds (lib/config.ts). */
export function deadlinesFromConfig(database: { connectTimeoutSeconds: number; statementTimeoutSeconds: number; lockTimeoutSeconds: number; serverDeadlines?: boolean }): DbDeadlines {
  const ms = (seconds: number) => Math.max(1, Math.round(seconds * 1000));
  return {
    connectMs: ms(database.connectTimeoutSeconds),
    statementMs: ms(database.statementTimeoutSeconds),
    lockMs: ms(database.lockTimeoutSeconds),
    ...(database.serverDeadlines === false ? { server: false } : {}),
  };
}

/**
 * How much longer a write's statement deadline gets per MiB it sends (sizedStatementMs). The intake
 * INSERT of the largest delivery (events up to twice webhooks.maxBodyBytes, 50 MiB at the default)
 * took 0.45-5.8 s on this 2-core shared machine (bench/intake-insert-max.ts, every provider, ~115 ms
 * per MiB at worst): more than twice that per MiB keeps a loaded database's honest INSERT within
 * its deadline, while one that hangs is still cut.
 */
export const WRITE_MS_PER_MIB = 250;

/** From how many bytes a write gets a deadline of its own (sizedStatementMs); below it the pool's statementMs holds (an ordinary delivery's INSERT, a few KiB, takes milliseconds). */
export const SIZED_WRITE_FROM_BYTES = 1024 * 1024;

/** The statement deadline of a write sending `bytes`: the pool's own, plus WRITE_MS_PER_MIB for each MiB. */
export function sizedStatementMs(deadlines: Pick<DbDeadlines, 'statementMs'>, bytes: number): number {
  return deadlines.statementMs + Math.ceil((bytes / (1024 * 1024)) * WRITE_MS_PER_MIB);
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
  /** The read deadline that cut this connection: every later statement on it fails with it, not with pg's "Client was closed". */
  let cut: Error | undefined;
  client.query = ((...args: unknown[]) => {
    // A transaction's rollback after the cut: its error must stay the deadline's (a 503), or it would
    // replace it (Kysely throws the rollback's failure) with one that reads as a bug (a 500).
    if (cut) return Promise.reject(cut);
    const result = query(...args);
    if (result instanceof Promise) {
      result.catch((error: unknown) => {
        if ((error as Error | undefined)?.message !== QUERY_READ_TIMEOUT_MESSAGE) return;
        cut ??= error as Error;
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

/**
 * Tells PostgreSQL a new connection's deadlines, as its first statement (pg sends a connection's
 * statements in order, so nothing runs on it before): one simple query of two `SET`s. A `SET`
 * passes through any pooler; should it fail all the same, the connection is ended (its request
 * answers 503) and the log names database.serverDeadlines.
 */
function setServerDeadlines(deadlines: DbDeadlines, logger: DbOptions['logger']) {
  // idle_in_transaction_session_timeout: a transaction whose connection the client cut (its read
  // deadline) over a path that drops everything never hears the close, and would hold its locks
  // (an organization's row, its advisory lock) until TCP gave up, hours later; the server ends such
  // a session once it has waited that long for the transaction's next statement. The API's
  // transactions send their statements back to back (no call to anything else inside one).
  const text = `set statement_timeout = ${Math.round(deadlines.statementMs)}; set lock_timeout = ${Math.round(deadlines.lockMs)}; set idle_in_transaction_session_timeout = ${Math.round(deadlines.statementMs + QUERY_READ_MARGIN_MS)}`;
  return (client: pg.PoolClient) => {
    client.query(text).catch((error: Error) => {
      logger?.warn(
        { sqlState: sqlStateOf(error), reason: error.message },
        'could not set the statement and lock deadlines on a new database connection (SET statement_timeout, lock_timeout); it is dropped. Behind a pooler that refuses SET, set database.serverDeadlines: false (only the connect and read deadlines then hold)',
      );
      client.on('error', () => {});
      void client.end().catch(() => {});
    });
  };
}

/** A pool's pg.Pool and deadlines, for what Kysely cannot send (runSizedWrite: a per-statement read deadline). */
const poolsOf = new WeakMap<object, { pool: pg.Pool; deadlines?: DbDeadlines }>();

/**
 * Runs one write that sends `bytes` (the intake INSERT of a large delivery) under a statement
 * deadline that grows with them (sizedStatementMs), in a transaction of its own: `begin; set local
 * statement_timeout` (one round trip; a `SET LOCAL` ends with its transaction, so it holds behind
 * any pooler), the statement with pg's read deadline 1 s past the statement's, and the commit. A
 * PostgreSQL cancelling the INSERT of a delivery for its size would cancel every redelivery of it
 * too: the delivery would never be stored. Below SIZED_WRITE_FROM_BYTES, or on a pool without
 * deadlines, the statement goes as any other (one round trip). Returns the rows it affected.
 */
export async function runSizedWrite(db: Db, query: CompiledQuery, bytes: number): Promise<number> {
  const own = poolsOf.get(db);
  if (!own?.deadlines || bytes < SIZED_WRITE_FROM_BYTES) {
    const result = await db.connection().execute((connection) => connection.executeQuery(query));
    return Number(result.numAffectedRows ?? 0n);
  }
  const statementMs = sizedStatementMs(own.deadlines, bytes);
  const client = await own.pool.connect();
  let broken: Error | undefined;
  try {
    await client.query(`begin; set local statement_timeout = ${statementMs}; set local idle_in_transaction_session_timeout = ${statementMs + QUERY_READ_MARGIN_MS}`);
    // pg takes a statement's own query_timeout (client.js), which its types do not declare.
    const statement: pg.QueryConfig = { text: query.sql, values: query.parameters as unknown[] };
    const result = await client.query(Object.assign(statement, { query_timeout: statementMs + QUERY_READ_MARGIN_MS }));
    await client.query('commit');
    return result.rowCount ?? 0;
  } catch (error) {
    // PostgreSQL's refusal (a SQLSTATE) leaves the connection usable once rolled back; anything
    // else (a read deadline, a cut connection) leaves it in a state not known: it is dropped.
    if (sqlStateOf(error) === undefined) broken = error as Error;
    else await client.query('rollback').catch((failed: Error) => (broken = failed));
    throw error;
  } finally {
    client.release(broken);
  }
}

/**
 * The bounds a pool createDb made was given, as pg holds them (its connection string, password
 * and all, left out): for a test that a composition root's wiring (worker/main.ts) reaches pg.
 */
export function poolSettingsOf(db: Db) {
  const pool = poolsOf.get(db)?.pool;
  if (!pool) return undefined;
  const { max, connectionTimeoutMillis, query_timeout, keepAlive, keepAliveInitialDelayMillis } = pool.options as pg.PoolConfig;
  return { max, connectionTimeoutMillis, query_timeout, keepAlive, keepAliveInitialDelayMillis };
}

export function createDb(connectionString: string, options: DbOptions = {}): Db {
  const { deadlines, clientDeadlines } = options;
  const bounds = deadlines ? { connectMs: deadlines.connectMs, readMs: deadlines.statementMs + QUERY_READ_MARGIN_MS } : clientDeadlines;
  const pool = new pg.Pool({
    connectionString,
    max: options.max ?? 10,
    ...(bounds
      ? { connectionTimeoutMillis: bounds.connectMs, query_timeout: bounds.readMs, keepAlive: true, keepAliveInitialDelayMillis: KEEPALIVE_INITIAL_DELAY_MS }
      : {}),
  });
  // Before the other listeners wrap client.query: the SET is sent as it is.
  if (deadlines && deadlines.server !== false) pool.on('connect', setServerDeadlines(deadlines, options.logger));
  pool.on('connect', sendNamedStatements);
  if (bounds) pool.on('connect', cutOnReadTimeout);
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
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  poolsOf.set(db, { pool, ...(deadlines ? { deadlines } : {}) });
  return db;
}
