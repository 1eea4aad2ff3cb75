import {
  ApplicationFailure,
  ChildWorkflowFailure,
  continueAsNew,
  executeChild,
  log,
  ParentClosePolicy,
  patched,
  proxyActivities,
  proxyLocalActivities,
  workflowInfo,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { Activities } from '../activities/index.ts';
import type { Provider } from '../lib/domain.ts';
import {
  type ConnectionRefreshInput,
  type ConnectionRefreshResult,
  type ListingProgress,
  newListingProgress,
  REFRESH_BATCH,
  type RefreshInput,
  type RefreshResult,
  SA_CONNECTION,
  SA_ORGANIZATION,
  SA_PROVIDER,
  workflowIds,
} from './contract.ts';
import { failureReason } from './failure-reason.ts';
import { LABELLED_CHILD_STARTS, runLabels } from './run-labels.ts';

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

/** A run of refreshRepositoriesWorkflow started before batching read every connection at once; it finishes that way. */
const REFRESH_IN_BATCHES = 'refresh-in-batches';

/** `organizationSlug` is absent from listings recorded before it was read. */
type Connection = { id: string; organizationId: string; organizationSlug?: string; provider: Provider };

/**
 * Refreshes the repository cache of one organization (on demand) or of all (the nightly Schedule):
 * a child workflow per active connection, CONCURRENT_CONNECTIONS at a time, the connections read
 * in batches of `batchSize` and the run continued as new after `batchesPerRun` batches, carrying
 * the counts, so 50,000 connections neither overflow a history nor make one large payload.
 */
export async function refreshRepositoriesWorkflow(input: RefreshInput): Promise<RefreshResult> {
  const totals: RefreshResult = input.carried ?? { connections: 0, refreshed: 0, failed: [], alreadyRunning: [], failedCount: 0, alreadyRunningCount: 0 };
  if (!patched(REFRESH_IN_BATCHES)) {
    await refreshConnections(await listConnectionsToRefresh({ organizationId: input.organizationId }), totals);
    return totals;
  }
  const limit = input.batchSize ?? REFRESH_BATCH.connections;
  let after = input.after;
  for (let batch = 1; ; batch++) {
    const connections = await listConnectionsToRefresh({ organizationId: input.organizationId, after, limit });
    await refreshConnections(connections, totals);
    if (connections.length < limit) return totals;
    after = connections[connections.length - 1]!.id;
    if (batch >= (input.batchesPerRun ?? REFRESH_BATCH.perRun) || workflowInfo().continueAsNewSuggested) {
      return continueAsNew<typeof refreshRepositoriesWorkflow>({ ...input, after, carried: totals });
    }
  }
}

/** Runs one child per connection, CONCURRENT_CONNECTIONS at a time, adding the outcomes to `totals`. */
async function refreshConnections(connections: Connection[], totals: RefreshResult): Promise<void> {
  totals.connections += connections.length;
  const queue = [...connections];
  const lane = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const connection = next;
      try {
        await executeChild(refreshConnectionWorkflow, {
          workflowId: workflowIds.refreshConnection(connection.organizationId, connection.id),
          args: [{ organizationId: connection.organizationId, connectionId: connection.id }],
          parentClosePolicy: ParentClosePolicy.TERMINATE,
          ...(patched(LABELLED_CHILD_STARTS)
            ? runLabels('refresh repositories of', {
                organization: { id: connection.organizationId, slug: connection.organizationSlug },
                provider: connection.provider,
                connectionId: connection.id,
              })
            : {
                typedSearchAttributes: [
                  { key: SA_ORGANIZATION, value: connection.organizationId },
                  { key: SA_PROVIDER, value: connection.provider },
                  { key: SA_CONNECTION, value: connection.id },
                ],
              }),
        });
        totals.refreshed++;
      } catch (error) {
        if (error instanceof WorkflowExecutionAlreadyStartedError) {
          // Another refresh (nightly or on demand) is listing this connection right now: not a failure.
          if (totals.alreadyRunning.length < REFRESH_BATCH.listed) totals.alreadyRunning.push(connection.id);
          totals.alreadyRunningCount = (totals.alreadyRunningCount ?? 0) + 1;
          continue;
        }
        // One connection's failure (revoked token, provider down, a listing already running) never stops the others.
        const reason = error instanceof ChildWorkflowFailure ? failureReason(error.cause ?? error) : failureReason(error);
        if (totals.failed.length < REFRESH_BATCH.listed) totals.failed.push({ connectionId: connection.id, reason });
        totals.failedCount = (totals.failedCount ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENT_CONNECTIONS, connections.length) }, lane));
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
