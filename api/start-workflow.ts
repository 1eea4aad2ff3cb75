import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy } from '@temporalio/client';
import type { ApiDeps } from './context.ts';
import { serviceUnavailable, TEMPORAL_RETRY_AFTER_SECONDS } from './problem.ts';
import { DEFAULT_TEMPORAL_DEADLINE_MS } from './temporal-deadline.ts';
import type { RunLabels } from '../workflows/run-labels.ts';

interface StartOptions {
  workflowId: string;
  input: object;
  /** Search attributes, summary and details the run shows in the Temporal UI (workflows/run-labels.ts). */
  labels: RunLabels;
  allowRerun?: boolean;
  timeoutMs?: number;
}

/**
 * Starts a workflow by name with a deterministic id, within the request's Temporal deadline
 * (api/temporal-deadline.ts). A start that finds the run already there is success (a retried
 * request or a redelivery), not an error; one Temporal refuses or does not answer in time is a 503.
 * A start the deadline cut may still have reached Temporal: the request's retry then finds that run
 * by its id (alreadyStarted) instead of starting a second one beside it.
 */
export async function startWorkflow(deps: ApiDeps, workflowType: string, options: Omit<StartOptions, 'timeoutMs'>): Promise<{ workflowId: string; alreadyStarted: boolean }> {
  try {
    return await startWorkflowOrThrow(deps, workflowType, { ...options, timeoutMs: deps.temporalDeadlineMs ?? DEFAULT_TEMPORAL_DEADLINE_MS });
  } catch (error) {
    deps.logger.error({ err: error, workflowId: options.workflowId }, `could not start ${workflowType}`);
    throw serviceUnavailable(`the workflow engine (Temporal) did not start the run or did not answer in time; try again (a retry joins run ${options.workflowId} if this request did start it and it still runs)`, TEMPORAL_RETRY_AFTER_SECONDS);
  }
}

/** startWorkflow without the translation: a failed start throws Temporal's own error (the intake relay tells an outage from a refusal by it). */
export async function startWorkflowOrThrow(deps: Pick<ApiDeps, 'temporal' | 'taskQueue'>, workflowType: string, options: StartOptions): Promise<{ workflowId: string; alreadyStarted: boolean }> {
  const start = () =>
    deps.temporal.workflow.start(workflowType, {
      taskQueue: deps.taskQueue,
      workflowId: options.workflowId,
      args: [options.input],
      ...options.labels,
      workflowIdReusePolicy: options.allowRerun ? WorkflowIdReusePolicy.ALLOW_DUPLICATE : WorkflowIdReusePolicy.REJECT_DUPLICATE,
    });
  try {
    // A deadline covers the client's own retries too: past it the start fails instead of waiting on.
    await (options.timeoutMs === undefined ? start() : deps.temporal.withDeadline(Date.now() + options.timeoutMs, start));
    return { workflowId: options.workflowId, alreadyStarted: false };
  } catch (error) {
    if (error instanceof WorkflowExecutionAlreadyStartedError) return { workflowId: options.workflowId, alreadyStarted: true };
    throw error;
  }
}
