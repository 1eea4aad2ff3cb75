import { ApplicationFailure, condition, log, patched, proxyActivities, setHandler } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import { attachmentSettled, DisconnectFailureTypes, type AttachmentSettled, type DisconnectInput, type DisconnectResult } from './contract.ts';
import { requestRepositoryAction } from './repository.ts';

const { beginDisconnect, listUndetachedRepositories, markConnectionDisconnected, recordDisconnectIncomplete } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** How long a disconnect waits for the detaches it asked for (each retries its provider calls for minutes); a repository not settled by then counts as not detached. */
const DETACH_WAIT = '1 hour';
/** Runs begun before this patch deleted the credential whatever their detaches did and waited without a limit: they replay as they were. */
const KEEPS_WHAT_FAILED = 'disconnect-keeps-credential-until-detached';

/**
 * Closes the connection to new attaches, then detaches every repository of the connection that is
 * not detached, waits (up to DETACH_WAIT) for each outcome, then deletes the credential. An attach in
 * flight when the list is taken is `attaching` and gets its detach queued behind it; one that had not
 * yet marked itself attaching fails its next step, which checks the connection, and undoes what it made.
 *
 * When a repository could not be detached, the credential is kept (it is what can still remove the
 * hooks), the connection says why, and the run fails typed: a new DELETE runs it again. With
 * `force`, the credential is deleted anyway, the hooks that may remain are listed in the result, and
 * no attachment of the connection stays routed.
 */
export async function disconnectWorkflow(input: DisconnectInput): Promise<DisconnectResult> {
  const keepsWhatFailed = patched(KEEPS_WHAT_FAILED);
  await beginDisconnect({ connectionId: input.connectionId });
  const repositories = await listUndetachedRepositories({ connectionId: input.connectionId });
  const settled = new Map<string, AttachmentSettled>();
  setHandler(attachmentSettled, (outcome) => {
    settled.set(outcome.repositoryId, outcome);
  });
  for (const repository of repositories) {
    const refusal = await requestRepositoryAction(input.organizationId, repository, 'detach', input.connectionId);
    if (refusal) settled.set(repository.repositoryId, { repositoryId: repository.repositoryId, action: 'detach', status: 'failed', reason: refusal });
  }
  const allSettled = () => repositories.every((r) => settled.has(r.repositoryId));
  if (keepsWhatFailed) await condition(allSettled, DETACH_WAIT);
  else await condition(allSettled);

  const notDetached = repositories
    .map(({ repositoryId }) => ({ repositoryId, outcome: settled.get(repositoryId) }))
    .filter(({ outcome }) => outcome?.status !== 'detached')
    .map(({ repositoryId, outcome }) => ({ repositoryId, reason: outcome ? (outcome.reason ?? outcome.status) : `no detach outcome within ${DETACH_WAIT}` }));
  if (keepsWhatFailed && notDetached.length > 0 && !input.force) {
    const reason = `disconnect incomplete: ${notDetached.length} of ${repositories.length} repositories could not be detached (${notDetached.map((r) => r.repositoryId).join(', ')}); the credential is kept so that DELETE again can remove their hooks, or DELETE with ?force=true gives them up`;
    await recordDisconnectIncomplete({ connectionId: input.connectionId, reason });
    throw ApplicationFailure.create({ type: DisconnectFailureTypes.incomplete, message: reason, nonRetryable: true, details: [{ notDetached }] });
  }
  if (notDetached.length > 0) log.warn('some repositories could not be detached before the credential was deleted', { notDetached });
  await markConnectionDisconnected({ connectionId: input.connectionId });
  return { status: 'disconnected', detachedRepositories: repositories.length - notDetached.length, ...(notDetached.length > 0 ? { notDetached } : {}) };
}
