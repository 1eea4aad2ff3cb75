import { randomUUID } from 'node:crypto';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { ACTIVITY_NOT_ADMITTED, type EventResult } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { deliveryUrlOf } from '../support/attachments.ts';
import { send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

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

interface Org {
  org: { id: string; slug: string };
  token: string;
}

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

  it("B's retry gets an activity slot while A's subscriber holds A's share; A's refused attempts wait on timers and cost no attempt", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const [slowA, flakyB] = [await subscribed(a), await subscribed(b)];

    const hold = slowA.subscriber.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < A_DELIVERIES; i++) aRuns.push(await push(slowA));
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
    const bRun = await push(flakyB);
    expect(await resultOf<EventResult>(h, bRun)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    console.log(`B's retry reached its subscriber ${whenBRetried?.afterMs} ms after B's delivery, with ${whenBRetried?.aWaiting} of A's requests open (${whenBRetried?.aArrived} arrived)`);
    // B's retry reached its subscriber while A's admitted requests were all still open (none timed
    // out, none answered), and none of A's other deliveries had reached A's subscriber.
    expect(whenBRetried).toMatchObject({ aArrived: A_ADMITTED, aWaiting: A_ADMITTED });

    hold.release();
    for (const run of aRuns) expect(await resultOf<EventResult>(h, run)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    // Each of A's events once, as attempt 1: an attempt refused an activity slot made no call,
    // recorded nothing, and its run scheduled it again as the same attempt.
    const received = slowA.subscriber.received;
    expect(received).toHaveLength(A_DELIVERIES);
    expect(new Set(received.map((r) => r.body.id)).size).toBe(A_DELIVERIES);
    expect(received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(received.map(() => '1'));
    const attempts = await h.db.selectFrom('dispatch_attempts').select(['event_id', 'attempt', 'succeeded']).where('subscriber_id', '=', slowA.subscriberId).execute();
    expect(attempts.sort((x, y) => x.event_id.localeCompare(y.event_id))).toEqual(
      received.map((r) => ({ event_id: r.body.id, attempt: 1, succeeded: true })).sort((x, y) => x.event_id.localeCompare(y.event_id)),
    );

    // The runs A's worker refused an activity slot: their activity failed ActivityNotAdmitted, not
    // retried by Temporal, and a timer later the run scheduled it again.
    const shapes = await Promise.all(
      aRuns.map(async (run) => {
        const events = await historyOf(run);
        const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
        const refusals = events.filter((e) => e.activityTaskFailedEventAttributes?.failure?.cause?.applicationFailureInfo?.type === ACTIVITY_NOT_ADMITTED || e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type === ACTIVITY_NOT_ADMITTED);
        return { run, refusals: refusals.length, activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length, timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length };
      }),
    );
    const refused = shapes.filter((s) => s.refusals > 0);
    expect(refused.length).toBe(A_DELIVERIES - A_ADMITTED);
    for (const s of refused) expect(s).toMatchObject({ activities: s.refusals + 1, timers: s.refusals });
    await recordHistory(h.client, refused[0]!.run, 'event-activity-not-admitted');
    await recordHistory(h.client, bRun, 'event-retried-activity-admitted');
  }, 120_000);
});
