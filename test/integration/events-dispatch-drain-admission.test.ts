import { randomUUID } from 'node:crypto';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRAIN_CONCURRENCY } from '../../activities/dispatch.ts';
import { INLINE_DISPATCH_LIMIT } from '../../activities/events.ts';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { ACTIVITY_NOT_ADMITTED, type EventResult } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { deliveryUrlOf } from '../support/attachments.ts';
import { send, seedAttachedRepository, subscribe, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, recordHistory } from '../support/histories.ts';

/**
 * A small worker's activity slots (4, of which one organization's tenant-facing activities may
 * hold 1) and a large fan-out's drains: one activity at a time per run, each sending up to
 * DRAIN_CONCURRENCY pairs to the run's subscribers for up to a minute.
 */
const SIZING = { ...WORKER_SIZING_DEFAULTS, maxConcurrentWorkflowTaskExecutions: 8, maxConcurrentActivityTaskExecutions: 4 };
/** As many of A's fan-outs as the worker has activity slots: without the bound their drains would hold them all. */
const A_FAN_OUTS = SIZING.maxConcurrentActivityTaskExecutions;
/** Events per fan-out: one more than the inline path takes, so the run queues its pairs. */
const REFS = INLINE_DISPATCH_LIMIT + 1;

interface Org {
  org: { id: string; slug: string };
  token: string;
}

describe("activity slots: one organization's fan-outs drained to a slow subscriber and another organization's dispatch retry", () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];

  beforeAll(async () => {
    h = await startHarness({ sizing: SIZING, settings: { subscriberDeliveryDeadlineSeconds: 120 } });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  const subscribed = async (o: Org) => (await subscribe(h, o, subscribers)).subscriber;

  /** A Bitbucket push of `refs` branches to a new repository of the organization, sent as its connection's hook would; answers the event run's id. */
  async function pushRefs(o: Org, refs: number): Promise<string> {
    const repository = { externalId: uniqueExternalId('bitbucket'), fullName: `PROJ/drain-${randomUUID().slice(0, 8)}` };
    const { connectionId } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'bitbucket', ...repository });
    const { secret } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'bitbucket' });
    const payload = fixture(PUSH_FIXTURES.bitbucket);
    const template = payload.changes[0];
    payload.changes = Array.from({ length: refs }, (_, i) => ({ ...template, ref: { ...template.ref, id: `refs/heads/drain/${i}`, displayId: `drain/${i}` }, refId: `refs/heads/drain/${i}` }));
    const res = await send(h, delivery('bitbucket', withRepository('bitbucket', payload, repository), { deliveryId: randomUUID(), secret, url: deliveryUrlOf('bitbucket', connectionId) }));
    expect(res.status, await res.clone().text()).toBe(202);
    return ((await res.json()) as { workflowId: string }).workflowId;
  }

  it("B's retry gets an activity slot while one of A's drains holds A's share; A's other drains wait on timers and send nothing twice", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const [slowA, flakyB] = [await subscribed(a), await subscribed(b)];

    const hold = slowA.hold();
    const aRuns: string[] = [];
    for (let i = 0; i < A_FAN_OUTS; i++) aRuns.push(await pushRefs(a, REFS));
    // One drain of A's is admitted and sends DRAIN_CONCURRENCY pairs at once to A's subscriber, which holds them.
    const aAdmitted = activityCallsPerOrganization(SIZING) * DRAIN_CONCURRENCY;
    await hold.arrivals(aAdmitted);

    // B's subscriber fails B's first attempt (inside B's workflow task): its retry, 1 s later, is an activity and needs a slot.
    flakyB.server.failNext('deliver', 1, { status: 503 });
    let whenBRetried: { aArrived: number; aWaiting: number; afterMs: number } | undefined;
    const bSentAt = performance.now();
    flakyB.onDelivery = (event) => {
      if (event.headers['x-forgelink-attempt'] === '2') {
        whenBRetried ??= { aArrived: hold.arrived, aWaiting: slowA.server.inFlight, afterMs: Math.round(performance.now() - bSentAt) };
      }
    };
    const bRun = await pushRefs(b, 1);
    expect(await resultOf<EventResult>(h, bRun)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
    console.log(`B's retry reached its subscriber ${whenBRetried?.afterMs} ms after B's delivery, with ${whenBRetried?.aWaiting} of A's requests open (${whenBRetried?.aArrived} arrived)`);
    // B's retry came while the admitted drain's requests were all open, and no other drain of A's had sent anything.
    expect(whenBRetried).toMatchObject({ aArrived: aAdmitted, aWaiting: aAdmitted });

    hold.release();
    for (const run of aRuns) expect(await resultOf<EventResult>(h, run)).toMatchObject({ recorded: REFS, delivered: REFS, undelivered: [] });
    // Each of A's pairs once, as attempt 1: a refused drain claimed nothing.
    const received = slowA.received;
    expect(received).toHaveLength(A_FAN_OUTS * REFS);
    expect(new Set(received.map((r) => r.body.id)).size).toBe(A_FAN_OUTS * REFS);
    expect(received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(received.map(() => '1'));

    // The runs whose drain was refused: it failed ActivityNotAdmitted, not retried by Temporal, and a timer later the run drained again.
    const shapes = await Promise.all(
      aRuns.map(async (run) => {
        const events = await historyEvents(h.client, run);
        const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
        const refusals = events.filter((e) => e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type === ACTIVITY_NOT_ADMITTED);
        return { run, refusals: refusals.length, activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length, timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length };
      }),
    );
    const refused = shapes.filter((s) => s.refusals > 0);
    expect(refused.length).toBeGreaterThanOrEqual(A_FAN_OUTS - activityCallsPerOrganization(SIZING));
    for (const s of refused) expect(s.timers).toBeGreaterThanOrEqual(s.refusals);
    await recordHistory(h.client, refused[0]!.run, 'event-fan-out-drain-not-admitted');
  }, 120_000);
});
