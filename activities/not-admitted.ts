import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import type { Logger } from '../lib/logger.ts';
import type { NotAdmittedSlot, WorkerMetrics } from '../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, INLINE_NOT_ADMITTED } from '../workflows/contract.ts';

const SLOT_OF_FAILURE: Record<string, NotAdmittedSlot> = { [ACTIVITY_NOT_ADMITTED]: 'activity', [INLINE_NOT_ADMITTED]: 'workflow_task' };

/**
 * Every activity: one the worker refused a place (activities/activity-admission.ts,
 * inline-admission.ts) is counted by its activity type (forgelink_activities_not_admitted_total)
 * and logged in one line, without a stack trace. The refusal itself is a benign failure, which the
 * SDK logs at DEBUG only: a refused organization's runs ask again every few seconds, and a WARN
 * with a stack trace each time would bury the rest of the worker's log.
 */
export class NotAdmittedInterceptor implements ActivityInboundCallsInterceptor {
  readonly #logger: Logger;
  readonly #metrics: WorkerMetrics | undefined;

  constructor(deps: { logger: Logger; metrics?: WorkerMetrics }) {
    this.#logger = deps.logger;
    this.#metrics = deps.metrics;
  }

  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    try {
      return await next(input);
    } catch (error) {
      const slot = error instanceof ApplicationFailure && error.type ? SLOT_OF_FAILURE[error.type] : undefined;
      if (slot) {
        this.#metrics?.activityNotAdmitted(Context.current().info.activityType, slot);
        // The line carries the run, activity and attempt (activities/log-context.ts); the reason names the organization.
        this.#logger.info({ slot, reason: (error as ApplicationFailure).message }, 'activity not admitted: it made no call');
      }
      throw error;
    }
  }
}
