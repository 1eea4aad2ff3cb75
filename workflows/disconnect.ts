import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { condition, getExternalWorkflowHandle, log, ParentClosePolicy, proxyActivities, setHandler, startChild, workflowInfo } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { Provider } from '../lib/domain.ts';
import {
  attachmentRequested,
  attachmentSettled,
  SA_ORGANIZATION,
  SA_PROVIDER,
  SA_REPOSITORY,
  workflowIds,
  type AttachmentRequest,
  type AttachmentSettled,
  type DisconnectInput,
  type DisconnectResult,
} from './contract.ts';
import { repositoryWorkflow } from './repository.ts';

const { beginDisconnect, listUndetachedRepositories, markConnectionDisconnected } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** How often a detach request is tried when the repository workflow keeps closing between a refused start and the signal. */
const REQUEST_ATTEMPTS = 3;

/**
 * Asks the repository's workflow (the id a DELETE .../attachment uses) for a detach that reports
 * back here: started as a child when no run is there, otherwise queued on the running one by
 * signal, so it never interleaves with an attach in flight. Returns why it could not, if so.
 */
async function requestDetach(organizationId: string, repository: { repositoryId: string; provider: Provider }): Promise<string | undefined> {
  const workflowId = workflowIds.repository(organizationId, repository.repositoryId);
  const request: AttachmentRequest = { action: 'detach', replyTo: [workflowInfo().workflowId] };
  for (let attempt = 1; attempt <= REQUEST_ATTEMPTS; attempt++) {
    try {
      await startChild(repositoryWorkflow, {
        workflowId,
        args: [{ organizationId, repositoryId: repository.repositoryId, pending: [request] }],
        // A detach half done must finish even if this run is terminated.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        typedSearchAttributes: [
          { key: SA_ORGANIZATION, value: organizationId },
          { key: SA_PROVIDER, value: repository.provider },
          { key: SA_REPOSITORY, value: repository.repositoryId },
        ],
      });
      return undefined;
    } catch (error) {
      if (!(error instanceof WorkflowExecutionAlreadyStartedError)) throw error;
    }
    try {
      await getExternalWorkflowHandle(workflowId).signal(attachmentRequested, request);
      return undefined;
    } catch {
      log.info('the repository workflow closed before the detach request reached it; starting a new run', { workflowId });
    }
  }
  return `neither start nor signal reached ${workflowId}`;
}

/**
 * Closes the connection to new attaches, then detaches every repository of the connection that is
 * not detached, waits for each outcome, then deletes the credential. An attach in flight when the
 * list is taken is `attaching` and gets its detach queued behind it; one that had not yet marked
 * itself attaching fails its next step, which checks the connection, and undoes what it made.
 */
export async function disconnectWorkflow(input: DisconnectInput): Promise<DisconnectResult> {
  await beginDisconnect({ connectionId: input.connectionId });
  const repositories = await listUndetachedRepositories({ connectionId: input.connectionId });
  const settled = new Map<string, AttachmentSettled>();
  setHandler(attachmentSettled, (outcome) => {
    settled.set(outcome.repositoryId, outcome);
  });
  for (const repository of repositories) {
    const refusal = await requestDetach(input.organizationId, repository);
    if (refusal) settled.set(repository.repositoryId, { repositoryId: repository.repositoryId, action: 'detach', status: 'failed', reason: refusal });
  }
  await condition(() => repositories.every((r) => settled.has(r.repositoryId)));

  const notDetached = [...settled.values()].filter((s) => s.status !== 'detached').map((s) => ({ repositoryId: s.repositoryId, reason: s.reason ?? s.status }));
  // Hooks a failed detach left behind are reported, but keeping the credential would not make disconnect any less wanted.
  if (notDetached.length > 0) log.warn('some repositories could not be detached before the credential was deleted', { notDetached });
  await markConnectionDisconnected({ connectionId: input.connectionId });
  return { status: 'disconnected', detachedRepositories: repositories.length - notDetached.length, ...(notDetached.length > 0 ? { notDetached } : {}) };
}
