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
import { askingActivitySlot } from './activity-slot.ts';
import {
  type ConnectionRefreshInput,
  type ConnectionRefreshResult,
  LISTING_ALREADY_RUNNING,
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
// One short query each: run inside the workflow task, which saves two round trips through the server.
const { listConnectionsToRefresh, recordRefreshFailure: recordRefreshFailureInTask } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
const listingOptions = {
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: 2000, backoffCoefficient: 2, maximumInterval: 120_000, maximumAttempts: 10 },
} as const;
const { listRepositoriesChunk } = proxyActivities<Activities>(listingOptions);
/**
 * A listing calls the tenant's server, which may take up to 30 minutes an attempt, and holds an
 * activity slot meanwhile: one organization's nightly lanes and on-demand refreshes could hold most
 * of a worker's slots. Later runs ask the worker for the slot (a share per organization,
 * workflows/activity-slot.ts); one refused waits on a timer in its lane and costs no attempt. It
 * is never given up for its refusals, as the provider steps are after REFUSED_FOR_AT_MOST_MS: its
 * organization's own listings hold the share, and they end within their own timeouts; a listing
 * given up would record a refresh failure the connection did not have and wait a night. Its waits
 * grow instead (keptWaitingMs), so a long refusal adds little history. Runs started before list as
 * they did.
 */
const listRepositoriesChunkAskingSlot = askingActivitySlot('listRepositoriesChunk', listingOptions, { keepsWaiting: true });
const LISTING_ACTIVITY_ADMISSION = 'refresh-listing-activity-admission';

/** A run of refreshRepositoriesWorkflow started before batching read every connection at once; it finishes that way. */
const REFRESH_IN_BATCHES = 'refresh-in-batches';
/**
 * Runs started before this list each connection in a child workflow of its own (whose id kept two
 * refreshes from listing one connection at once), and finish that way when replayed; later runs
 * list the connections themselves, each listing holding the connection's lease in PostgreSQL.
 */
const LISTINGS_IN_REFRESH_RUN = 'refresh-listings-in-refresh-run';
/**
 * Runs of every organization (the nightly Schedule's) started before this give each free lane the
 * next connection in batch order, so one organization's connections to servers that never answer
 * could hold all CONCURRENT_CONNECTIONS lanes while every other organization's waited; later ones
 * give it to the organization with the fewest listings going (nextConnection).
 */
const LANES_BY_ORGANIZATION = 'refresh-lanes-by-organization';
/**
 * Runs of every organization started before this read the connections in id order, so one
 * organization's many connections were spread over every batch, and each batch, which ends with its
 * slowest listing, waited for that organization's; later ones read them in rounds (each
 * organization's first connection, then each one's second, …): an organization's connections
 * beyond another's count come after all of that one's.
 */
const NIGHTLY_IN_ROUNDS = 'refresh-nightly-in-rounds';
/**
 * Runs of every organization started before this list one batch at a time: a batch ended when its
 * slowest listing did, so one organization's listing at a server that never answers (10 attempts,
 * about 13 minutes) held every other organization's connections of the next batch back, once per
 * batch. Later ones keep their lanes going across batches (listReadingAhead): a free lane reads
 * the next batch as soon as the connections already read hold nothing it may take.
 */
const NIGHTLY_READING_AHEAD = 'refresh-nightly-reading-ahead';

type ListChunk = (input: Parameters<Activities['listRepositoriesChunk']>[0]) => ReturnType<Activities['listRepositoriesChunk']>;

/** `organizationSlug` is absent from listings recorded before it was read. */
type Connection = { id: string; organizationId: string; organizationSlug?: string; provider: Provider; round?: number };

/**
 * Refreshes the repository cache of one organization (on demand) or of all (the nightly Schedule):
 * each active connection listed by an activity of this run, CONCURRENT_CONNECTIONS at a time (a
 * listing longer than one chunk of pages goes on in a child workflow of its own), the connections
 * read in batches of `batchSize` and the run continued as new after `batchesPerRun` batches,
 * carrying the counts, so 50,000 connections neither overflow a history nor make one large payload.
 */
export async function refreshRepositoriesWorkflow(input: RefreshInput): Promise<RefreshResult> {
  const totals: RefreshResult = input.carried ?? { connections: 0, refreshed: 0, failed: [], alreadyRunning: [], failedCount: 0, alreadyRunningCount: 0 };
  if (!patched(REFRESH_IN_BATCHES)) {
    await refreshConnections(await listConnectionsToRefresh({ organizationId: input.organizationId }), totals);
    return totals;
  }
  const listsItself = patched(LISTINGS_IN_REFRESH_RUN);
  // A run of one organization has nothing to share its lanes with: batch order is the fair order.
  const byOrganization = listsItself && input.organizationId === undefined && patched(LANES_BY_ORGANIZATION);
  const listChunk = listsItself && patched(LISTING_ACTIVITY_ADMISSION) ? listRepositoriesChunkAskingSlot : listRepositoriesChunk;
  const refreshBatch = listsItself ? (batch: Connection[], counts: RefreshResult) => listConnections(batch, counts, listChunk, byOrganization) : refreshConnections;
  // A run continued from one reading in id order goes on in id order.
  const inRounds = byOrganization && input.after === undefined && patched(NIGHTLY_IN_ROUNDS);
  const limit = input.batchSize ?? REFRESH_BATCH.connections;
  let after = input.after;
  let afterInRounds = input.afterInRounds;
  if (byOrganization && patched(NIGHTLY_READING_AHEAD)) {
    // The same batches and the same bound per run as below; only the lanes no longer wait for a batch's end.
    let batches = 0;
    let last = false;
    const readBatch = async (): Promise<Connection[] | undefined> => {
      if (last || (batches > 0 && (batches >= (input.batchesPerRun ?? REFRESH_BATCH.perRun) || workflowInfo().continueAsNewSuggested))) return undefined;
      batches++;
      const connections = await listConnectionsToRefresh(inRounds ? { inRounds, afterInRounds, limit } : { after, limit });
      const end = connections[connections.length - 1];
      if (connections.length < limit || end === undefined) last = true;
      else if (inRounds) afterInRounds = { round: end.round!, organizationId: end.organizationId, connectionId: end.id };
      else after = end.id;
      return connections;
    };
    await listReadingAhead(readBatch, totals, listChunk);
    if (last) return totals;
    // The run's last listings have ended: nothing of this run is in flight when the next one starts.
    return continueAsNew<typeof refreshRepositoriesWorkflow>({ ...input, ...(inRounds ? { afterInRounds } : { after }), carried: totals });
  }
  for (let batch = 1; ; batch++) {
    const connections = await listConnectionsToRefresh(inRounds ? { inRounds, afterInRounds, limit } : { organizationId: input.organizationId, after, limit });
    await refreshBatch(connections, totals);
    if (connections.length < limit) return totals;
    const last = connections[connections.length - 1]!;
    if (inRounds) afterInRounds = { round: last.round!, organizationId: last.organizationId, connectionId: last.id };
    else after = last.id;
    if (batch >= (input.batchesPerRun ?? REFRESH_BATCH.perRun) || workflowInfo().continueAsNewSuggested) {
      return continueAsNew<typeof refreshRepositoriesWorkflow>({ ...input, ...(inRounds ? { afterInRounds } : { after }), carried: totals });
    }
  }
}

function countAlreadyRunning(totals: RefreshResult, connectionId: string): void {
  if (totals.alreadyRunning.length < REFRESH_BATCH.listed) totals.alreadyRunning.push(connectionId);
  totals.alreadyRunningCount = (totals.alreadyRunningCount ?? 0) + 1;
}

function countFailed(totals: RefreshResult, connectionId: string, reason: string): void {
  if (totals.failed.length < REFRESH_BATCH.listed) totals.failed.push({ connectionId, reason });
  totals.failedCount = (totals.failedCount ?? 0) + 1;
}

/** Lists one batch of connections, CONCURRENT_CONNECTIONS at a time (runLanes), and ends with its slowest listing. */
async function listConnections(connections: Connection[], totals: RefreshResult, listChunk: ListChunk, byOrganization = false): Promise<void> {
  totals.connections += connections.length;
  const queue = [...connections];
  const going = new Map<string, number>();
  const take = () => (byOrganization ? nextConnection(queue, going) : queue.shift());
  await runLanes(Math.min(CONCURRENT_CONNECTIONS, connections.length), take, going, totals, listChunk);
}

/**
 * listConnections across batches: CONCURRENT_CONNECTIONS lanes, each taking the next connection as
 * soon as it is free, by the same rule (nextConnection), from the connections read so far. A lane
 * reads the next batch (`readBatch`; undefined once the run has read its last) when those hold no
 * connection of an organization with no listing going: one waiting there may be of an organization
 * whose listings all hang, and the next batch may hold one of an organization that has none going.
 * So no batch waits for another's slowest listing; an organization's hung listings hold only their
 * own lanes (at most ⌊7/m⌋ + 1 while m organizations have connections read and waiting). One lane
 * reads at a time; the others freed meanwhile wait for that read. The lanes end when everything
 * read is listed and the run has nothing more to read.
 */
async function listReadingAhead(readBatch: () => Promise<Connection[] | undefined>, totals: RefreshResult, listChunk: ListChunk): Promise<void> {
  const queue: Connection[] = [];
  const going = new Map<string, number>();
  let more = true;
  let reading: Promise<void> | undefined;
  const read = async () => {
    const batch = await readBatch();
    if (batch === undefined) more = false;
    else {
      totals.connections += batch.length;
      queue.push(...batch);
    }
    reading = undefined;
  };
  const take = (): Taken => {
    const index = nextConnectionIndex(queue, going);
    if (!more || (index !== -1 && !going.get(queue[index]!.organizationId))) return index === -1 ? undefined : queue.splice(index, 1)[0];
    return { waitFor: (reading ??= read()) };
  };
  await runLanes(CONCURRENT_CONNECTIONS, take, going, totals, listChunk);
}

/** What a free lane gets: the connection it lists next, a read of connections to wait for and ask again after, or nothing (it ends). */
type Taken = Connection | { waitFor: Promise<void> } | undefined;

/**
 * Runs `lanes` lanes, each listing the connection `take` gives it with an activity of this run,
 * adding the outcomes to `totals`; `going` counts each organization's listings meanwhile. A child
 * run per connection cost two workflow tasks, a run's start and end in the server and a sandbox in
 * the worker for one activity; the connection's lease (taken by the listing, given back when it
 * ends) keeps two refreshes from listing it at once instead of the child's id. A listing longer
 * than one chunk of pages goes on in the child, which carries its progress from chunk to chunk and
 * continues as new, so this run's history holds no page keys.
 */
async function runLanes(lanes: number, take: () => Taken, going: Map<string, number>, totals: RefreshResult, listChunk: ListChunk): Promise<void> {
  const { workflowId, runId } = workflowInfo();
  const leaseHolder = `${workflowId}/${runId}`;
  const lane = async () => {
    for (let next = take(); next; next = take()) {
      if ('waitFor' in next) {
        await next.waitFor;
        continue;
      }
      const connection = next;
      going.set(connection.organizationId, (going.get(connection.organizationId) ?? 0) + 1);
      try {
        const first = await listChunk({ connectionId: connection.id, progress: newListingProgress(), maxPages: PAGES_PER_CHUNK, leaseHolder });
        if (first.alreadyRunning) {
          countAlreadyRunning(totals, connection.id);
          continue;
        }
        if (!first.done) {
          await executeChild(refreshConnectionWorkflow, {
            workflowId: workflowIds.refreshConnection(connection.organizationId, connection.id),
            args: [{ organizationId: connection.organizationId, connectionId: connection.id, progress: first.progress, leaseHolder }],
            parentClosePolicy: ParentClosePolicy.TERMINATE,
            ...runLabels('refresh repositories of', {
              organization: { id: connection.organizationId, slug: connection.organizationSlug },
              provider: connection.provider,
              connectionId: connection.id,
            }),
          });
        }
        totals.refreshed++;
      } catch (error) {
        // A child of a refresh started before the lease still lists this connection (its lease runs out unused).
        if (error instanceof WorkflowExecutionAlreadyStartedError) {
          countAlreadyRunning(totals, connection.id);
          continue;
        }
        if (error instanceof ChildWorkflowFailure) {
          // The child recorded its failure on the connection.
          if (error.cause instanceof ApplicationFailure && error.cause.type === LISTING_ALREADY_RUNNING) countAlreadyRunning(totals, connection.id);
          else countFailed(totals, connection.id, failureReason(error.cause ?? error));
          continue;
        }
        // One connection's failure (revoked token, provider down) never stops the others.
        const reason = failureReason(error);
        log.warn('repository refresh failed', { connectionId: connection.id, reason });
        await recordRefreshFailureInTask({ connectionId: connection.id, reason, leaseHolder });
        countFailed(totals, connection.id, reason);
      } finally {
        going.set(connection.organizationId, going.get(connection.organizationId)! - 1);
      }
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
}

/**
 * Takes the connection a free lane lists next out of `queue`: the first of the organization with the
 * fewest listings `going`. An organization is given a lane only while no other organization with a
 * connection waiting has fewer going, so one whose listings hang (its servers answer as slowly as
 * it likes, a listing's attempts up to 30 minutes each) holds at most ⌊7/m⌋ + 1 of the 8 lanes
 * while m organizations, itself included, have connections waiting (4 beside one other); a lane
 * given back goes to the waiting organization with the fewest going.
 */
function nextConnection(queue: Connection[], going: ReadonlyMap<string, number>): Connection | undefined {
  const chosen = nextConnectionIndex(queue, going);
  return chosen === -1 ? undefined : queue.splice(chosen, 1)[0];
}

/** Where in `queue` nextConnection takes from; -1 when it is empty. */
function nextConnectionIndex(queue: readonly Connection[], going: ReadonlyMap<string, number>): number {
  let chosen = -1;
  let fewest = Infinity;
  for (let i = 0; i < queue.length && fewest > 0; i++) {
    const count = going.get(queue[i]!.organizationId) ?? 0;
    if (count < fewest) [chosen, fewest] = [i, count];
  }
  return chosen;
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
          countAlreadyRunning(totals, connection.id);
          continue;
        }
        // One connection's failure (revoked token, provider down, a listing already running) never stops the others.
        const reason = error instanceof ChildWorkflowFailure ? failureReason(error.cause ?? error) : failureReason(error);
        countFailed(totals, connection.id, reason);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENT_CONNECTIONS, connections.length) }, lane));
}

/**
 * Lists one connection's repositories into the cache, in chunks of pages; the last chunk marks what
 * vanished. Started by a refresh for a listing longer than its first chunk (`progress` and
 * `leaseHolder` given: the refresh's lease is carried on), or, by runs from before the lease, for
 * every connection.
 */
export async function refreshConnectionWorkflow(input: ConnectionRefreshInput): Promise<ConnectionRefreshResult> {
  let progress: ListingProgress = input.progress ?? newListingProgress();
  const lease = input.leaseHolder === undefined ? {} : { leaseHolder: input.leaseHolder };
  const listChunk = patched(LISTING_ACTIVITY_ADMISSION) ? listRepositoriesChunkAskingSlot : listRepositoriesChunk;
  try {
    for (let chunk = 0; chunk < CHUNKS_PER_RUN; chunk++) {
      const result = await listChunk({ connectionId: input.connectionId, progress, maxPages: PAGES_PER_CHUNK, ...lease });
      if (result.alreadyRunning) {
        // The lease ran out (a long wait for a retry) and another refresh took the listing over.
        throw ApplicationFailure.create({ type: LISTING_ALREADY_RUNNING, message: 'another refresh is listing this connection', nonRetryable: true });
      }
      progress = result.progress;
      if (result.done) {
        const { visitedPageKeys: _keys, pending: _pending, ...counts } = progress;
        return { connectionId: input.connectionId, ...counts, vanished: result.vanished };
      }
    }
  } catch (error) {
    if (error instanceof ApplicationFailure && error.type === LISTING_ALREADY_RUNNING) throw error;
    const reason = failureReason(error);
    log.warn('repository refresh failed', { connectionId: input.connectionId, reason });
    await recordRefreshFailure({ connectionId: input.connectionId, reason, ...lease });
    throw ApplicationFailure.create({ type: 'RepositoryRefreshFailed', message: reason, nonRetryable: true });
  }
  return continueAsNew<typeof refreshConnectionWorkflow>({ ...input, progress });
}
