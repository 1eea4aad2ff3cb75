import { randomUUID } from 'node:crypto';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { INLINE_NOT_ADMITTED, type EventResult } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { deliveryUrlOf } from '../support/attachments.ts';
import { send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { localStepsOf, recordHistory } from '../support/histories.ts';

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

interface Org {
  org: { id: string; slug: string };
  token: string;
}

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

  async function subscribed(o: Org) {
    const subscriber = await startFakeSubscriber();
    subscribers.push(subscriber);
    const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: subscriber.url } });
    expect(res.status, await res.clone().text()).toBe(201);
    const created = (await res.json()) as { id: string; secret: string };
    subscriber.verifyWith(created.secret);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `acme/${randomUUID().slice(0, 8)}` };
    const { connectionId } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', ...repository });
    return { subscriber, subscriberId: created.id, repository, connectionId };
  }

  /** Sends one GitLab push for the repository as its connection's hook would, and answers its event run's id (without waiting for it). */
  async function push({ repository, connectionId }: { repository: { externalId: string; fullName: string }; connectionId: string }): Promise<string> {
    const { secret } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' });
    const payload = { ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), test_push: randomUUID() };
    const res = await send(h, delivery('gitlab', payload, { deliveryId: randomUUID(), secret, url: deliveryUrlOf('gitlab', connectionId) }));
    expect(res.status, await res.clone().text()).toBe(202);
    return ((await res.json()) as { workflowId: string }).workflowId;
  }

  async function historyOf(workflowId: string) {
    return (await h.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  }

  it("records and dispatches B's event while A's subscriber hangs; A's events are then delivered once each, from attempt 1", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const [slowA, healthyB] = [await subscribed(a), await subscribed(b)];

    const hold = slowA.subscriber.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < HUNG_DELIVERIES; i++) aRuns.push(await push(slowA));
    // Every one of A's first attempts has reached A's subscriber and waits for its answer.
    await hold.arrivals(HUNG_DELIVERIES);

    let whenBArrived: { aArrived: number; aWaiting: number } | undefined;
    let bArrivedAt = 0;
    healthyB.subscriber.onDelivery = () => {
      whenBArrived ??= { aArrived: hold.arrived, aWaiting: slowA.subscriber.server.inFlight };
      bArrivedAt ||= performance.now();
    };
    const bSentAt = performance.now();
    const bRun = await push(healthyB);
    expect(await resultOf<EventResult>(h, bRun)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    console.log(`B's event reached its subscriber ${Math.round(bArrivedAt - bSentAt)} ms after its delivery, with ${whenBArrived?.aWaiting} of A's requests open`);
    // B's event reached its subscriber while every request to A's was still open: none answered, none given up.
    expect(whenBArrived).toEqual({ aArrived: HUNG_DELIVERIES, aWaiting: HUNG_DELIVERIES });

    hold.release();
    for (const run of aRuns) expect(await resultOf<EventResult>(h, run)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    // Each of A's events once, as attempt 1: a first attempt that was not admitted made no call and
    // recorded nothing, and its activity's attempt is still the first.
    const received = slowA.subscriber.received;
    expect(received).toHaveLength(HUNG_DELIVERIES);
    expect(new Set(received.map((r) => r.body.id)).size).toBe(HUNG_DELIVERIES);
    expect(received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(received.map(() => '1'));
    expect(received.every((r) => r.signatureValid)).toBe(true);
    const attempts = await h.db.selectFrom('dispatch_attempts').select(['event_id', 'attempt', 'succeeded']).where('subscriber_id', '=', slowA.subscriberId).execute();
    expect(attempts.sort((x, y) => x.event_id.localeCompare(y.event_id))).toEqual(
      received.map((r) => ({ event_id: r.body.id, attempt: 1, succeeded: true })).sort((x, y) => x.event_id.localeCompare(y.event_id)),
    );

    // Two of A's runs (inlineCallsPerOrganization) made their first attempt inside the workflow task;
    // the others were refused there (a failed local step, no call) and made it as an activity at
    // once, with no timer.
    const shapes = await Promise.all(
      aRuns.map(async (run) => {
        const events = await historyOf(run);
        const dispatchSteps = localStepsOf(events).filter((s) => s.activityType === 'dispatchEvent');
        const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
        return {
          run,
          refused: dispatchSteps.some((s) => JSON.stringify(s.event.markerRecordedEventAttributes?.failure ?? {}).includes(INLINE_NOT_ADMITTED)),
          activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length,
          timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length,
        };
      }),
    );
    const admitted = SIZING.inlineCallsPerOrganization;
    expect(shapes.filter((s) => !s.refused).map(({ activities, timers }) => ({ activities, timers }))).toEqual(Array(admitted).fill({ activities: 0, timers: 0 }));
    expect(shapes.filter((s) => s.refused).map(({ activities, timers }) => ({ activities, timers }))).toEqual(Array(HUNG_DELIVERIES - admitted).fill({ activities: 1, timers: 0 }));
    await recordHistory(h.client, shapes.find((s) => !s.refused)!.run, 'event-delivered-inline-admitted');
    await recordHistory(h.client, shapes.find((s) => s.refused)!.run, 'event-first-attempt-not-admitted');
  }, 120_000);
});
