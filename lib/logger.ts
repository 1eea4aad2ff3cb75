import { AsyncLocalStorage } from 'node:async_hooks';
import type { LogLevel as TemporalLogLevel, LogMetadata, Logger as TemporalLogger } from '@temporalio/common';
import { pino, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Fields every log line written inside a unit of work carries: an API request's id, an activity's
 * run and attempt. Set with withLogContext; the logger reads it on every line, so code deep below
 * (repositories, the guarded HTTP layer) needs no logger of its own to say which request it serves.
 */
const logContext = new AsyncLocalStorage<Record<string, unknown>>();

/** Runs `fn` with `fields` added to every log line written inside it (nested contexts add up). */
export function withLogContext<T>(fields: Record<string, unknown>, fn: () => T): T {
  const outer = logContext.getStore();
  return logContext.run(outer ? { ...outer, ...fields } : fields, fn);
}

/** Extra fields for every line (the tracing module adds the active trace and span ids). */
const contributors: (() => Record<string, unknown> | undefined)[] = [];
export function addLogFields(contributor: () => Record<string, unknown> | undefined): void {
  contributors.push(contributor);
}

/** Structured JSON logs; keys that could hold a secret are redacted at any depth (see redact()). */
export function createLogger(name: string, level: string = process.env.LOG_LEVEL ?? 'info', destination?: pino.DestinationStream): Logger {
  const logger = pino(
    {
      name,
      level,
      mixin() {
        // pino merges into the object returned here: always a fresh one.
        const fields = { ...logContext.getStore() };
        for (const contribute of contributors) Object.assign(fields, contribute());
        return fields;
      },
      formatters: {
        log: (object) => redact(object) as Record<string, unknown>,
        bindings: (bindings) => redact(bindings) as Record<string, unknown>,
      },
      // Errors are made plain (and redacted) by redact(): pino's own serializer would undo that.
      serializers: { err: (value: unknown) => value },
    },
    // stdout written asynchronously: lines logged while a write is under way go out together in
    // the next one, instead of one blocking write per line (the API logs a line per request).
    // pino flushes what is left synchronously when the process exits.
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
  // pino formats only the root's bindings: a child's (and, by inheritance, its children's) are redacted here.
  const child = logger.child;
  logger.child = function (this: Logger, bindings, options) {
    return child.call(this, redact(bindings) as typeof bindings, options);
  } as typeof child;
  return logger;
}

export const REDACTED = '[redacted]';
const MAX_DEPTH = 10;
/** Key names (lower case, letters and digits only) whose values are secrets wherever they appear. */
const SECRET_KEYS = new Set(['authorization', 'proxyauthorization', 'cookie', 'setcookie', 'credential', 'credentials', 'key', 'signature', 'xhubsignature', 'xhubsignature256']);
const SECRET_SUFFIXES = ['token', 'secret', 'pass', 'password', 'privatekey', 'privatekeypem', 'apikey', 'encryptionkey', 'passphrase'];

export function isSecretKey(key: string): boolean {
  const k = key.toLowerCase().replace(/[^a-z0-9]/g, '');
  return SECRET_KEYS.has(k) || SECRET_SUFFIXES.some((suffix) => k.endsWith(suffix));
}

/**
 * A copy of `value` with every secret-named key's value replaced, at any depth (pino's own redact
 * paths name fixed depths), and errors made plain objects (type, message, stack, their own fields,
 * cause) so that their fields are redacted too. Cycles and depth are bounded.
 */
export function redact(value: unknown, depth = 0, seen = new WeakSet<object>()): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (seen.has(value)) return '[circular]';
  if (depth >= MAX_DEPTH) return '[too deep]';
  if (value instanceof Date || Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return value;
  seen.add(value);
  try {
    if (Array.isArray(value)) return value.map((item) => redact(item, depth + 1, seen));
    const out: Record<string, unknown> = {};
    if (value instanceof Error) {
      out.type = value.name;
      out.message = value.message;
      out.stack = value.stack;
      if (value.cause !== undefined) out.cause = redact(value.cause, depth + 1, seen);
      if (value instanceof AggregateError) out.errors = redact(value.errors, depth + 1, seen);
    }
    for (const key of Object.keys(value)) {
      const item = (value as Record<string, unknown>)[key];
      out[key] = isSecretKey(key) && item != null && item !== '' ? REDACTED : redact(item, depth + 1, seen);
    }
    return out;
  } finally {
    seen.delete(value);
  }
}

const TEMPORAL_LEVELS = { TRACE: 'trace', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' } as const;

/**
 * The Temporal SDK's logger interface over a pino logger: the Runtime's own messages, the native
 * core's (forwarded), workflow `log.*` calls (through the SDK's sink) and activity context logs all
 * become JSON lines of the one stream, redacted like every other.
 */
export function temporalLogger(logger: Logger): TemporalLogger {
  const write = (level: TemporalLogLevel, message: string, meta?: LogMetadata) => {
    const method = TEMPORAL_LEVELS[level] ?? 'info';
    if (!logger.isLevelEnabled(method)) return;
    // Symbol keys (the SDK's own timestamp) are not JSON; an activity's task token completes it: neither is logged.
    const { taskToken: _taskToken, ...fields } = meta ?? {};
    logger[method](fields, message);
  };
  return {
    log: write,
    trace: (message, meta) => write('TRACE', message, meta),
    debug: (message, meta) => write('DEBUG', message, meta),
    info: (message, meta) => write('INFO', message, meta),
    warn: (message, meta) => write('WARN', message, meta),
    error: (message, meta) => write('ERROR', message, meta),
  };
}
