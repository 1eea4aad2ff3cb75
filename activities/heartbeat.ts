import { Context } from '@temporalio/activity';

/** How often a running activity says its worker is alive; the SDK sends at most one per 0.8 × heartbeat timeout. */
const HEARTBEAT_INTERVAL_MS = 1000;

type ActivityFunctions = Record<string, (...args: never[]) => Promise<unknown>>;

/**
 * Activities that wait on a provider or a subscriber heartbeat while they run, so a worker that dies
 * mid-call is noticed within the step's heartbeat timeout (seconds) and the step retried on another
 * worker, instead of after its start-to-close timeout. The heartbeat proves the worker is alive, not
 * that the call progresses: each call has its own HTTP timeout. Local activities do not heartbeat
 * (their workflow task's timeout covers them).
 */
export function heartbeating<T extends ActivityFunctions>(activities: T): T {
  const wrapped = Object.entries(activities).map(([name, run]) => [
    name,
    async (...args: unknown[]) => {
      const context = Context.current();
      if (context.info.isLocal) return run(...(args as never[]));
      context.heartbeat();
      const timer = setInterval(() => context.heartbeat(), HEARTBEAT_INTERVAL_MS);
      try {
        return await run(...(args as never[]));
      } finally {
        clearInterval(timer);
      }
    },
  ]);
  return Object.fromEntries(wrapped) as T;
}
