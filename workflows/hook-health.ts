import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ChildWorkflowFailure,
  condition,
  continueAsNew,
  executeChild,
  ParentClosePolicy,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import {
  attachmentSettled,
  SA_CONNECTION,
  SA_ORGANIZATION,
  SA_PROVIDER,
  workflowIds,
  type AttachmentSettled,
  type ConnectionHookHealthInput,
  type ConnectionHookHealthResult,
  type HookHealthInput,
  type HookHealthResult,
} from './contract.ts';
import { failureReason } from './failure-reason.ts';
import { requestRepositoryAction } from './repository.ts';
import { LABELLED_CHILD_STARTS, runLabels } from './run-labels.ts';

const { listHookHealthConnections } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
const { listAttachedRepositories, listPendingHookSweeps } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** Repositories read per page; the run continues as new between pages once its history grows. */
const REPOSITORIES_PER_PAGE = 100;
/** How long one repository's check may wait behind its attach or detach before it is reported as not done. */
const CHECK_TIMEOUT = '1 hour';
/** Failing repositories listed in a connection's result (every one's reason is on its attachment). */
const MAX_LISTED_FAILURES = 20;

/**
 * Repositories not attached whose hooks one nightly run of a connection sweeps at most (those not
 * tried since their status changed first, the longest waiting first, then the longest since tried:
 * pendingHookSweepsPage; the others on later nights). An organization has at most 50 connections
 * (MAX_CONNECTIONS_PER_ORGANIZATION), so at most 500 sweeps a night, each a few provider calls that
 * ask the worker's per-organization share of activity slots like every check.
 */
export const UNATTACHED_SWEEPS_PER_CONNECTION = 10;
/**
 * Later nightly runs of a connection, after checking its attached repositories, sweep the hooks at
 * the delivery URL off its repositories that are not attached (reconcileHooks, hooks.ts): a hook a
 * provider stored after its attach gave up on it, or one left by a run an operator terminated.
 * Runs started before end after the check, and replay so.
 */
const SWEEP_UNATTACHED = 'hook-health-sweep-unattached';
/**
 * A listed attached repository whose reconcile failed as a whole while it was not attached (its
 * attachment no longer `attached`, or its row gone: nothing recorded, answered `failed` with no
 * finding) is counted `failing` with the run's reason; runs before it counted it nowhere.
 */
const FAILED_RECONCILE_COUNTED = 'hook-health-failed-reconcile-counted';

/** Connections read at once, and batches per run before it continues as new (bounded history and payloads). */
const CONNECTIONS_PER_BATCH = 500;
const BATCHES_PER_RUN = 4;

type Connection = Awaited<ReturnType<Activities['listHookHealthConnections']>>[number];

/**
 * The hook-health reconcile (the Schedule's run): checks every active connection with attached
 * repositories, `connectionsAtOnce` at a time, reading them in batches and continuing as new
 * between batches once the history grows. One connection's failure never stops the others.
 */
export async function hookHealthWorkflow(input: HookHealthInput): Promise<HookHealthResult> {
  const totals: HookHealthResult = input.carried ?? { connections: 0, alreadyRunning: 0, failed: 0, failures: [] };
  let after = input.after;
  for (let batch = 1; ; batch++) {
    const connections = await listHookHealthConnections({ organizationId: input.organizationId, after, limit: CONNECTIONS_PER_BATCH });
    await checkConnections(connections, input.connectionsAtOnce, totals);
    if (connections.length < CONNECTIONS_PER_BATCH) return totals;
    after = connections.at(-1)!.connectionId;
    if (batch >= BATCHES_PER_RUN || workflowInfo().continueAsNewSuggested) return continueAsNew<typeof hookHealthWorkflow>({ ...input, after, carried: totals });
  }
}

/** One child run per connection, `atOnce` at a time, adding the outcomes to `totals`. */
async function checkConnections(connections: Connection[], atOnce: number, totals: HookHealthResult): Promise<void> {
  totals.connections += connections.length;
  const queue = [...connections];
  const lane = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const connection = next;
      try {
        await executeChild(connectionHookHealthWorkflow, {
          workflowId: workflowIds.hookHealthConnection(connection.organizationId, connection.connectionId),
          args: [{ organizationId: connection.organizationId, connectionId: connection.connectionId }],
          parentClosePolicy: ParentClosePolicy.TERMINATE,
          ...(patched(LABELLED_CHILD_STARTS)
            ? runLabels('check hook health of', {
                // Absent from listings recorded before it was read.
                organization: { id: connection.organizationId, slug: connection.organizationSlug as string | undefined },
                provider: connection.provider,
                connectionId: connection.connectionId,
              })
            : {
                typedSearchAttributes: [
                  { key: SA_ORGANIZATION, value: connection.organizationId },
                  { key: SA_PROVIDER, value: connection.provider },
                  { key: SA_CONNECTION, value: connection.connectionId },
                ],
              }),
        });
      } catch (error) {
        if (error instanceof WorkflowExecutionAlreadyStartedError) {
          totals.alreadyRunning++;
          continue;
        }
        totals.failed++;
        const reason = failureReason(error instanceof ChildWorkflowFailure ? (error.cause ?? error) : error);
        if (totals.failures.length < MAX_LISTED_FAILURES) totals.failures.push({ connectionId: connection.connectionId, reason });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, atOnce), connections.length) }, lane));
}

/**
 * Checks one connection's attached repositories one after another (the nightly reconcile's run for
 * the connection). The findings themselves are on each attachment (hookHealth).
 */
export async function connectionHookHealthWorkflow(input: ConnectionHookHealthInput): Promise<ConnectionHookHealthResult> {
  const counts = await checkConnectionHooks(input, (after, counts) => continueAsNew<typeof connectionHookHealthWorkflow>({ ...input, after, counts }));
  if (patched(SWEEP_UNATTACHED)) {
    const { swept, failed } = await sweepUnattachedRepositories(input);
    counts.unattachedSwept = swept;
    if (failed > 0) counts.unattachedSweepsFailed = failed;
  }
  return counts;
}

/**
 * Asks each repository of the connection due for the sweep of unattached hooks (at most
 * UNATTACHED_SWEEPS_PER_CONNECTION) for a reconcile through its repository workflow, one after
 * another, as the check does: the sweep never interleaves with an attach or a detach, and decides
 * there whether the repository is still due. Returns how many were swept and how many answered that
 * their sweep failed as a whole (runs of earlier code never answer so); one failed or not answered
 * stays due for a later night.
 */
async function sweepUnattachedRepositories(input: ConnectionHookHealthInput): Promise<{ swept: number; failed: number }> {
  const settled = new Map<string, AttachmentSettled>();
  setHandler(attachmentSettled, (outcome) => {
    if (outcome.action === 'reconcile') settled.set(outcome.repositoryId, outcome);
  });
  let swept = 0;
  let failed = 0;
  for (const repository of await listPendingHookSweeps({ connectionId: input.connectionId, limit: UNATTACHED_SWEEPS_PER_CONNECTION })) {
    if (await requestRepositoryAction(input.organizationId, repository, 'reconcile', input.connectionId)) continue;
    if (await condition(() => settled.has(repository.repositoryId), CHECK_TIMEOUT)) {
      if (settled.get(repository.repositoryId)!.status === 'failed') failed++;
      else swept++;
    }
    settled.delete(repository.repositoryId);
  }
  return { swept, failed };
}

/**
 * Runs the hook-health check of each attached repository of a connection, one after another, each
 * through its repository workflow (so a check never interleaves with an attach or a detach), and
 * counts what was found. Between pages of repositories, once the history grows, it hands the
 * position and the counts to `continueAsNew`.
 */
export async function checkConnectionHooks(
  input: ConnectionHookHealthInput,
  continueWith: (after: string, counts: ConnectionHookHealthResult) => Promise<never>,
): Promise<ConnectionHookHealthResult> {
  const counts: ConnectionHookHealthResult = input.counts ?? { healthy: 0, repaired: 0, failing: 0, failures: [] };
  const settled = new Map<string, AttachmentSettled>();
  setHandler(attachmentSettled, (outcome) => {
    if (outcome.action === 'reconcile') settled.set(outcome.repositoryId, outcome);
  });
  const fail = (repositoryId: string, reason: string) => {
    counts.failing++;
    if (counts.failures.length < MAX_LISTED_FAILURES) counts.failures.push({ repositoryId, reason });
  };
  let after = input.after;
  for (;;) {
    const page = await listAttachedRepositories({ connectionId: input.connectionId, after, limit: REPOSITORIES_PER_PAGE });
    if (page.length === 0) return counts;
    for (const repository of page) {
      const refusal = await requestRepositoryAction(input.organizationId, repository, 'reconcile', input.connectionId);
      if (refusal) {
        fail(repository.repositoryId, refusal);
        continue;
      }
      if (!(await condition(() => settled.has(repository.repositoryId), CHECK_TIMEOUT))) {
        fail(repository.repositoryId, `no answer from its repository workflow within ${CHECK_TIMEOUT}`);
        continue;
      }
      const answer = settled.get(repository.repositoryId)!;
      const health = answer.hookHealth;
      settled.delete(repository.repositoryId);
      if (health?.status === 'healthy') counts.healthy++;
      else if (health?.status === 'repaired') counts.repaired++;
      else if (health?.status === 'failing') fail(repository.repositoryId, health.reason ?? 'failing');
      // Failed with no finding: its step failed while it was not attached (nothing recorded).
      else if (!health && answer.status === 'failed' && patched(FAILED_RECONCILE_COUNTED)) fail(repository.repositoryId, answer.reason ?? 'its reconcile failed');
      // Otherwise no finding: it was detached meanwhile, so there was nothing to check.
    }
    after = page.at(-1)!.repositoryId;
    if (workflowInfo().continueAsNewSuggested) return continueWith(after, counts);
  }
}
