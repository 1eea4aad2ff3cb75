/**
 * The SDK's floor under the event workflow (bench/worker-usage.ts): the same input, the same
 * Temporal shape, and none of forgelink's work. `noopWorkflow` is one workflow task that returns;
 * `eventShapedWorkflow` is the event workflow's shape (one local activity that records and makes
 * the first dispatch attempt, and the patch marker that chooses it) with activities that do
 * nothing; `twoStepEventShapedWorkflow` its shape before (a local activity that records, then one
 * inline attempt per dispatch it returns).
 * `listingShapedWorkflow` is the same for a refresh (bench/refresh.ts), below.
 */
import { patched, proxyActivities, proxyLocalActivities, workflowInfo } from '@temporalio/workflow';
import type { EventInput, EventResult } from '../workflows/contract.ts';
import type { FloorActivities } from './floor-activities.ts';

export { attachShapedWorkflow } from './floor-attach-workflow.ts';
const { recordNothing } = proxyLocalActivities<FloorActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});
const { dispatchNothing } = proxyLocalActivities<FloorActivities>({ startToCloseTimeout: '15 seconds', retry: { maximumAttempts: 1 } });

export async function noopWorkflow(_input: EventInput): Promise<void> {}

const { recordAndDispatchNothing } = proxyLocalActivities<FloorActivities>({
  startToCloseTimeout: '45 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});

/** The event workflow's shape since patch record-with-first-attempts: one local activity that records and makes the first attempts. */
export async function eventShapedWorkflow(input: EventInput): Promise<EventResult> {
  patched('record-with-first-attempts');
  const { recorded, firstAttempts } = await recordAndDispatchNothing(input);
  return { recorded, delivered: firstAttempts.filter((a) => 'delivered' in a && a.delivered).length, undelivered: [] };
}

/** The event workflow's shape before it (and of runs replaying from before it): a local activity that records, then one per first attempt. */
export async function twoStepEventShapedWorkflow(input: EventInput): Promise<EventResult> {
  const { recorded, dispatches } = await recordNothing(input);
  patched('dispatch-inline-admission');
  const outcomes = await Promise.allSettled(dispatches.map((dispatch) => dispatchNothing(dispatch)));
  return { recorded, delivered: outcomes.filter((o) => o.status === 'fulfilled').length, undelivered: [] };
}

const { listNothing } = proxyLocalActivities<FloorActivities>({ startToCloseTimeout: '1 minute', retry: { initialInterval: '1s', maximumInterval: '30s' } });
const { walkListing } = proxyActivities<FloorActivities>({ startToCloseTimeout: '30 minutes', heartbeatTimeout: '30 seconds', retry: { maximumAttempts: 1 } });

/**
 * The SDK's floor under a refresh (bench/refresh.ts): the refresh's shape (a local activity that
 * lists the connections, then one activity per connection, all at once, heartbeating as its pages
 * come, as the refresh's listing does) with activities that only walk the listings, as the bare
 * listing does: no database, no lease, no page memory, no writes.
 */
export async function listingShapedWorkflow(input: { requestFile: string; connections: number }): Promise<{ pages: number; repositories: number }> {
  const { workflowId } = workflowInfo();
  const indices = await listNothing(input.connections);
  const walks = await Promise.all(indices.map((index) => walkListing({ requestFile: input.requestFile, runKey: workflowId, index })));
  return { pages: walks.reduce((n, w) => n + w.pages, 0), repositories: walks.reduce((n, w) => n + w.repositories, 0) };
}
