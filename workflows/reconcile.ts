import { proxyActivities } from '@temporalio/workflow';
import type { RepositoryKey } from '../activities/hooks.ts';
import type { Activities } from '../activities/index.ts';
import type { HookHealth } from '../lib/domain.ts';
import { NETWORK_STEP_HEARTBEAT_TIMEOUT } from './contract.ts';
import { failureReason } from './failure-reason.ts';

const { recordHookHealth } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});
/** Provider calls, as attach makes them: 429/5xx/timeouts retried for a few minutes, 4xx at once. */
const { reconcileHooks } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

/**
 * The hook-health check of one repository, run by its repository workflow so it never interleaves
 * with an attach or a detach. A check that cannot be carried out is recorded as `failing`; it never
 * changes the attachment's status (the repository stays attached and its events keep flowing).
 */
export async function reconcileRepository(key: RepositoryKey): Promise<{ hookHealth?: HookHealth; hookIds: string[] }> {
  try {
    return await reconcileHooks(key);
  } catch (error) {
    const hookHealth: HookHealth = { status: 'failing', reason: failureReason(error) };
    await recordHookHealth({ ...key, ...hookHealth });
    return { hookHealth, hookIds: [] };
  }
}
