import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { DisconnectInput, DisconnectResult } from './contract.ts';

const { markConnectionDisconnected } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** Detaches every attached repository of the connection (once attach exists), then deletes its credential. */
export async function disconnectWorkflow(input: DisconnectInput): Promise<DisconnectResult> {
  await markConnectionDisconnected({ connectionId: input.connectionId });
  return { status: 'disconnected', detachedRepositories: 0 };
}
