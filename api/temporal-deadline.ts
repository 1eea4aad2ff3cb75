import { TEMPORAL_REQUEST_DEADLINE_SECONDS_DEFAULT } from '../lib/config.ts';
import type { ApiDeps } from './context.ts';

/** temporal.requestDeadlineSeconds' default (lib/config.ts), in milliseconds. */
export const DEFAULT_TEMPORAL_DEADLINE_MS = TEMPORAL_REQUEST_DEADLINE_SECONDS_DEFAULT * 1000;

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
