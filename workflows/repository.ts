import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ApplicationFailure,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  ParentClosePolicy,
  patched,
  setHandler,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import type { Provider } from '../lib/domain.ts';
import { attachRepository } from './attach.ts';
import {
  attachmentRequested,
  attachmentSettled,
  SA_ORG_SLUGS,
  SA_ORGANIZATION,
  SA_PROVIDER,
  SA_REPOSITORY,
  workflowIds,
  type AttachmentAction,
  type AttachmentRequest,
  type AttachmentSettled,
  type RepositoryWorkflowInput,
  type RepositoryWorkflowResult,
} from './contract.ts';
import { detachRepository } from './detach.ts';
import { reconcileRepository } from './reconcile.ts';
import { LABELLED_CHILD_STARTS, runLabels } from './run-labels.ts';

/**
 * One repository's attach and detach requests, carried out one at a time in arrival order.
 *
 * Why one workflow per repository: attach and detach both list, create and delete the same
 * provider hooks, so two runs side by side could undo each other (a detach sweeping while an
 * attach creates leaves a hook behind). The API sends every request with signalWithStart to
 * `repository:<org>:<repositoryId>`, which starts this workflow or queues the request on the run
 * already there; Temporal guarantees one run per id, so requests never interleave. Terminating a
 * running attach instead would not do: its in-flight activity would still finish on the worker.
 *
 * A detach that arrives during an attach runs after it and ends with no hooks. A reconcile (the
 * hook-health check, or on a repository not attached the sweep of its hooks) runs between them like
 * any request and leaves the attachment's status as it is. The run ends once no request is left: with the last request's state, or failing with the
 * typed failure of the last attach or detach.
 */
export async function repositoryWorkflow(input: RepositoryWorkflowInput): Promise<RepositoryWorkflowResult> {
  const key = { organizationId: input.organizationId, repositoryId: input.repositoryId };
  const queue: AttachmentRequest[] = [];
  const enqueue = (request: AttachmentRequest) => {
    const waiting = queue.at(-1);
    // The same request already waiting would do the same work: only its reply addresses are added.
    if (waiting && waiting.action === request.action) {
      waiting.replyTo = [...(waiting.replyTo ?? []), ...(request.replyTo ?? [])];
      return;
    }
    queue.push({ action: request.action, replyTo: [...(request.replyTo ?? [])] });
  };
  input.pending.forEach(enqueue);
  setHandler(attachmentRequested, enqueue);

  let result: RepositoryWorkflowResult = { status: 'detached', hookIds: [], requests: 0 };
  let failure: ApplicationFailure | undefined;
  for (let request = queue.shift(); request; request = queue.shift()) {
    // It says why the last request failed: another request is the last now.
    delete result.sweepFailed;
    let settled: AttachmentSettled;
    if (request.action === 'reconcile') {
      // Only runs that receive a reconcile request come here: recorded histories replay unchanged.
      const { hookHealth, hookIds, sweepFailure } = await reconcileRepository(key);
      result = { ...result, ...(hookHealth ? { status: 'attached' as const, hookIds } : {}), requests: result.requests + 1 };
      if (sweepFailure === undefined) {
        settled = { repositoryId: key.repositoryId, action: request.action, status: result.status, ...(hookHealth ? { hookHealth } : {}) };
      } else {
        // Not attached (or its row gone): the step, the sweep of its hooks if it is due, failed as a whole (a due repository stays due).
        result = { status: 'detached', hookIds: [], requests: result.requests, sweepFailed: sweepFailure };
        settled = {
          repositoryId: key.repositoryId,
          action: request.action,
          status: 'failed',
          reason: `the reconcile of this repository failed while it was not attached (its attachment not attached, or the repository gone from the repository cache), so no hook health was recorded: ${sweepFailure}`,
        };
      }
    } else {
      try {
        if (request.action === 'attach') {
          const { hookIds } = await attachRepository(key);
          result = { status: 'attached', hookIds, requests: result.requests + 1 };
        } else {
          await detachRepository(key);
          result = { status: 'detached', hookIds: [], requests: result.requests + 1 };
        }
        failure = undefined;
        settled = { repositoryId: key.repositoryId, action: request.action, status: result.status };
      } catch (error) {
        // attachRepository / detachRepository fail only with their typed ApplicationFailure.
        failure = error as ApplicationFailure;
        result = { ...result, requests: result.requests + 1 };
        settled = { repositoryId: key.repositoryId, action: request.action, status: 'failed', reason: failure.message };
      }
    }
    for (const workflowId of request.replyTo ?? []) await reply(workflowId, settled);
    if (queue.length > 0 && workflowInfo().continueAsNewSuggested) {
      await continueAsNew<typeof repositoryWorkflow>({ ...input, pending: queue });
    }
  }
  if (failure) throw failure;
  return result;
}

async function reply(workflowId: string, settled: AttachmentSettled): Promise<void> {
  try {
    await getExternalWorkflowHandle(workflowId).signal(attachmentSettled, settled);
  } catch (error) {
    // The requester has closed (e.g. terminated by an operator): nobody waits for the answer.
    log.warn('could not report the outcome to the workflow that asked', { workflowId, error: (error as Error).message });
  }
}

/** How often a request is tried when the repository workflow keeps closing between a refused start and the signal. */
const REQUEST_ATTEMPTS = 3;

/**
 * Asks the repository's workflow (the id PUT/DELETE …/attachment use) for an action that reports
 * back to the calling workflow: started as a child when no run is there, otherwise queued on the
 * running one by signal, so it never interleaves with an attach or detach in flight. Returns why it
 * could not, if so.
 */
export async function requestRepositoryAction(
  organizationId: string,
  /** `fullName` is absent from lists recorded before it was read. */
  repository: { repositoryId: string; provider: Provider; fullName?: string },
  action: AttachmentAction,
  connectionId?: string,
): Promise<string | undefined> {
  const workflowId = workflowIds.repository(organizationId, repository.repositoryId);
  const request: AttachmentRequest = { action, replyTo: [workflowInfo().workflowId] };
  for (let attempt = 1; attempt <= REQUEST_ATTEMPTS; attempt++) {
    try {
      await startChild(repositoryWorkflow, {
        workflowId,
        args: [{ organizationId, repositoryId: repository.repositoryId, pending: [request] }],
        // A request half done must finish even if the requesting run is terminated.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        ...(patched(LABELLED_CHILD_STARTS)
          ? runLabels(action, {
              // The requester is about this organization only: the slug it was started with is the child's.
              organization: { id: organizationId, slug: workflowInfo().typedSearchAttributes.get(SA_ORG_SLUGS)?.[0] },
              provider: repository.provider,
              connectionId,
              repository: { id: repository.repositoryId, fullName: repository.fullName },
            })
          : {
              typedSearchAttributes: [
                { key: SA_ORGANIZATION, value: organizationId },
                { key: SA_PROVIDER, value: repository.provider },
                { key: SA_REPOSITORY, value: repository.repositoryId },
              ],
            }),
      });
      return undefined;
    } catch (error) {
      if (!(error instanceof WorkflowExecutionAlreadyStartedError)) throw error;
    }
    try {
      await getExternalWorkflowHandle(workflowId).signal(attachmentRequested, request);
      return undefined;
    } catch {
      log.info(`the repository workflow closed before the ${action} request reached it; starting a new run`, { workflowId });
    }
  }
  return `neither start nor signal reached ${workflowId}`;
}
