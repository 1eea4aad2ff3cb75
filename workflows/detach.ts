import { ApplicationFailure, CancellationScope, patched, proxyActivities } from '@temporalio/workflow';
import type { RepositoryKey } from '../activities/hooks.ts';
import type { Activities } from '../activities/index.ts';
import { askingActivitySlot } from './activity-slot.ts';
import { AttachmentFailureTypes, NETWORK_STEP_HEARTBEAT_TIMEOUT } from './contract.ts';
import { failureReason } from './failure-reason.ts';

const { beginDetachment, finishDetachment, failAttachment } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
/** Provider calls: retried with backoff (1 s doubling, at most 1 minute apart), 10 attempts. */
const providerStepOptions = {
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  retry: { initialInterval: 1000, backoffCoefficient: 2, maximumInterval: 60_000, maximumAttempts: 10 },
} as const;
const providerSteps = proxyActivities<Activities>(providerStepOptions);
/**
 * The steps call the tenant's provider and hold an activity slot while it answers, and a tenant can
 * ask for many detaches (one per repository, or a disconnect's of every repository at once). Later
 * runs ask the worker for the slot (a share per organization, workflows/activity-slot.ts): one
 * refused waits on a timer and costs no attempt. Runs started before detach as they did.
 */
const providerStepsAskingSlot = {
  deleteRecordedHook: askingActivitySlot('deleteRecordedHook', providerStepOptions),
  sweepHooks: askingActivitySlot('sweepHooks', providerStepOptions),
};
const DETACH_ACTIVITY_ADMISSION = 'detach-activity-admission';

/**
 * Detach: deletes each recorded hook (one already gone counts as deleted), then sweeps any other
 * hook pointing at our delivery URL, then marks the attachment detached. A failure leaves the
 * attachment `failed` with the reason (the hooks not yet deleted stay recorded) and throws a typed failure.
 */
export async function detachRepository(key: RepositoryKey): Promise<void> {
  const { deleteRecordedHook, sweepHooks } = patched(DETACH_ACTIVITY_ADMISSION) ? providerStepsAskingSlot : providerSteps;
  let fullName = key.repositoryId;
  try {
    const plan = await beginDetachment(key);
    fullName = plan.fullName;
    for (const providerHookId of plan.recordedHookIds) await deleteRecordedHook({ ...key, providerHookId });
    await sweepHooks(key);
    await finishDetachment(key);
  } catch (error) {
    const reason = failureReason(error);
    await CancellationScope.nonCancellable(() => failAttachment({ ...key, reason }));
    throw ApplicationFailure.create({
      type: AttachmentFailureTypes.detachFailed,
      message: `detaching ${fullName} failed: ${reason}`,
      nonRetryable: true,
      details: [{ repositoryId: key.repositoryId, reason }],
    });
  }
}
