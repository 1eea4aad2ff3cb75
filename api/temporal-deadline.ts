import type { ApiDeps } from './context.ts';

/** temporal.requestDeadlineSeconds' default: a healthy frontend answers a start or a describe in tens of milliseconds. */
export const DEFAULT_TEMPORAL_DEADLINE_MS = 5000;

/**
 * Runs `fn`'s Temporal calls under one deadline, the request's (deps.temporalDeadlineMs). Without
 * one, the client retried a stopped frontend for ~19 s and waited on a hanging one for ever. The
 * API's connection retries no call past its deadline (retryWithinDeadline, lib/temporal/connection.ts):
 * a refused call fails before it with UNAVAILABLE, an unanswered one at it with DEADLINE_EXCEEDED,
 * both a 503 (app.onError, startWorkflow).
 */
export function withinTemporalDeadline<T>(deps: Pick<ApiDeps, 'temporal' | 'temporalDeadlineMs'>, fn: () => Promise<T>): Promise<T> {
  return deps.temporal.withDeadline(Date.now() + (deps.temporalDeadlineMs ?? DEFAULT_TEMPORAL_DEADLINE_MS), fn);
}
