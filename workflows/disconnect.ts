import { condition, log, proxyActivities, setHandler } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import { attachmentSettled, type AttachmentSettled, type DisconnectInput, type DisconnectResult } from './contract.ts';
import { requestRepositoryAction } from './repository.ts';

const { beginDisconnect, listUndetachedRepositories, markConnectionDisconnected } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

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
    const refusal = await requestRepositoryAction(input.organizationId, repository, 'detach');
    if (refusal) settled.set(repository.repositoryId, { repositoryId: repository.repositoryId, action: 'detach', status: 'failed', reason: refusal });
  }
  await condition(() => repositories.every((r) => settled.has(r.repositoryId)));

  const notDetached = [...settled.values()].filter((s) => s.status !== 'detached').map((s) => ({ repositoryId: s.repositoryId, reason: s.reason ?? s.status }));
  // Hooks a failed detach left behind are reported, but keeping the credential would not make disconnect any less wanted.
  if (notDetached.length > 0) log.warn('some repositories could not be detached before the credential was deleted', { notDetached });
  await markConnectionDisconnected({ connectionId: input.connectionId });
  return { status: 'disconnected', detachedRepositories: repositories.length - notDetached.length, ...(notDetached.length > 0 ? { notDetached } : {}) };
}
