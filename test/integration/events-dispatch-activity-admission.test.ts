import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { createWorkerMetrics } from '../../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, type EventResult } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { expectEachDeliveredOnceAtFirstAttempt, pushTo, subscribedRepository } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, recordHistory } from '../support/histories.ts';

/**
 * A small worker: 8 workflow task slots, of which one organization's subscriber calls may hold 2
 * (worker.inlineCallsPerOrganization), and 4 activity slots, of which one organization's may hold 1
 * (worker.activityCallsPerOrganization, by default a quarter).
 */
const SIZING = { ...WORKER_SIZING_DEFAULTS, maxConcurrentWorkflowTaskExecutions: 8, maxConcurrentActivityTaskExecutions: 4 };
/** Enough of A's deliveries to fill A's inline places and every activity slot: their first attempts not admitted inline run as activities. */
const A_DELIVERIES = SIZING.inlineCallsPerOrganization + SIZING.maxConcurrentActivityTaskExecutions;
/** A's requests that the worker lets wait for A's subscriber at once: its inline places and its share of the activity slots. */
const A_ADMITTED = SIZING.inlineCallsPerOrganization + activityCallsPerOrganization(SIZING);

describe("activity slots: one organization's slow subscriber and another organization's dispatch retry", () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];

  beforeAll(async () => {
    h = await startHarness({ sizing: SIZING, settings: { subscriberDeliveryDeadlineSeconds: 120 } });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  it("B's retry gets an activity slot while A's subscriber holds A's share; A's refused attempts wait on timers and cost no attempt", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const [slowA, flakyB] = [await subscribedRepository(h, a, subscribers), await subscribedRepository(h, b, subscribers)];

    const hold = slowA.subscriber.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < A_DELIVERIES; i++) aRuns.push(await pushTo(h, slowA));
    // A's first attempts wait for its subscriber: 2 inside workflow tasks, 1 in an activity slot;
    // the others, refused an activity slot, wait on timers in their runs.
    await hold.arrivals(A_ADMITTED);

    // B's subscriber fails B's first attempt (inside B's workflow task, admitted): its retry, 1 s
    // later, is an activity and needs an activity slot.
    flakyB.subscriber.server.failNext('deliver', 1, { status: 503 });
    let whenBRetried: { aArrived: number; aWaiting: number; afterMs: number } | undefined;
    const bSentAt = performance.now();
    flakyB.subscriber.onDelivery = (event) => {
      if (event.headers['x-forgelink-attempt'] === '2') {
        whenBRetried ??= { aArrived: hold.arrived, aWaiting: slowA.subscriber.server.inFlight, afterMs: Math.round(performance.now() - bSentAt) };
      }
    };
    const bRun = await pushTo(h, flakyB);
    expect(await resultOf<EventResult>(h, bRun)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    console.log(`B's retry reached its subscriber ${whenBRetried?.afterMs} ms after B's delivery, with ${whenBRetried?.aWaiting} of A's requests open (${whenBRetried?.aArrived} arrived)`);
    // B's retry reached its subscriber while A's admitted requests were all still open (none timed
    // out, none answered), and none of A's other deliveries had reached A's subscriber.
    expect(whenBRetried).toMatchObject({ aArrived: A_ADMITTED, aWaiting: A_ADMITTED });

    hold.release();
    for (const run of aRuns) expect(await resultOf<EventResult>(h, run)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    // Each of A's events once, as attempt 1: an attempt refused an activity slot made no call,
    // recorded nothing, and its run scheduled it again as the same attempt.
    await expectEachDeliveredOnceAtFirstAttempt(h, slowA, A_DELIVERIES);

    // The runs A's worker refused an activity slot: their activity failed ActivityNotAdmitted, not
    // retried by Temporal, and a timer later the run scheduled it again.
    const shapes = await Promise.all(
      aRuns.map(async (run) => {
        const events = await historyEvents(h.client, run);
        const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
        const refusals = events.filter((e) => e.activityTaskFailedEventAttributes?.failure?.cause?.applicationFailureInfo?.type === ACTIVITY_NOT_ADMITTED || e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type === ACTIVITY_NOT_ADMITTED);
        return { run, refusals: refusals.length, activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length, timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length };
      }),
    );
    const refused = shapes.filter((s) => s.refusals > 0);
    expect(refused.length).toBe(A_DELIVERIES - A_ADMITTED);
    for (const s of refused) expect(s).toMatchObject({ activities: s.refusals + 1, timers: s.refusals });
    await recordHistory(h.client, refused[0]!.run, 'event-activity-not-admitted');
    // Refused more than once, with the dispatch-refusal-schedule marker of runs since (kept apart: the one above is from before it).
    const refusedTwice = refused.find((s) => s.refusals >= 2);
    if (refusedTwice) await recordHistory(h.client, refusedTwice.run, 'event-activity-refused-schedule');
    await recordHistory(h.client, bRun, 'event-retried-activity-admitted');
  }, 120_000);
});

describe("activity slots: a pair refused until its dispatch deadline", () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  const metrics = createWorkerMetrics();
  /** Short enough that A's refused attempts run out of time while A's admitted requests still wait (10 s). */
  const DEADLINE_SECONDS = 6;

  beforeAll(async () => {
    h = await startHarness({ sizing: SIZING, metrics, settings: { subscriberDeliveryDeadlineSeconds: DEADLINE_SECONDS } });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  it('is given up on once, counted by the refused activity as a pair the deadline found waiting', async () => {
    const slowA = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    const hold = slowA.subscriber.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < A_DELIVERIES; i++) aRuns.push(await pushTo(h, slowA));
    await hold.arrivals(A_ADMITTED);

    const results = await Promise.all(aRuns.map((run) => resultOf<EventResult>(h, run)));
    hold.release();
    // Every pair given up on; the refused ones with the refusal (they made no call), the others when their requests ran out of time.
    for (const result of results) expect(result).toMatchObject({ recorded: 1, delivered: 0, undelivered: [expect.anything()] });
    const refusedRuns = aRuns.filter((_, i) => results[i]!.undelivered[0]!.reason.startsWith(`${ACTIVITY_NOT_ADMITTED}:`));
    const refused = results.filter((r) => r.undelivered[0]!.reason.startsWith(`${ACTIVITY_NOT_ADMITTED}:`));
    expect(refused).toHaveLength(A_DELIVERIES - A_ADMITTED);
    expect(hold.arrived).toBe(A_ADMITTED);
    const gaveUp = Object.fromEntries((await metrics.registry.getSingleMetric('forgelink_dispatch_gave_up_total')!.get()).values.map((v) => [String(v.labels.reason), v.value]));
    // Each refused pair once: the activity that said "no time to ask again" counted it, and its run asked no more.
    expect(gaveUp.deadline ?? 0).toBe(refused.length);
    // Each refusal in the runs' histories counted once, by activity type (activities/not-admitted.ts, wired in by the worker).
    const refusalsInHistories = (await Promise.all(aRuns.map((run) => historyEvents(h.client, run)))).flat().filter((e) => {
      const failure = e.activityTaskFailedEventAttributes?.failure;
      return (failure?.applicationFailureInfo ?? failure?.cause?.applicationFailureInfo)?.type === ACTIVITY_NOT_ADMITTED;
    }).length;
    const notAdmitted = (await metrics.registry.getSingleMetric('forgelink_activities_not_admitted_total')!.get()).values.filter((v) => v.labels.slot === 'activity');
    expect(refusalsInHistories).toBeGreaterThanOrEqual(refused.length);
    expect(notAdmitted).toEqual([expect.objectContaining({ labels: { activity: 'dispatchEvent', slot: 'activity' }, value: refusalsInHistories })]);
    await recordHistory(h.client, refusedRuns[0]!, 'event-activity-refused-until-deadline');
    await recordHistory(h.client, refusedRuns[0]!, 'event-activity-refused-until-deadline-schedule');
  }, 60_000);
});

describe('a dispatch retry whose timer fires after the deadline', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  /** The subscriber asks for a wait that leaves the retry under a second before this deadline. */
  const DEADLINE_SECONDS = 4;
  const RETRY_AFTER_SECONDS = 3;

  beforeAll(async () => {
    h = await startHarness({ settings: { subscriberDeliveryDeadlineSeconds: DEADLINE_SECONDS } });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  it('is still scheduled with the time left before the wait, and the run ends (no activity without a schedule-to-close limit)', async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    target.subscriber.server.failNext('deliver', 1, { status: 503, headers: { 'retry-after': String(RETRY_AFTER_SECONDS) } });
    const pushedAt = Date.now();
    const run = await pushTo(h, target);
    // The first attempt failed and the run waits out the Retry-After on a timer: no worker runs it when it fires.
    await expect.poll(async () => (await historyEvents(h.client, run)).some((e) => e.timerStartedEventAttributes), { timeout: 10_000, interval: 50 }).toBe(true);
    await h.stopWorker();
    // The worker comes back once the deadline has passed: the timer's workflow task starts after it.
    await expect.poll(() => Date.now() - pushedAt, { timeout: 10_000, interval: 100 }).toBeGreaterThan((DEADLINE_SECONDS + 1) * 1000);
    await h.restartWorker();
    const result = await resultOf<EventResult>(h, run);
    expect(result.recorded).toBe(1);
    const events = await historyEvents(h.client, run);
    expect(events.filter((e) => e.eventType === temporal.api.enums.v1.EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)).toEqual([]);
    const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes)?.activityTaskScheduledEventAttributes;
    // As runs before admission had it: the deadline less the wait, measured before the wait (a positive limit).
    expect(Number(scheduled?.scheduleToCloseTimeout?.seconds ?? 0) * 1000 + (scheduled?.scheduleToCloseTimeout?.nanos ?? 0) / 1e6).toBeGreaterThan(0);
  }, 30_000);
});
