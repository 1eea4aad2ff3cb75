import { ApplicationFailure, CancellationScope, proxyActivities } from '@temporalio/workflow';
import type { RepositoryKey } from '../activities/hooks.ts';
import type { Activities } from '../activities/index.ts';
import { AttachmentFailureTypes, NETWORK_STEP_HEARTBEAT_TIMEOUT } from './contract.ts';
import { failureReason } from './failure-reason.ts';

const { beginDetachment, finishDetachment, failAttachment } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
const { deleteRecordedHook, sweepHooks } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

/**
 * Detach: deletes each recorded hook (one already gone counts as deleted), then sweeps any other
 * hook pointing at our delivery URL, then marks the attachment detached. A failure leaves the
 * attachment `failed` with the reason (the hooks not yet deleted stay recorded) and throws a typed failure.
 */
export async function detachRepository(key: RepositoryKey): Promise<void> {
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
