import { context } from '@opentelemetry/api';
import pg from 'pg';
import { contextFromTraceparent } from '../lib/tracing.ts';
import { startPendingDeliveries, type PendingDelivery, type StartOutcome } from '../lib/db/repositories/deliveries.ts';
import { workflowIds, type DeliverySummary, type EventInput } from '../workflows/contract.ts';
import { deliveryRunLabels, deliveryTargetsFrom } from '../workflows/run-labels.ts';
import type { ApiDeps } from './context.ts';
import { startWorkflowOrThrow } from './start-workflow.ts';

export interface IntakeRelayOptions {
  /** The database the receiver writes to (a connection of its own LISTENs there). */
  databaseUrl: string;
  /** Rows locked and started per round (default 50). */
  batch?: number;
  /**
   * Starts of a round in flight at once (default 16). Each begins on a turn of the event loop of its
   * own, so deliveries arriving meanwhile are acknowledged between them: the receivers share this
   * process, and a round's starts all at once would hold their acknowledgements back.
   */
  startConcurrency?: number;
  /** A round runs at least this often even without a notification (default 5 s). */
  sweepMs?: number;
  /** The longest pause between rounds while Temporal is unreachable (default 30 s). */
  maxBackoffMs?: number;
  /** The first wait before a row whose start failed on its own is tried again; it doubles with each failure (default 1 s). */
  rowRetryMs?: number;
  /** The longest wait between two starts of one failing row (default 10 min). */
  maxRowRetryMs?: number;
  /** Remember every run started, for `started` and `whenStarted` (tests; it grows without bound). */
  track?: boolean;
}

export interface IntakeRelay {
  /** With `track`: event workflow ids this relay has started (a test's way to see that two relays never start one twice). */
  readonly started: readonly string[];
  /** With `track`: resolves once this relay has started (or found already started) the run `workflowId`. */
  whenStarted(workflowId: string): Promise<void>;
  stop(): Promise<void>;
}

/** What the relay gives each start before it counts as failed: Temporal unreachable must not hold rows locked for long. */
const START_TIMEOUT_MS = 5000;

/**
 * Store first, start after: the webhook receivers acknowledge a delivery once its row is in the
 * intake table, and this relay (one per API process; rows are locked with SKIP LOCKED, so replicas
 * share the work) starts each row's event workflow `event:<provider>:<deliveryId>` (a start that
 * finds the run already there is success, so a relay retry never runs a delivery twice) and marks
 * the row started. A notification on each insert wakes it within milliseconds; a sweep every
 * `sweepMs` catches anything a lost notification left.
 *
 * Two kinds of failure, kept apart so neither blocks the other rows:
 * - Temporal unreachable (every start of a round failed, each for want of an answer): the relay
 *   backs off, doubling up to `maxBackoffMs`, and the rows wait, acknowledged, due again as soon as
 *   Temporal answers.
 * - One row failing on its own (Temporal refuses its start, or it alone times out): the row gets
 *   its own `next_attempt_at`, from `rowRetryMs` doubling up to `maxRowRetryMs`, so it is neither
 *   retried in a hot loop nor in the way of the rows behind it. It is never dropped (its delivery
 *   was acknowledged, so its run is owed): it stays in the backlog /readyz shows the admin, with its
 *   attempts and last error, and each failure is logged at error level, until the cause is fixed.
 */
export function startIntakeRelay(deps: ApiDeps, options: IntakeRelayOptions): IntakeRelay {
  const batch = options.batch ?? 50;
  const startConcurrency = Math.max(1, options.startConcurrency ?? 16);
  const sweepMs = options.sweepMs ?? 5000;
  const maxBackoffMs = options.maxBackoffMs ?? 30_000;
  const rowRetryMs = options.rowRetryMs ?? 1000;
  const maxRowRetryMs = options.maxRowRetryMs ?? 10 * 60_000;
  const started: string[] = [];
  const waiters = new Map<string, (() => void)[]>();
  let stopping = false;
  let wake: (() => void) | undefined;
  let notified = false;
  const nudge = () => {
    notified = true;
    wake?.();
  };
  /** Waits `ms`; a notification ends a `wakeable` wait early, stop() ends any. */
  const pause = (ms: number, wakeable: boolean) =>
    new Promise<void>((resolve) => {
      if (stopping || (wakeable && notified)) return resolve();
      const timer = setTimeout(finish, ms);
      function finish() {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      }
      wake = () => (wakeable || stopping) && finish();
    });

  /** Starts the row's run; a failure is returned with whether it looks like Temporal being unreachable. */
  async function startOne(delivery: PendingDelivery): Promise<{ started: true } | { started: false; unreachable: boolean; error: string }> {
    const { provider, deliveryId, start, connectionId } = delivery;
    const workflowId = workflowIds.event(provider, deliveryId, connectionId);
    const input: EventInput = {
      provider,
      deliveryId,
      receivedAt: delivery.receivedAt.toISOString(),
      summary: start.summary as DeliverySummary,
      ...(connectionId ? { connectionId, bodyDigest: start.bodyDigest } : {}),
    };
    try {
      // In the receipt's trace (when it had one): the start's span and the run's follow the receipt.
      await context.with(contextFromTraceparent(start.traceparent), () => startWorkflowOrThrow(deps, 'eventWorkflow', {
        workflowId,
        input,
        timeoutMs: START_TIMEOUT_MS,
        // A row stored by an older API version has no targets: its run is named by ids, as it was then.
        labels: deliveryRunLabels({
          provider,
          deliveryId,
          summary: input.summary,
          targets: deliveryTargetsFrom(start.targets),
          ...(start.organizationId ? { organizationId: start.organizationId } : {}),
          ...(start.repositoryId ? { repositoryId: start.repositoryId } : {}),
        }),
      }));
      deps.metrics?.intakeStart('started', (Date.now() - delivery.receivedAt.getTime()) / 1000);
      return { started: true };
    } catch (error) {
      deps.metrics?.intakeStart('failed');
      const failure = describeStartFailure(error);
      return { started: false, ...failure };
    }
  }

  /** One round: lock a batch of due rows, start them, record what became of each. */
  async function round(): Promise<{ full: boolean; unreachable: boolean }> {
    let unreachable = false;
    const startedThisRound: string[] = [];
    const { locked } = await startPendingDeliveries(deps.db, deps.taskQueue, batch, async (pending) => {
      const outcomes = await inTurns(pending, startConcurrency, startOne);
      // Temporal down or upgrading: every start failed for want of an answer. The rows are not at
      // fault; the relay backs off as a whole and they are due again as soon as Temporal answers.
      unreachable = outcomes.every((o) => !o.started && o.unreachable);
      return outcomes.map((outcome, i): StartOutcome => {
        if (outcome.started) {
          startedThisRound.push(workflowIds.event(pending[i]!.provider, pending[i]!.deliveryId, pending[i]!.connectionId));
          return outcome;
        }
        const delivery = pending[i]!;
        const attempts = delivery.attempts + 1;
        const retryInMs = unreachable ? null : Math.min(rowRetryMs * 2 ** Math.min(attempts - 1, 30), maxRowRetryMs);
        const workflowId = workflowIds.event(delivery.provider, delivery.deliveryId, delivery.connectionId);
        if (unreachable) deps.logger.warn({ workflowId, attempts, reason: outcome.error }, 'intake relay: Temporal did not answer; the delivery waits, acknowledged');
        else deps.logger.error({ workflowId, attempts, reason: outcome.error, retryInMs }, 'intake relay: the event run of a stored delivery could not be started; retrying it on its own schedule');
        return { started: false, error: outcome.error, retryInMs };
      });
    });
    // Told only once the round's rows are marked started (its transaction committed), so a test
    // that waits for a start also sees the row as started.
    if (options.track) {
      for (const workflowId of startedThisRound) {
        started.push(workflowId);
        for (const resolve of waiters.get(workflowId) ?? []) resolve();
        waiters.delete(workflowId);
      }
    }
    return { full: locked === batch, unreachable };
  }

  const listener = listen(options.databaseUrl, nudge, deps.logger);
  const loop = (async () => {
    let backoffMs = 0;
    while (!stopping) {
      notified = false;
      let outcome: { full: boolean; unreachable: boolean };
      try {
        outcome = await round();
      } catch (error) {
        deps.logger.warn({ reason: (error as Error).message }, 'intake relay: the database did not answer; retrying');
        outcome = { full: false, unreachable: true };
      }
      if (outcome.unreachable) {
        backoffMs = Math.min(Math.max(backoffMs * 2, 250), maxBackoffMs);
        await pause(backoffMs, false);
      } else {
        backoffMs = 0;
        if (!outcome.full) await pause(sweepMs, true);
      }
    }
  })();

  return {
    started,
    whenStarted(workflowId) {
      if (started.includes(workflowId)) return Promise.resolve();
      return new Promise((resolve) => waiters.set(workflowId, [...(waiters.get(workflowId) ?? []), resolve]));
    },
    async stop() {
      stopping = true;
      wake?.();
      await loop;
      await listener.close();
    },
  };
}

/** `fn` over `items`, at most `limit` at once, each begun on a turn of the event loop of its own (after the I/O waiting then); results in order. */
async function inTurns<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        await new Promise<void>((resolve) => setImmediate(resolve));
        results[index] = await fn(items[index]!);
      }
    }),
  );
  return results;
}

/** gRPC status names, for the short reason a failed start leaves on its row. */
const GRPC_STATUS = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
/** Statuses that say Temporal did not answer (down, restarting, overloaded, or too slow), not that it refused this start. */
const UNREACHABLE = new Set(['CANCELLED', 'UNKNOWN', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED', 'UNAVAILABLE']);
const MAX_ERROR_LENGTH = 300;

/**
 * Why a start failed, short enough for the row and free of credentials: the gRPC status found on
 * the error or its causes, and the first words of its message with any URL's user info removed.
 */
export function describeStartFailure(error: unknown): { unreachable: boolean; error: string } {
  let code: number | undefined;
  let message = '';
  for (let e = error as { code?: unknown; details?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'number' && code === undefined) {
      code = e.code;
      message = typeof e.details === 'string' && e.details ? e.details : String(e.message ?? '');
    }
    if (!message && typeof e.message === 'string') message = e.message;
  }
  const status = code !== undefined ? (GRPC_STATUS[code] ?? `status ${code}`) : 'ERROR';
  const text = `${status}: ${message.replace(/\/\/[^/@\s]*@/g, '//').replace(/\s+/g, ' ').trim()}`;
  // Without a status, the channel never got that far (grpc-js's own "Failed to connect before the deadline").
  const unreachable = code === undefined ? /connect|deadline|timed? ?out|ECONN|socket|unavailable/i.test(message) : UNREACHABLE.has(status);
  return { unreachable, error: text.length > MAX_ERROR_LENGTH ? `${text.slice(0, MAX_ERROR_LENGTH - 1)}…` : text };
}

/** LISTEN forgelink_intake on a connection of its own, reconnecting (with a nudge, as rows may have come meanwhile) after a loss. */
function listen(databaseUrl: string, onNotify: () => void, logger: ApiDeps['logger']) {
  let client: pg.Client | undefined;
  let closed = false;
  let retryTimer: NodeJS.Timeout | undefined;
  const connect = async () => {
    const next = new pg.Client({ connectionString: databaseUrl });
    next.on('notification', onNotify);
    next.on('error', (error) => {
      logger.warn({ reason: error.message }, 'intake relay: lost its LISTEN connection; reconnecting');
      void next.end().catch(() => {});
      schedule();
    });
    try {
      await next.connect();
      await next.query('LISTEN forgelink_intake');
      if (closed) return void (await next.end());
      client = next;
      onNotify();
    } catch (error) {
      logger.warn({ reason: (error as Error).message }, 'intake relay: cannot LISTEN yet; sweeping until it can');
      void next.end().catch(() => {});
      schedule();
    }
  };
  const schedule = () => {
    if (!closed && !retryTimer) retryTimer = setTimeout(() => ((retryTimer = undefined), void connect()), 1000);
  };
  void connect();
  return {
    async close() {
      closed = true;
      clearTimeout(retryTimer);
      await client?.end().catch(() => {});
    },
  };
}
