import {
  CompiledQuery,
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type Compilable,
  type QueryResult,
  type Transaction,
} from 'kysely';
import type { Database } from './schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/**
 * Compiles statements only: never connects. The statements built here are the ones run, with
 * their parameters placed where each placeholder went.
 */
const compiler = new Kysely<Database>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

const MARK = '\u0000forgelink-parameter:';

/** Each parameter of the compiled SQL: a named parameter of the call, or a constant the builder wrote. */
type Slot = { name: string } | { value: unknown };

/**
 * A statement written with the query builder (its SQL, columns and row type checked as any other),
 * built and compiled once, on its first call, instead of on every call: on the worker's per-event
 * and per-attach statements Kysely's building and compiling was ~8 % of the main thread (issue 16,
 * docs/benchmarks-log.md "Statements compiled once"). `build` gets a placeholder for each named
 * parameter; a call places its values there. So `build` must only pass the placeholders on as
 * values (never test them, join them, spread them or make a list of them: the SQL is the same for
 * every call) and must not compute a value (`new Date()` would be frozen at the first call): a
 * statement whose SQL differs with its input is one prepared statement a shape, a list is one
 * array parameter (`= any($1::uuid[])`). A placeholder the SQL does not carry as a whole
 * parameter (joined into a string, written into the SQL) fails the first call.
 */
export function prepared<P extends Record<string, unknown>, R>(build: (db: Kysely<Database>, p: P) => Compilable<R>): (db: Executor, params: P) => Promise<QueryResult<R>> {
  let compiled: { sql: string; slots: Slot[] } | undefined;
  return async (db, params) => {
    compiled ??= compile(build);
    const { sql, slots } = compiled;
    const values = new Array<unknown>(slots.length);
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      values[i] = 'name' in slot ? (params[slot.name] ?? null) : slot.value;
    }
    return db.executeQuery(CompiledQuery.raw(sql, values) as CompiledQuery<R>);
  };
}

function compile<P extends Record<string, unknown>, R>(build: (db: Kysely<Database>, p: P) => Compilable<R>): { sql: string; slots: Slot[] } {
  const used = new Set<string>();
  // Testing the parameters' presence or listing them would fix the statement's shape at its first call: refused.
  const refuse = (what: string) => () => {
    throw new Error(`prepared statement: the parameters were ${what} while building; build one prepared statement a shape instead`);
  };
  const placeholders = new Proxy({} as P, {
    get: (_, name) => {
      if (typeof name !== 'string') throw new Error(`prepared statement: parameter ${String(name)} is not a name`);
      used.add(name);
      return MARK + name;
    },
    has: refuse('tested (`in`)'),
    ownKeys: refuse('listed (spread, Object.keys)'),
    getOwnPropertyDescriptor: refuse('inspected'),
  });
  const { sql, parameters } = build(compiler, placeholders).compile();
  // Every placeholder holds a NUL, which no statement of ours writes: one anywhere but as a whole
  // parameter was written into the SQL, or joined, changed (`toUpperCase()`) or put in a list.
  if (sql.includes('\u0000')) throw new Error(`prepared statement: a parameter was written into the SQL: ${sql}`);
  const placed = new Set<string>();
  const slots = parameters.map((value): Slot => {
    if (typeof value === 'string' && value.startsWith(MARK) && used.has(value.slice(MARK.length))) {
      const name = value.slice(MARK.length);
      placed.add(name);
      return { name };
    }
    if (holdsNul(value)) throw new Error(`prepared statement: a parameter was joined into a value, changed or put in a list: ${JSON.stringify(value)}`);
    return { value };
  });
  const lost = [...used].filter((name) => !placed.has(name));
  if (lost.length > 0) throw new Error(`prepared statement: parameter(s) ${lost.join(', ')} read but not in the SQL's parameters: ${sql}`);
  return { sql, slots };
}

/** Whether a constant the builder wrote carries a placeholder's NUL (in a string, or inside a list or object). */
function holdsNul(value: unknown): boolean {
  if (typeof value === 'string') return value.includes('\u0000');
  if (value === null || typeof value !== 'object' || value instanceof Date) return false;
  return JSON.stringify(value).includes('\\u0000');
}
