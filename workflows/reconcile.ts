import { patched, proxyActivities } from '@temporalio/workflow';
import type { RepositoryKey } from '../activities/hooks.ts';
import type { Activities } from '../activities/index.ts';
import type { HookHealth } from '../lib/domain.ts';
import { askingActivitySlot } from './activity-slot.ts';
import { NETWORK_STEP_HEARTBEAT_TIMEOUT } from './contract.ts';
import { failureReason } from './failure-reason.ts';

const { recordHookHealth } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
/** Provider calls, as attach makes them: 429/5xx/timeouts retried for a few minutes (1 s doubling, at most 1 minute apart, 10 attempts), 4xx at once. */
const checkOptions = {
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  retry: { initialInterval: 1000, backoffCoefficient: 2, maximumInterval: 60_000, maximumAttempts: 10 },
} as const;
const { reconcileHooks } = proxyActivities<Activities>(checkOptions);
/**
 * The check calls the tenant's provider and holds an activity slot while it answers; the nightly
 * reconcile checks many connections at once, and a webhook-credential rotation every repository of
 * the connection. Later runs ask the worker for the slot (a share per organization,
 * workflows/activity-slot.ts): one refused waits on a timer and costs no attempt. Runs started
 * before check as they did.
 */
const reconcileHooksAskingSlot = askingActivitySlot('reconcileHooks', checkOptions);
const RECONCILE_ACTIVITY_ADMISSION = 'reconcile-activity-admission';

/**
 * A step that failed as a whole on a repository that is not attached (the hook-health pass's sweep
 * of it) is answered as a failed sweep: later runs no longer read it as an attached repository's
 * `failing` check (recordHookHealth records nothing on it). Runs started before answer as they did.
 */
const UNATTACHED_SWEEP_FAILURE = 'reconcile-unattached-sweep-failure';

/**
 * The hook-health check of one repository, run by its repository workflow so it never interleaves
 * with an attach or a detach; on a repository that is not attached, the sweep of its hooks
 * (reconcileHooks). A check that cannot be carried out is recorded as `failing`; it never changes
 * the attachment's status (the repository stays attached and its events keep flowing). A sweep that
 * cannot be carried out records no health and answers `sweepFailure` (it stays due).
 */
export async function reconcileRepository(key: RepositoryKey): Promise<{ hookHealth?: HookHealth; hookIds: string[]; sweepFailure?: string }> {
  try {
    return await (patched(RECONCILE_ACTIVITY_ADMISSION) ? reconcileHooksAskingSlot : reconcileHooks)(key);
  } catch (error) {
    const hookHealth: HookHealth = { status: 'failing', reason: failureReason(error) };
    const answer = await recordHookHealth({ ...key, ...hookHealth });
    // Answered by a worker from before the answer (undefined): recorded, as it was.
    if (patched(UNATTACHED_SWEEP_FAILURE) && answer?.recorded === false) return { hookIds: [], sweepFailure: hookHealth.reason! };
    return { hookHealth, hookIds: [] };
  }
}
