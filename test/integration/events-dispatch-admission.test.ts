import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { INLINE_NOT_ADMITTED, type EventResult } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { expectEachDeliveredOnceAtFirstAttempt, pushTo, subscribedRepository } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, localStepsWithResultsOf, recordHistory } from '../support/histories.ts';

/**
 * A small worker: 8 workflow task slots, of which tenant-facing calls may hold 4
 * (worker.inlineCallsPerWorker, by default half), 2 of one organization; the pollers fit in the
 * other 4 (worker/create-worker.ts workflowTaskPolls). A's attempts refused there all get activity
 * slots (20), so that every one of A's deliveries reaches A's subscriber: this test is about
 * workflow task slots (activity slots: events-dispatch-activity-admission.test.ts).
 */
const SIZING = { ...WORKER_SIZING_DEFAULTS, maxConcurrentWorkflowTaskExecutions: 8, activityCallsPerOrganization: 8 };
/** As many of A's deliveries as the worker has workflow task slots: without the bound, their first attempts would hold them all. */
const HUNG_DELIVERIES = SIZING.maxConcurrentWorkflowTaskExecutions;

describe("admission of subscriber calls into workflow tasks: one organization's slow subscriber does not stall another's events", () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];

  beforeAll(async () => {
    h = await startHarness({ sizing: SIZING, settings: { subscriberDeliveryDeadlineSeconds: 120 } });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  it("records and dispatches B's event while A's subscriber hangs; A's events are then delivered once each, from attempt 1", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const [slowA, healthyB] = [await subscribedRepository(h, a, subscribers), await subscribedRepository(h, b, subscribers)];

    const hold = slowA.subscriber.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < HUNG_DELIVERIES; i++) aRuns.push(await pushTo(h, slowA));
    // Every one of A's first attempts has reached A's subscriber and waits for its answer.
    await hold.arrivals(HUNG_DELIVERIES);

    let whenBArrived: { aArrived: number; aWaiting: number } | undefined;
    let bArrivedAt = 0;
    healthyB.subscriber.onDelivery = () => {
      whenBArrived ??= { aArrived: hold.arrived, aWaiting: slowA.subscriber.server.inFlight };
      bArrivedAt ||= performance.now();
    };
    const bSentAt = performance.now();
    const bRun = await pushTo(h, healthyB);
    expect(await resultOf<EventResult>(h, bRun)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    console.log(`B's event reached its subscriber ${Math.round(bArrivedAt - bSentAt)} ms after its delivery, with ${whenBArrived?.aWaiting} of A's requests open`);
    // B's event reached its subscriber while every request to A's was still open: none answered, none given up.
    expect(whenBArrived).toEqual({ aArrived: HUNG_DELIVERIES, aWaiting: HUNG_DELIVERIES });

    hold.release();
    for (const run of aRuns) expect(await resultOf<EventResult>(h, run)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    // Each of A's events once, as attempt 1: a first attempt that was not admitted made no call and
    // recorded nothing, and its activity's attempt is still the first.
    await expectEachDeliveredOnceAtFirstAttempt(h, slowA, HUNG_DELIVERIES);

    // Two of A's runs (inlineCallsPerOrganization) made their first attempt inside the workflow task
    // (in the recording's local activity); the others were refused there (a failed first attempt in
    // its result, no call) and made it as an activity at once, with no timer.
    const shapes = await Promise.all(
      aRuns.map(async (run) => {
        const events = await historyEvents(h.client, run);
        const steps = localStepsWithResultsOf(events);
        expect(steps.map((s) => s.activityType)).toEqual(['recordEventAndDispatch']);
        const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
        return {
          run,
          refused: (steps[0]!.result as { firstAttempts: { failed?: { type: string } }[] }).firstAttempts.some((a) => a.failed?.type === INLINE_NOT_ADMITTED),
          activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length,
          timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length,
        };
      }),
    );
    const admitted = SIZING.inlineCallsPerOrganization;
    expect(shapes.filter((s) => !s.refused).map(({ activities, timers }) => ({ activities, timers }))).toEqual(Array(admitted).fill({ activities: 0, timers: 0 }));
    expect(shapes.filter((s) => s.refused).map(({ activities, timers }) => ({ activities, timers }))).toEqual(Array(HUNG_DELIVERIES - admitted).fill({ activities: 1, timers: 0 }));
    // event-delivered-inline-admitted and event-first-attempt-not-admitted are these runs before recordEventAndDispatch.
    await recordHistory(h.client, shapes.find((s) => !s.refused)!.run, 'event-recorded-with-first-attempts-admitted');
    await recordHistory(h.client, shapes.find((s) => s.refused)!.run, 'event-first-attempt-in-recording-not-admitted');
  }, 120_000);
});
