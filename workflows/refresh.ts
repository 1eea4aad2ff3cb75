import {
  ApplicationFailure,
  ChildWorkflowFailure,
  continueAsNew,
  executeChild,
  log,
  ParentClosePolicy,
  proxyActivities,
  proxyLocalActivities,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { Activities } from '../activities/index.ts';
import {
  type ConnectionRefreshInput,
  type ConnectionRefreshResult,
  type ListingProgress,
  newListingProgress,
  type RefreshInput,
  type RefreshResult,
  SA_CONNECTION,
  SA_ORGANIZATION,
  SA_PROVIDER,
  workflowIds,
} from './contract.ts';
import { failureReason } from './failure-reason.ts';

/** Connections listed at once: providers' limits are per credential, the database is shared. */
const CONCURRENT_CONNECTIONS = 8;
/** Pages per activity call, and activity calls per run before continuing as new (bounded history). */
const PAGES_PER_CHUNK = 50;
const CHUNKS_PER_RUN = 40;

const { recordRefreshFailure } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
// One short query: run inside the workflow task, which saves two round trips through the server.
const { listConnectionsToRefresh } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
const { listRepositoriesChunk } = proxyActivities<Activities>({
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '2 minutes', maximumAttempts: 10 },
});

/** Refreshes the repository cache of one organization (on demand) or of all (the nightly Schedule). */
export async function refreshRepositoriesWorkflow(input: RefreshInput): Promise<RefreshResult> {
  const connections = await listConnectionsToRefresh({ organizationId: input.organizationId });
  const failed: RefreshResult['failed'] = [];
  const alreadyRunning: string[] = [];
  let refreshed = 0;
  const queue = [...connections];
  const lane = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const connection = next;
      try {
        await executeChild(refreshConnectionWorkflow, {
          workflowId: workflowIds.refreshConnection(connection.organizationId, connection.id),
          args: [{ organizationId: connection.organizationId, connectionId: connection.id }],
          parentClosePolicy: ParentClosePolicy.TERMINATE,
          typedSearchAttributes: [
            { key: SA_ORGANIZATION, value: connection.organizationId },
            { key: SA_PROVIDER, value: connection.provider },
            { key: SA_CONNECTION, value: connection.id },
          ],
        });
        refreshed++;
      } catch (error) {
        if (error instanceof WorkflowExecutionAlreadyStartedError) {
          // Another refresh (nightly or on demand) is listing this connection right now: not a failure.
          alreadyRunning.push(connection.id);
          continue;
        }
        // One connection's failure (revoked token, provider down, a listing already running) never stops the others.
        const reason = error instanceof ChildWorkflowFailure ? failureReason(error.cause ?? error) : failureReason(error);
        failed.push({ connectionId: connection.id, reason });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENT_CONNECTIONS, connections.length) }, lane));
  return { connections: connections.length, refreshed, failed, alreadyRunning };
}

/** Lists one connection's repositories into the cache, in chunks of pages; the last chunk marks what vanished. */
export async function refreshConnectionWorkflow(input: ConnectionRefreshInput): Promise<ConnectionRefreshResult> {
  let progress: ListingProgress = input.progress ?? newListingProgress();
  try {
    for (let chunk = 0; chunk < CHUNKS_PER_RUN; chunk++) {
      const result = await listRepositoriesChunk({ connectionId: input.connectionId, progress, maxPages: PAGES_PER_CHUNK });
      progress = result.progress;
      if (result.done) {
        const { visitedPageKeys: _keys, pending: _pending, ...counts } = progress;
        return { connectionId: input.connectionId, ...counts, vanished: result.vanished };
      }
    }
  } catch (error) {
    const reason = failureReason(error);
    log.warn('repository refresh failed', { connectionId: input.connectionId, reason });
    await recordRefreshFailure({ connectionId: input.connectionId, reason });
    throw ApplicationFailure.create({ type: 'RepositoryRefreshFailed', message: reason, nonRetryable: true });
  }
  return continueAsNew<typeof refreshConnectionWorkflow>({ ...input, progress });
}
