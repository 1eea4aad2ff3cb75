/**
 * What a failed statement says about itself: PostgreSQL's SQLSTATE (on pg's error, or a cause of
 * it). Only a few of them tell a statement refused for the content a delivery carries, which fails
 * the same way every time it is sent again; everything else (class 08 connection, 53 resources, 57
 * operator intervention or a statement timeout, 40 serialization or deadlock, 55P03 lock timeout,
 * a connection option or setting PostgreSQL refuses, a bug in our own SQL, no SQLSTATE at all: a
 * refused or lost socket) is the service's, and a later attempt can get past it once it is mended.
 */
export function sqlStateOf(error: unknown): string | undefined {
  for (let e = error, depth = 0; typeof e === 'object' && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && !/^E[A-Z]+$/.test(code)) return code;
  }
  return undefined;
}

/**
 * The SQLSTATEs a write of a delivery's content can meet because of that content, and why. Whole
 * classes are not taken: class 22 also holds 22023 (a connection option PostgreSQL refuses, e.g.
 * `options=-c statement_timeout=abc`, at every connect), 22012 and others only our own SQL can
 * cause; 23 holds a unique or check violation of our own making; 54 holds 54001 (stack depth)
 * and 54023 (too many arguments), both of our statements. Counted only from the statements that
 * write the content (see contentWrite), never from a connect or a lookup.
 */
const CONTENT_STATES: ReadonlyMap<string, string> = new Map([
  // invalid byte sequence for encoding "UTF8" (a NUL byte or broken UTF-8 in a text value).
  ['22021', 'character not in repertoire'],
  // jsonb's parser refusing the text: a lone surrogate's escape (\ud800), a malformed number.
  ['22P02', 'invalid text representation'],
  // jsonb refusing \u0000 (it has no NUL), or a code point the database encoding lacks.
  ['22P05', 'untranslatable character'],
  // a value longer than a length-typed column (varchar(n)) takes: a name, an id or a URL of the delivery's.
  ['22001', 'string data right truncation'],
  // a number of the delivery's out of its column's or jsonb numeric's range.
  ['22003', 'numeric value out of range'],
  // an index row over ~2,700 bytes (a long name), a jsonb value over 255 MB, a row too large.
  ['54000', 'program limit exceeded'],
  // the row a delivery's reference needs is gone (its connection, deleted since it was read): not
  // in recordEvent, where it is a repository detached meanwhile and a retry reads that afresh.
  ['23503', 'foreign key violation'],
]);

/** Whether `error` is PostgreSQL refusing a write for its content (CONTENT_STATES), 23503 only with `foreignKey`. */
export function refusedForItsData(error: unknown, options: { foreignKey?: boolean } = {}): boolean {
  const state = sqlStateOf(error);
  if (state === undefined || !CONTENT_STATES.has(state)) return false;
  return state !== '23503' || options.foreignKey === true;
}

/** A write of a delivery's content that PostgreSQL refused for that content (`cause` is pg's error). */
export class ContentRefusedError extends Error {
  readonly sqlState: string;
  constructor(cause: unknown) {
    super((cause as Error).message, { cause });
    this.name = 'ContentRefusedError';
    this.sqlState = sqlStateOf(cause)!;
  }
}

/**
 * Runs one statement writing a delivery's content; a refusal for that content (refusedForItsData)
 * becomes a ContentRefusedError, anything else is thrown as it is. Only errors raised here are ever
 * taken for the delivery's fault: a lookup or a connect failing with the same SQLSTATE is not.
 */
export async function contentWrite<T>(write: () => Promise<T>, options: { foreignKey?: boolean } = {}): Promise<T> {
  try {
    return await write();
  } catch (error) {
    throw refusedForItsData(error, options) ? new ContentRefusedError(error) : error;
  }
}

/** pg's error for a statement not answered within query_timeout (pg's client.js). */
export const QUERY_READ_TIMEOUT_MESSAGE = 'Query read timeout';

/**
 * The SQLSTATEs by which PostgreSQL gave up on a statement for a deadline or a conflict, not for
 * the statement: 57014 query_canceled (statement_timeout, the API pool's database.statementTimeoutSeconds),
 * 55P03 lock_not_available (lock_timeout: a lock held by a migration, an operator's `lock table`),
 * 40001 serialization_failure and 40P01 deadlock_detected. The same statement later can succeed.
 */
const BUSY_STATES: ReadonlySet<string> = new Set(['57014', '55P03', '40001', '40P01']);

/** Whether PostgreSQL cancelled the statement for a deadline or a conflict (BUSY_STATES), or pg stopped waiting for its answer (query_timeout). */
export function databaseBusy(error: unknown): boolean {
  const state = sqlStateOf(error);
  if (state !== undefined) return BUSY_STATES.has(state);
  return error instanceof Error && error.message === QUERY_READ_TIMEOUT_MESSAGE;
}

/**
 * The database did not answer a request: it could not be reached, refused a connection or dropped
 * one (network errors, class 08 connection exceptions, class 53 insufficient resources such as
 * 53300 too_many_connections, 57P0x shutdowns and 57P03 cannot_connect_now, pg's own "Connection
 * terminated", a connect or a pool wait past database.connectTimeoutSeconds), or it was busy
 * (databaseBusy: a statement or lock deadline passed). A failing dependency, so 503 with
 * Retry-After, never the 500 of a bug nor a 4xx.
 */
export function databaseUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  if (databaseBusy(error)) return true;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND'].includes(code) || /^(08|53|57P)/.test(code))) return true;
  return /^Connection terminated|timeout exceeded when trying to connect|^Client has encountered a connection error/.test(error.message);
}
