import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ChildWorkflowFailure,
  condition,
  continueAsNew,
  executeChild,
  ParentClosePolicy,
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

const { listHookHealthConnections } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
const { listAttachedRepositories } = proxyActivities<Activities>({
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
 * The hook-health reconcile (the Schedule's run): checks every active connection with attached
 * repositories, `connectionsAtOnce` at a time. One connection's failure never stops the others.
 */
export async function hookHealthWorkflow(input: HookHealthInput): Promise<HookHealthResult> {
  const connections = await listHookHealthConnections({ organizationId: input.organizationId });
  const failed: HookHealthResult['failed'] = [];
  const alreadyRunning: string[] = [];
  const queue = [...connections];
  const lane = async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const connection = next;
      try {
        await executeChild(connectionHookHealthWorkflow, {
          workflowId: workflowIds.hookHealthConnection(connection.organizationId, connection.connectionId),
          args: [{ organizationId: connection.organizationId, connectionId: connection.connectionId }],
          parentClosePolicy: ParentClosePolicy.TERMINATE,
          typedSearchAttributes: [
            { key: SA_ORGANIZATION, value: connection.organizationId },
            { key: SA_PROVIDER, value: connection.provider },
            { key: SA_CONNECTION, value: connection.connectionId },
          ],
        });
      } catch (error) {
        if (error instanceof WorkflowExecutionAlreadyStartedError) {
          alreadyRunning.push(connection.connectionId);
          continue;
        }
        failed.push({ connectionId: connection.connectionId, reason: failureReason(error instanceof ChildWorkflowFailure ? (error.cause ?? error) : error) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, input.connectionsAtOnce), connections.length) }, lane));
  return { connections: connections.length, alreadyRunning, failed };
}

/**
 * Checks one connection's attached repositories one after another, each through its repository
 * workflow (so a check never interleaves with an attach or a detach), and counts what was found.
 * The findings themselves are on each attachment (hookHealth).
 */
export async function connectionHookHealthWorkflow(input: ConnectionHookHealthInput): Promise<ConnectionHookHealthResult> {
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
      const refusal = await requestRepositoryAction(input.organizationId, repository, 'reconcile');
      if (refusal) {
        fail(repository.repositoryId, refusal);
        continue;
      }
      if (!(await condition(() => settled.has(repository.repositoryId), CHECK_TIMEOUT))) {
        fail(repository.repositoryId, `no answer from its repository workflow within ${CHECK_TIMEOUT}`);
        continue;
      }
      const health = settled.get(repository.repositoryId)!.hookHealth;
      settled.delete(repository.repositoryId);
      // No finding: it was detached meanwhile, so there was nothing to check.
      if (health?.status === 'healthy') counts.healthy++;
      else if (health?.status === 'repaired') counts.repaired++;
      else if (health?.status === 'failing') fail(repository.repositoryId, health.reason ?? 'failing');
    }
    after = page.at(-1)!.repositoryId;
    if (workflowInfo().continueAsNewSuggested) return continueAsNew<typeof connectionHookHealthWorkflow>({ ...input, after, counts });
  }
}
