import pg from 'pg';
import { startPendingDeliveries, type PendingDelivery } from '../lib/db/repositories/deliveries.ts';
import { SA_ORGANIZATION, SA_PROVIDER, SA_REPOSITORY, workflowIds, type DeliverySummary, type EventInput } from '../workflows/contract.ts';
import type { ApiDeps } from './context.ts';
import { startWorkflow } from './start-workflow.ts';

export interface IntakeRelayOptions {
  /** The database the receiver writes to (a connection of its own LISTENs there). */
  databaseUrl: string;
  /** Rows locked and started per round (default 50). */
  batch?: number;
  /** A round runs at least this often even without a notification (default 5 s). */
  sweepMs?: number;
  /** The longest pause between rounds while starts fail (default 30 s). */
  maxBackoffMs?: number;
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
 * `sweepMs` catches anything a lost notification left; while starts fail (Temporal down or
 * upgrading) it backs off, doubling up to `maxBackoffMs`, and the rows wait, acknowledged.
 */
export function startIntakeRelay(deps: ApiDeps, options: IntakeRelayOptions): IntakeRelay {
  const batch = options.batch ?? 50;
  const sweepMs = options.sweepMs ?? 5000;
  const maxBackoffMs = options.maxBackoffMs ?? 30_000;
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

  async function startOne(delivery: PendingDelivery): Promise<boolean> {
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
      await startWorkflow(deps, 'eventWorkflow', {
        workflowId,
        input,
        timeoutMs: START_TIMEOUT_MS,
        searchAttributes: [
          { key: SA_PROVIDER, value: provider },
          ...(start.organizationId ? [{ key: SA_ORGANIZATION, value: start.organizationId }] : []),
          ...(start.repositoryId ? [{ key: SA_REPOSITORY, value: start.repositoryId }] : []),
        ],
      });
      if (options.track) {
        started.push(workflowId);
        for (const resolve of waiters.get(workflowId) ?? []) resolve();
        waiters.delete(workflowId);
      }
      return true;
    } catch {
      // startWorkflow logged why; the row stays unstarted for the next round.
      return false;
    }
  }

  /** One round: lock a batch, start it, mark what started. Returns whether every start went through. */
  async function round(): Promise<{ full: boolean; failed: boolean }> {
    let failed = false;
    const { locked } = await startPendingDeliveries(deps.db, deps.taskQueue, batch, async (pending) => {
      const outcomes = await Promise.all(pending.map(startOne));
      // Back off when Temporal refused them all (down, upgrading); one row that fails alone waits
      // for the next round without slowing every other delivery.
      failed = !outcomes.includes(true);
      return pending.filter((_, i) => outcomes[i]);
    });
    return { full: locked === batch, failed };
  }

  const listener = listen(options.databaseUrl, nudge, deps.logger);
  const loop = (async () => {
    let backoffMs = 0;
    while (!stopping) {
      notified = false;
      let outcome: { full: boolean; failed: boolean };
      try {
        outcome = await round();
      } catch (error) {
        deps.logger.warn({ reason: (error as Error).message }, 'intake relay: the database did not answer; retrying');
        outcome = { full: false, failed: true };
      }
      if (outcome.failed) {
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
