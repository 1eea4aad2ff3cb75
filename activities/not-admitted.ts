import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import type { Logger } from '../lib/logger.ts';
import type { NotAdmittedSlot, WorkerMetrics } from '../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, INLINE_NOT_ADMITTED } from '../workflows/contract.ts';
import { REFUSED_BY_ANSWER_BUDGET } from './inline-admission.ts';

const SLOT_OF_FAILURE: Record<string, NotAdmittedSlot> = { [ACTIVITY_NOT_ADMITTED]: 'activity', [INLINE_NOT_ADMITTED]: 'workflow_task' };

/**
 * Every activity: one the worker refused a place (activities/activity-admission.ts,
 * inline-admission.ts) is counted by its activity type (forgelink_activities_not_admitted_total)
 * and logged in one line, without a stack trace. The refusal itself is a benign failure, which the
 * SDK logs at DEBUG only: a refused organization's runs ask again every few seconds, and a WARN
 * with a stack trace each time would bury the rest of the worker's log. A step refused because the
 * worker's answer budget refused one of its provider answers (holdingAdmission) is counted the same
 * but logged as what it is: it made calls, and makes them again when its step runs again.
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
      const failure = error instanceof ApplicationFailure ? error : undefined;
      const slot = failure?.type ? SLOT_OF_FAILURE[failure.type] : undefined;
      if (failure && slot) {
        this.#metrics?.activityNotAdmitted(Context.current().info.activityType, slot);
        // The line carries the run, activity and attempt (activities/log-context.ts); the reason names the organization.
        const byBudget = (failure.details?.[0] as { refusedBy?: unknown } | undefined)?.refusedBy === REFUSED_BY_ANSWER_BUDGET;
        if (byBudget) {
          this.#logger.info(
            { slot, refusedBy: REFUSED_BY_ANSWER_BUDGET, reason: failure.message },
            "activity refused: a provider answer did not fit the worker's answer budget (its calls are made again when its step runs again)",
          );
        } else {
          this.#logger.info({ slot, reason: failure.message }, 'activity not admitted: it made no call');
        }
      }
      throw error;
    }
  }
}
