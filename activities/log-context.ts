import { Context } from '@temporalio/activity';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { withLogContext } from '../lib/logger.ts';

/**
 * Every activity's log lines (the activities' own logger and anything below it) say which run,
 * activity and attempt they belong to, so an operator can go from a line to the run in the
 * Temporal UI and back.
 */
export class LogContextInterceptor implements ActivityInboundCallsInterceptor {
  execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const { workflowExecution, activityType, attempt, activityId } = Context.current().info;
    return withLogContext({ workflowId: workflowExecution?.workflowId, runId: workflowExecution?.runId, activityType, activityId, attempt }, () => next(input));
  }
}
