import { ActivityFailure, ApplicationFailure, log, proxyActivities, proxyLocalActivities } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { EventInput, EventResult } from './contract.ts';

// A local activity: one short database transaction, run inside the workflow task, which saves a
// round trip through the server on every delivery (the ingestion hot path). It still shows in the
// run's history (a marker with its result).
const { recordEvent } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // A database outage must not lose an acknowledged delivery: retry until it is back, on timers
  // once retries take longer than a few seconds.
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});

function reasonFrom(error: unknown): string {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  if (cause instanceof ApplicationFailure) return `${cause.type ?? 'Error'}: ${cause.message}`;
  return cause instanceof Error ? cause.message : String(error);
}

/**
 * One provider delivery (id `event:<provider>:<deliveryId>`, so a redelivery maps onto this run):
 * records its events per organization and applies the repository cache changes they carry, then
 * dispatches each event to every subscriber whose filters it matches, each in its own activity
 * retried with backoff until it succeeds or the dispatch deadline passes.
 */
export async function eventWorkflow(input: EventInput): Promise<EventResult> {
  const { recorded, dispatches, deliveryDeadlineSeconds } = await recordEvent(input);
  if (dispatches.length === 0) return { recorded, delivered: 0, undelivered: [] };

  const { dispatchEvent } = proxyActivities<Activities>({
    startToCloseTimeout: '30 seconds',
    scheduleToCloseTimeout: deliveryDeadlineSeconds * 1000,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10 minutes' },
  });
  const outcomes = await Promise.allSettled(dispatches.map((dispatch) => dispatchEvent(dispatch)));
  const undelivered: EventResult['undelivered'] = [];
  let delivered = 0;
  outcomes.forEach((outcome, i) => {
    if (outcome.status === 'fulfilled') {
      if (outcome.value.delivered) delivered++;
      return;
    }
    const { eventId, subscriberId } = dispatches[i]!;
    const reason = reasonFrom(outcome.reason);
    log.warn('event not delivered before the dispatch deadline', { eventId, subscriberId, reason });
    undelivered.push({ eventId, subscriberId, reason });
  });
  return { recorded, delivered, undelivered };
}
