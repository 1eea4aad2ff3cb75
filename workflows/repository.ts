import { ApplicationFailure, continueAsNew, getExternalWorkflowHandle, log, setHandler, workflowInfo } from '@temporalio/workflow';
import { attachRepository } from './attach.ts';
import {
  attachmentRequested,
  attachmentSettled,
  type AttachmentRequest,
  type AttachmentSettled,
  type RepositoryWorkflowInput,
  type RepositoryWorkflowResult,
} from './contract.ts';
import { detachRepository } from './detach.ts';

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
 * A detach that arrives during an attach runs after it and ends with no hooks. The run ends once
 * no request is left: with the last request's state, or failing with its typed failure.
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
    let settled: AttachmentSettled;
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
