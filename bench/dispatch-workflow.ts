import { proxyActivities } from '@temporalio/workflow';

const { noop } = proxyActivities<{ noop(): Promise<void> }>({ startToCloseTimeout: '10 seconds' });

/** `count` activities, one after another: each one is a workflow task and an activity task to dispatch. */
export async function sequentialActivities(count: number): Promise<void> {
  for (let i = 0; i < count; i++) await noop();
}
