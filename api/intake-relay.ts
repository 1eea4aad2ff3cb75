import { context } from '@opentelemetry/api';
import pg from 'pg';
import { contextFromTraceparent } from '../lib/tracing.ts';
import { KEEPALIVE_INITIAL_DELAY_MS } from '../lib/db/index.ts';
import { startPendingDeliveries, type PendingDelivery, type StartOutcome } from '../lib/db/repositories/deliveries.ts';
import { workflowIds, type DeliverySummary, type EventInput } from '../workflows/contract.ts';
import { deliveryRunLabels, deliveryTargetsFrom } from '../workflows/run-labels.ts';
import type { ApiMetrics } from '../lib/metrics.ts';
import type { ApiDeps } from './context.ts';
import { startWorkflowOrThrow } from './start-workflow.ts';

/**
 * How the receivers tell their process's intake relay that a delivery was stored (its row
 * committed): the relay wakes at once, and sees how fast deliveries arrive. A relay of another
 * replica is not told; the receiving replica's own relay starts the run, and every relay sweeps.
 */
export interface IntakeSignal {
  /** A delivery was stored `at` (this thread's performance.now(); default now). */
  stored(at?: number): void;
  /** Calls `listener` with the receipt's time on every delivery stored from here on; returns the way to stop. */
  onStored(listener: (at: number) => void): () => void;
}

export function createIntakeSignal(): IntakeSignal {
  const listeners = new Set<(at: number) => void>();
  return {
    stored(at = performance.now()) {
      for (const listener of listeners) listener(at);
    },
    onStored(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

export interface IntakeRelayOptions {
  /** The database the receivers write to: the relay keeps a connection of its own there, which holds its claims' row locks. */
  databaseUrl: string;
  /** Rows claimed and started per round (default 50). */
  batch?: number;
  /**
   * Starts in flight at once (default 16). Each begins on a turn of the event loop of its own, so
   * deliveries arriving meanwhile are acknowledged between them.
   */
  startConcurrency?: number;
  /**
   * Deliveries arriving back to back (two receipts less than this apart, the last one as recent;
   * default 20 ms) make the relay yield to their acknowledgements, which share this process and its
   * CPU with the starts: a stored delivery's start can wait, its acknowledgement cannot. Woken by a
   * receipt then, a round waits for a gap that long in the receipts, at most until the earliest
   * waiting receipt is `maxDeferMs` old, and claims at most 4 × `busyStartConcurrency` rows (unless
   * the round before was full: a backlog), of which at most `busyStartConcurrency` start at once while
   * they are younger than `maxDeferMs`.
   */
  busyGapMs?: number;
  /** The longest a delivery's start is held back for the receipts behind it (default 500 ms); older rows start at full concurrency. */
  maxDeferMs?: number;
  /** Starts in flight at once while deliveries arrive back to back (default 2). */
  busyStartConcurrency?: number;
  /** A round runs at least this often even without a receipt (default 5 s): rows of other replicas' receivers, retries come due. */
  sweepMs?: number;
  /** The longest pause between rounds while Temporal is unreachable (default 30 s). */
  maxBackoffMs?: number;
  /** The first wait before a row whose start failed on its own is tried again; it doubles with each failure (default 1 s). */
  rowRetryMs?: number;
  /** The longest wait between two starts of one failing row (default 10 min). */
  maxRowRetryMs?: number;
  /** The client's wait for an answer to one of the relay's statements before it gives the connection up (default 30 s). */
  statementTimeoutMs?: number;
  /**
   * PostgreSQL's `idle_in_transaction_session_timeout` for each claim's transaction (`SET LOCAL`): a
   * claim whose client went silent mid-round (its process frozen, its network path dropping
   * everything) is ended by the server after this long, and its rows' locks with it, instead of when
   * TCP gives up (hours). Default: twice the longest a round's starts can legitimately take
   * (longestRoundMs), at least 60 s.
   */
  claimIdleTimeoutMs?: number;
  /**
   * database.serverDeadlines: false (a pooler that refuses SET): the claim sets no server deadline,
   * and a silent relay's rows wait for TCP keepalive to end its connection instead.
   */
  serverDeadlines?: boolean;
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

/** What a relay works with: an API's, or its own thread's (api/intake-relay-thread.ts). */
export type RelayDeps = Pick<ApiDeps, 'intake' | 'logger' | 'temporal' | 'taskQueue'> & { metrics?: Pick<ApiMetrics, 'intakeStart'> };

/** What the relay gives each start before it counts as failed: Temporal unreachable must not hold rows locked for long. */
const START_TIMEOUT_MS = 5000;

/**
 * The longest a round's claim stays open while its starts run (the transaction idle between the
 * claim and the outcomes): each start ends within START_TIMEOUT_MS (the Temporal client's
 * deadline); rows younger than `maxDeferMs` go `busyStartConcurrency` at a time, and a start begun
 * then may run START_TIMEOUT_MS past it before the rest go `startConcurrency` at a time. Defaults
 * (50, 16, 500 ms): 0.5 + 5 + 4 × 5 = 25.5 s.
 */
export function longestRoundMs({ batch, startConcurrency, maxDeferMs }: { batch: number; startConcurrency: number; maxDeferMs: number }): number {
  return maxDeferMs + START_TIMEOUT_MS * (1 + Math.ceil(batch / startConcurrency));
}

/** One claimed row and its run's id (worked out once). */
interface Run {
  delivery: PendingDelivery;
  workflowId: string;
}

/**
 * Store first, start after: the webhook receivers acknowledge a delivery once its row is in the
 * intake table, and this relay (one per API process; rows are claimed with SKIP LOCKED, so replicas
 * share the work) starts each row's event workflow `event:<provider>:<deliveryId>` (a start that
 * finds the run already there is success, so a relay retry never runs a delivery twice) and marks
 * the row started. The receivers of its process wake it (`deps.intake`) within the same turn; a
 * sweep every `sweepMs` catches the rest. A round is two round trips on the relay's own
 * connection (lib/db/repositories/deliveries.ts): the claim, then every outcome with the commit.
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
export function startIntakeRelay(deps: RelayDeps, options: IntakeRelayOptions): IntakeRelay {
  const batch = options.batch ?? 50;
  const startConcurrency = Math.max(1, options.startConcurrency ?? 16);
  const busyGapMs = options.busyGapMs ?? 20;
  const maxDeferMs = options.maxDeferMs ?? 500;
  const busyStartConcurrency = Math.max(1, options.busyStartConcurrency ?? 2);
  const sweepMs = options.sweepMs ?? 5000;
  const maxBackoffMs = options.maxBackoffMs ?? 30_000;
  const rowRetryMs = options.rowRetryMs ?? 1000;
  const maxRowRetryMs = options.maxRowRetryMs ?? 10 * 60_000;
  const statementTimeoutMs = options.statementTimeoutMs ?? 30_000;
  const claimIdleTimeoutMs = options.serverDeadlines === false ? undefined : Math.round(options.claimIdleTimeoutMs ?? Math.max(60_000, 2 * longestRoundMs({ batch, startConcurrency, maxDeferMs })));
  const started: string[] = [];
  const waiters = new Map<string, (() => void)[]>();
  let stopping = false;
  let wake: (() => void) | undefined;
  let notified = false;
  /** The last two receipts (performance.now()), and the earliest one since the last claim. */
  let lastReceipt = -Infinity;
  let previousReceipt = -Infinity;
  let waitingSince: number | undefined;
  const unsubscribe = deps.intake.onStored((at) => {
    previousReceipt = lastReceipt;
    lastReceipt = at;
    waitingSince ??= lastReceipt;
    notified = true;
    wake?.();
  });
  /** Deliveries are arriving back to back: the last two receipts close together, the last one recent. */
  const busy = () => performance.now() - lastReceipt < busyGapMs && lastReceipt - previousReceipt < busyGapMs;
  /** Waits `ms`; a receipt ends a `wakeable` wait early, stop() ends any. */
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
  /** While receipts come back to back, waits for a gap in them, at most until the earliest waiting one is `maxDeferMs` old. */
  const yieldToReceipts = async () => {
    while (!stopping && waitingSince !== undefined && busy()) {
      const now = performance.now();
      const left = waitingSince + maxDeferMs - now;
      if (left <= 0) return;
      await pause(Math.min(left, lastReceipt + busyGapMs - now), false);
    }
  };

  let client: pg.Client | undefined;
  /**
   * The relay's own connection, made anew after a failure. Its claim holds up to `batch` rows
   * locked while their starts run: should the relay go silent mid-round (its process frozen or gone
   * without a close, the network path dropping everything), the server ends the transaction after
   * `claimIdleTimeoutMs` idle, and the rows are free for the other relays (a start made again then
   * finds its run there: success). TCP keepalive: the client notices a peer gone between rounds.
   */
  const session = async () => {
    if (client) return client;
    const next = new pg.Client({
      connectionString: options.databaseUrl,
      connectionTimeoutMillis: 10_000,
      query_timeout: statementTimeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: KEEPALIVE_INITIAL_DELAY_MS,
    });
    // Without a listener pg's 'error' would end the process; the next round connects anew.
    next.on('error', (error) => {
      deps.logger.warn({ reason: error.message }, 'intake relay: lost its database connection; connecting anew');
      if (client === next) client = undefined;
      void next.end().catch(() => {});
    });
    try {
      await next.connect();
    } catch (error) {
      void next.end().catch(() => {});
      throw error;
    }
    client = next;
    return next;
  };
  const dropSession = () => {
    void client?.end().catch(() => {});
    client = undefined;
  };

  /** Starts the row's run; a failure is returned with whether it looks like Temporal being unreachable. */
  async function startOne({ delivery, workflowId }: Run): Promise<{ started: true } | { started: false; unreachable: boolean; error: string }> {
    const { provider, deliveryId, start, connectionId } = delivery;
    const input: EventInput = {
      provider,
      deliveryId,
      receivedAt: delivery.receivedAt.toISOString(),
      summary: start.summary as DeliverySummary,
      // A row's digest (Bitbucket's, and any stored before only Bitbucket's were kept) goes on to the run, which claims it.
      ...(connectionId ? { connectionId, ...(start.bodyDigest ? { bodyDigest: start.bodyDigest } : {}) } : {}),
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

  /** One round: claim a batch of due rows (a small one while yielding), start them, record what became of each. */
  async function round(yielding: boolean): Promise<{ full: boolean; unreachable: boolean }> {
    let unreachable = false;
    const startedThisRound: string[] = [];
    const limit = yielding ? busyStartConcurrency * 4 : batch;
    // Receipts from here on are waited for by the next round (those before are in this claim).
    waitingSince = undefined;
    const { more } = await startPendingDeliveries(await session(), deps.taskQueue, limit, async (pending) => {
      const claimedAt = performance.now();
      const runs = pending.map((delivery): Run => ({ delivery, workflowId: workflowIds.event(delivery.provider, delivery.deliveryId, delivery.connectionId) }));
      // Fewer at once while deliveries arrive back to back, unless the row has waited its share already.
      const inFlight = ({ delivery }: Run) => (busy() && delivery.ageMs + performance.now() - claimedAt < maxDeferMs ? busyStartConcurrency : startConcurrency);
      const outcomes = await inTurns(runs, inFlight, startOne);
      // Temporal down or upgrading: every start failed for want of an answer. The rows are not at
      // fault; the relay backs off as a whole and they are due again as soon as Temporal answers.
      unreachable = outcomes.every((o) => !o.started && o.unreachable);
      return outcomes.map((outcome, i): StartOutcome => {
        const { delivery, workflowId } = runs[i]!;
        if (outcome.started) {
          startedThisRound.push(workflowId);
          return outcome;
        }
        // A round of an outage is not the row's failure: not counted (startPendingDeliveries), so the
        // row's own delay, from its own failures, is not made longer by the outage it waited out.
        const attempts = unreachable ? delivery.attempts : delivery.attempts + 1;
        const retryInMs = unreachable ? null : Math.min(rowRetryMs * 2 ** Math.min(attempts - 1, 30), maxRowRetryMs);
        if (unreachable) deps.logger.warn({ workflowId, attempts, reason: outcome.error }, 'intake relay: Temporal did not answer; the delivery waits, acknowledged');
        else deps.logger.error({ workflowId, attempts, reason: outcome.error, retryInMs }, 'intake relay: the event run of a stored delivery could not be started; retrying it on its own schedule');
        return { started: false, error: outcome.error, retryInMs };
      });
    }, claimIdleTimeoutMs);
    // Told only once the round's rows are marked started (its transaction committed), so a test
    // that waits for a start also sees the row as started.
    if (options.track) {
      for (const workflowId of startedThisRound) {
        started.push(workflowId);
        for (const resolve of waiters.get(workflowId) ?? []) resolve();
        waiters.delete(workflowId);
      }
    }
    // A turn took its whole share, or organizations were left for the next round: a backlog, claimed again at once.
    return { full: more, unreachable };
  }

  const loop = (async () => {
    let backoffMs = 0;
    let full = false;
    while (!stopping) {
      // Rows left over from a full round have waited already: no yielding before they are claimed.
      if (!full) await yieldToReceipts();
      if (stopping) break;
      notified = false;
      let outcome: { full: boolean; unreachable: boolean };
      try {
        // A backlog left by a full round is claimed in full batches: its rows have waited already.
        outcome = await round(busy() && !full);
      } catch (error) {
        deps.logger.warn({ reason: (error as Error).message }, 'intake relay: the database did not answer; retrying');
        dropSession();
        outcome = { full: false, unreachable: true };
      }
      full = outcome.full;
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
      unsubscribe();
      wake?.();
      await loop;
      await client?.end().catch(() => {});
      client = undefined;
    },
  };
}

/**
 * `fn` over `items` in order, each begun on a turn of the event loop of its own (after the I/O
 * waiting then) and only while fewer than `limit(item)` are in flight; results in order.
 */
async function inTurns<T, R>(items: readonly T[], limit: (item: T) => number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  const running = new Set<Promise<void>>();
  for (const [index, item] of items.entries()) {
    while (running.size >= Math.max(1, limit(item))) await Promise.race(running);
    await new Promise<void>((resolve) => setImmediate(resolve));
    const task: Promise<void> = fn(item).then((result) => {
      results[index] = result;
      running.delete(task);
    });
    running.add(task);
  }
  await Promise.all(running);
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
  return { unreachable, error: text.length > MAX_ERROR_LENGTH ? `${cutAt(text, MAX_ERROR_LENGTH - 1)}…` : text };
}

/** The first `length` UTF-16 units of `text`, one fewer where that would split a surrogate pair. */
const cutAt = (text: string, length: number) => (/[\uD800-\uDBFF]/.test(text.charAt(length - 1)) ? text.slice(0, length - 1) : text.slice(0, length));
