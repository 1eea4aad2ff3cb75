/**
 * The SDK's floor under the event workflow (bench/worker-usage.ts): the same input, the same
 * Temporal shape, and none of forgelink's work. `noopWorkflow` is one workflow task that returns;
 * `eventShapedWorkflow` is the event workflow's shape (a local activity that records, then one
 * inline dispatch attempt per dispatch it returns) with activities that do nothing.
 */
import { proxyLocalActivities } from '@temporalio/workflow';
import type { EventInput, EventResult } from '../workflows/contract.ts';
import type { FloorActivities } from './floor-activities.ts';

const { recordNothing } = proxyLocalActivities<FloorActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});
const { dispatchNothing } = proxyLocalActivities<FloorActivities>({ startToCloseTimeout: '15 seconds', retry: { maximumAttempts: 1 } });

export async function noopWorkflow(_input: EventInput): Promise<void> {}

export async function eventShapedWorkflow(input: EventInput): Promise<EventResult> {
  const { recorded, dispatches } = await recordNothing(input);
  const outcomes = await Promise.allSettled(dispatches.map((dispatch) => dispatchNothing(dispatch)));
  return { recorded, delivered: outcomes.filter((o) => o.status === 'fulfilled').length, undelivered: [] };
}
