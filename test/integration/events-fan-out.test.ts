import { randomInt, randomUUID } from 'node:crypto';
import { temporal } from '@temporalio/proto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDispatchActivities, DRAIN_CONCURRENCY, type DrainResult } from '../../activities/dispatch.ts';
import { createInlineAdmission } from '../../activities/inline-admission.ts';
import { INLINE_DISPATCH_LIMIT } from '../../activities/events.ts';
import { claimDueDispatches, deferSubscriber, queueDispatches } from '../../lib/db/repositories/event-dispatches.ts';
import type { Provider } from '../../lib/domain.ts';
import { createLogger } from '../../lib/logger.ts';
import { createWorkerMetrics } from '../../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, workflowIds, type EventInput, type EventResult } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';
import { seedConnection } from '../support/attachments.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';
import { historyBytes, historyEvents, MAX_HISTORY_BYTES, recordHistory, startInput } from '../support/histories.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * A delivery whose (event, subscriber) pairs outnumber INLINE_DISPATCH_LIMIT is dispatched from a
 * queue in PostgreSQL, drained by one activity at a time: the run's history stays small whatever
 * the fan-out, each pair is delivered once, and the run's result counts the pairs and names at
 * most 100 undelivered ones.
 */
interface Org {
  org: { id: string; slug: string };
  token: string;
}

const REF_CHANGES = 2000;

async function eventTypes(h: Harness, workflowId: string): Promise<string[]> {
  const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
  return (history.events ?? []).map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]!);
}

function fanOutHelpers(harness: () => Harness, subscribers: FakeSubscriber[]) {
  const h = () => harness();
  async function newSubscriber() {
    const subscriber = await startFakeSubscriber();
    subscribers.push(subscriber);
    return subscriber;
  }
  async function subscribe(o: Org, subscriber: FakeSubscriber) {
    const res = await h().request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: subscriber.url } });
    expect(res.status, await res.clone().text()).toBe(201);
    const created = (await res.json()) as { id: string; secret: string };
    subscriber.verifyWith(created.secret);
    return created.id;
  }
  /** A Bitbucket push of `refs` branches to a repository of the organization, sent by the connection's own hook. */
  async function pushRefs(o: Org, refs: number) {
    const provider: Provider = 'bitbucket';
    const repository = { externalId: uniqueExternalId(provider), fullName: `PROJ/fan-out-${randomUUID().slice(0, 8)}` };
    const { hook } = await seedAttachedRepository(h(), { organizationId: o.org.id, provider, ...repository });
    const payload = fixture(PUSH_FIXTURES.bitbucket);
    const template = payload.changes[0];
    payload.changes = Array.from({ length: refs }, (_, i) => ({ ...template, ref: { ...template.ref, id: `refs/heads/mirror/${i}`, displayId: `mirror/${i}` }, refId: `refs/heads/mirror/${i}` }));
    const d = delivery(provider, withRepository(provider, payload, repository), { deliveryId: randomUUID(), ...hook });
    const res = await send(h(), d);
    expect(res.status, await res.clone().text()).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    return { delivery: d, workflowId, result: await resultOf<EventResult>(h(), workflowId) };
  }
  /** Event rows of one delivery written directly (what recordEvent leaves), for tests about the queue itself. */
  async function seedEvents(o: Org, count: number) {
    const { repositoryId } = await seedAttachedRepository(h(), { organizationId: o.org.id, provider: 'gitlab', externalId: uniqueExternalId('gitlab'), fullName: 'g/queue' });
    const deliveryId = randomUUID();
    const rows = await h().db
      .insertInto('events')
      .values(
        Array.from({ length: count }, (_, sequence) => ({
          organization_id: o.org.id,
          repository_id: repositoryId,
          provider: 'gitlab' as const,
          delivery_id: deliveryId,
          sequence,
          kind: 'push' as const,
          event: JSON.stringify({ provider: 'gitlab', deliveryId, kind: 'push', repository: { externalId: '1', fullName: 'g/queue' }, ref: { type: 'branch', name: `b${sequence}`, before: 'a', after: 'b' } }),
        })),
      )
      .returning('id')
      .execute();
    return { deliveryId, eventIds: rows.map((r) => r.id) };
  }
  /** An organization's subscriber with `count` events of one delivery queued for it under one run key (`into`, default one of their own), due now. */
  async function queuedPairs(count: number, now = new Date(), into?: string) {
    const o = await createOrgWithToken(h());
    const subscriber = await newSubscriber();
    const subscriberId = await subscribe(o, subscriber);
    const { deliveryId, eventIds } = await seedEvents(o, count);
    const runKey = into ?? `test-queue:${deliveryId}`;
    await queueDispatches(h().db, runKey, eventIds.map((eventId) => ({ eventId, subscriberId })), now);
    return { subscriber, subscriberId, eventIds, runKey, organizationId: o.org.id };
  }
  return { newSubscriber, subscribe, pushRefs, seedEvents, queuedPairs };
}

describe('event fan-out through the dispatch queue (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  const { newSubscriber, subscribe, pushRefs, seedEvents, queuedPairs } = fanOutHelpers(() => h, subscribers);

  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all(subscribers.map((s) => s.close()));
  });

  it(`delivers a push of ${REF_CHANGES} ref changes to 3 subscribers, each pair once, one failing a few times first, in a run under 1 MiB`, async () => {
    const o = await createOrgWithToken(h);
    const [steady, other, flaky] = [await newSubscriber(), await newSubscriber(), await newSubscriber()];
    for (const s of [steady, other, flaky]) await subscribe(o, s!);
    flaky!.server.failNext('deliver', 3, { status: 503, text: 'warming up' });

    const started = performance.now();
    const { delivery: d, workflowId, result } = await pushRefs(o, REF_CHANGES);
    const seconds = (performance.now() - started) / 1000;
    expect(result).toEqual({ recorded: REF_CHANGES, delivered: 3 * REF_CHANGES, undelivered: [], undeliveredCount: 0 });

    const eventIds = (await eventsOfDelivery(h.db, 'bitbucket', d.deliveryId)).map((e) => e.id).sort();
    expect(eventIds).toHaveLength(REF_CHANGES);
    for (const s of [steady, other, flaky]) {
      // Each event once, signed: no pair sent twice.
      expect(s!.received.map((r) => r.body.id).sort()).toEqual(eventIds);
      expect(s!.received.every((r) => r.signatureValid)).toBe(true);
    }
    expect(flaky!.server.calls.filter((c) => c.status === 503)).toHaveLength(3);
    const attempts = await h.db.selectFrom('dispatch_attempts').select(['event_id', 'succeeded']).where('event_id', 'in', eventIds).execute();
    expect(attempts.filter((a) => a.succeeded)).toHaveLength(3 * REF_CHANGES);
    expect(attempts.filter((a) => !a.succeeded)).toHaveLength(3);

    const bytes = await historyBytes(h.client, workflowId);
    const types = await eventTypes(h, workflowId);
    console.log(`fan-out of ${3 * REF_CHANGES} pairs: history ${bytes} bytes, ${types.length} events, ${seconds.toFixed(1)} s to the result`);
    expect(bytes).toBeLessThan(MAX_HISTORY_BYTES);
    // One recording marker (and the patches record-with-first-attempts and the drains' admission), and a handful of drains: nothing per pair.
    expect(types.filter((t) => t === 'EVENT_TYPE_MARKER_RECORDED')).toHaveLength(3);
    expect(types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length).toBeLessThan(20);
    expect(types.length).toBeLessThan(200);
    // Every drain succeeded at its first attempt: the flaky subscriber's pairs fail side by side and
    // defer one another's rows, which once deadlocked in PostgreSQL (40P01) and failed the drain.
    const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
    const drainAttempts = (history.events ?? []).flatMap((e) => (e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.attempt] : []));
    expect(drainAttempts.length).toBeGreaterThan(0);
    expect(drainAttempts.every((attempt) => attempt === 1)).toBe(true);
  }, 300_000);

  it(`keeps the inline path up to ${INLINE_DISPATCH_LIMIT} pairs, and queues one more`, async () => {
    const o = await createOrgWithToken(h);
    const [a, b] = [await newSubscriber(), await newSubscriber()];
    await subscribe(o, a!);
    await subscribe(o, b!);
    const inline = await pushRefs(o, INLINE_DISPATCH_LIMIT / 2);
    expect(inline.result).toEqual({ recorded: INLINE_DISPATCH_LIMIT / 2, delivered: INLINE_DISPATCH_LIMIT, undelivered: [] });
    // Sent from the workflow task (local activities): no activity task, no queue.
    expect(await eventTypes(h, inline.workflowId)).not.toContain('EVENT_TYPE_ACTIVITY_TASK_SCHEDULED');
    expect(await h.db.selectFrom('event_dispatches').select('event_id').where('run_key', '=', inline.workflowId).execute()).toEqual([]);

    b!.server.failNext('deliver', 2, { status: 503 });
    const queued = await pushRefs(o, INLINE_DISPATCH_LIMIT / 2 + 1);
    expect(queued.result).toEqual({ recorded: INLINE_DISPATCH_LIMIT / 2 + 1, delivered: INLINE_DISPATCH_LIMIT + 2, undelivered: [], undeliveredCount: 0 });
    expect(await eventTypes(h, queued.workflowId)).toEqual(expect.arrayContaining(['EVENT_TYPE_ACTIVITY_TASK_COMPLETED', 'EVENT_TYPE_TIMER_FIRED']));
    expect(a!.received).toHaveLength(INLINE_DISPATCH_LIMIT + 1);
    expect(b!.received).toHaveLength(INLINE_DISPATCH_LIMIT + 1);
    await recordHistory(h.client, queued.workflowId, 'event-fan-out-queued');
  });

  it('waits out a subscriber’s Retry-After before trying it again, for all of its pairs', async () => {
    const o = await createOrgWithToken(h);
    const subscriber = await newSubscriber();
    await subscribe(o, subscriber);
    subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '3' }, text: 'slow down' });

    const { result, workflowId } = await pushRefs(o, INLINE_DISPATCH_LIMIT + 4);
    expect(result).toMatchObject({ delivered: INLINE_DISPATCH_LIMIT + 4, undelivered: [] });
    const calls = subscriber.server.calls;
    const refused = calls.find((c) => c.status === 429)!;
    // Sends already under way when the drain read the refusal still arrive (fewer than the drain's
    // concurrency); the subscriber's other pairs wait out the 3 s.
    const during = calls.filter((c) => c.receivedAt > refused.answeredAt && c.receivedAt - refused.answeredAt < 2900);
    expect(during.length).toBeLessThan(DRAIN_CONCURRENCY);
    expect(calls.filter((c) => c.receivedAt - refused.answeredAt >= 2900).length).toBeGreaterThan(0);
    expect(await eventTypes(h, workflowId)).toContain('EVENT_TYPE_TIMER_FIRED');
  });

  it("drains, asking admission, the pairs of the organizations the worker admits a place: a shared run's others wait, refused for all it claims nothing", async () => {
    // One run whose pairs go to two organizations' subscribers (a delivery both attached).
    const a = await queuedPairs(3);
    const b = await queuedPairs(3, new Date(), a.runKey);
    const slots = createInlineAdmission({ perWorker: 3, perOrganization: 1 });
    const { drainDispatches } = createDispatchActivities({ db: h.db, keys: h.keys, outbound: testOutbound, logger: createLogger('test', 'error'), activitySlots: slots });
    const drain = (): Promise<DrainResult> =>
      new MockActivityEnvironment().run(drainDispatches, { runKey: a.runKey, deadlineAt: new Date(Date.now() + 60_000).toISOString(), askAdmission: true });

    // A's place is taken (another of A's activities runs): the drain sends B's pairs, A's stay due.
    const aBusy = slots.tryAdmit(a.organizationId)!;
    expect(await drain()).toMatchObject({ attempted: 3, pending: 3, delivered: 3 });
    expect([a.subscriber.received.length, b.subscriber.received.length]).toEqual([0, 3]);
    // B's taken too: refused for both, before any claim.
    const bBusy = slots.tryAdmit(b.organizationId)!;
    await expect(drain()).rejects.toMatchObject({ type: ACTIVITY_NOT_ADMITTED, nonRetryable: true });
    bBusy();
    // A worker that admits one at a time still lets a shared run through, an organization a drain.
    const one = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    const { drainDispatches: drainOne } = createDispatchActivities({ db: h.db, keys: h.keys, outbound: testOutbound, logger: createLogger('test', 'error'), activitySlots: one });
    aBusy();
    expect(await new MockActivityEnvironment().run(drainOne, { runKey: a.runKey, deadlineAt: new Date(Date.now() + 60_000).toISOString(), askAdmission: true })).toMatchObject({
      attempted: 3,
      pending: 0,
      delivered: 6,
    });
    expect(a.subscriber.received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(['1', '1', '1']);
    // Every place was given back when its drain ended.
    for (const admission of [slots, one]) expect(admission.tryAdmit(a.organizationId)).toBeTypeOf('function');
  });


  it('continues as new while it drains, carrying its queue, and still delivers each pair once', async () => {
    const o = await createOrgWithToken(h);
    const subscriber = await newSubscriber();
    const subscriberId = await subscribe(o, subscriber);
    const { deliveryId, eventIds } = await seedEvents(o, INLINE_DISPATCH_LIMIT + 1);
    const workflowId = workflowIds.event('gitlab', deliveryId);
    await queueDispatches(h.db, workflowId, eventIds.map((eventId) => ({ eventId, subscriberId })), new Date());
    subscriber.server.failNext('deliver', 2, { status: 503 });

    // As a run that recorded its delivery and queued its pairs goes on, one drain round per run.
    const input: EventInput = {
      provider: 'gitlab',
      deliveryId,
      receivedAt: new Date().toISOString(),
      queuedDispatch: { runKey: workflowId, recorded: eventIds.length, deadlineAt: new Date(Date.now() + 120_000).toISOString() },
      drainRoundsPerRun: 1,
    };
    const result = await h.client.workflow.execute('eventWorkflow', { taskQueue: h.taskQueue, workflowId, args: [input] });
    expect(result).toEqual({ recorded: eventIds.length, delivered: eventIds.length, undelivered: [], undeliveredCount: 0 });
    expect(subscriber.received.map((r) => r.body.id).sort()).toEqual([...eventIds].sort());
    const runs: string[] = [];
    for await (const run of h.client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) runs.push(run.status.name);
    expect(runs.filter((s) => s === 'CONTINUED_AS_NEW').length).toBeGreaterThanOrEqual(1);
  });

  it('defers a failing subscriber\'s pairs while other pairs of it fail and are claimed, without a deadlock', async () => {
    // Pairs of one subscriber failing side by side each defer all of its pending rows while claims
    // move rows' next_attempt_at: updates that locked rows in their scan's order deadlocked (40P01,
    // 22 of 360 statements in a probe like this one), failing the drain's attempt.
    const now = Date.now();
    const { subscriberId, runKey } = await queuedPairs(2000, new Date(now));
    await sql`update event_dispatches set next_attempt_at = now() + random() * interval '10 seconds' where run_key = ${runKey}`.execute(h.db);
    const failures: unknown[] = [];
    for (let round = 0; round < 20; round++) {
      await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          (i % 3 === 0
            ? claimDueDispatches(h.db, runKey, { now: new Date(now + 20_000), leaseUntil: new Date(now + 30_000), limit: 8 })
            : deferSubscriber(h.db, runKey, subscriberId, new Date(now + randomInt(60_000)), 'failing')
          ).catch((error: unknown) => failures.push(error)),
        ),
      );
    }
    expect(failures).toEqual([]);
  });

  it('never sends a delivered pair again, whether a drain is retried or two run at once', async () => {
    const { subscriber, eventIds, runKey } = await queuedPairs(40);

    const { drainDispatches } = createDispatchActivities({ db: h.db, keys: h.keys, outbound: testOutbound, logger: createLogger('test', 'warn') });
    const drain = (): Promise<DrainResult> => new MockActivityEnvironment().run(drainDispatches, { runKey, deadlineAt: new Date(Date.now() + 60_000).toISOString() });
    // Two drains at once (a retry while a lost worker's drain still runs): each pair is claimed by one.
    const [first, second] = await Promise.all([drain(), drain()]);
    expect(first.attempted + second.attempted).toBe(40);
    // A drain retried after everything was delivered sends nothing.
    expect(await drain()).toMatchObject({ attempted: 0, pending: 0, delivered: 40, undeliveredCount: 0 });
    expect(subscriber.received.map((r) => r.body.id).sort()).toEqual([...eventIds].sort());
  });

  it('counts each pair it gives up on once, by reason, however often a drain runs', async () => {
    const { subscriber, eventIds, runKey } = await queuedPairs(40);
    // Every attempt is refused with a Retry-After past the deadline: the pairs attempted are given up at once.
    subscriber.server.failNext('deliver', 1000, { status: 503, headers: { 'retry-after': '3600' } });

    const metrics = createWorkerMetrics();
    const { drainDispatches } = createDispatchActivities({ db: h.db, keys: h.keys, outbound: testOutbound, logger: createLogger('test', 'error'), metrics });
    const drain = (deadlineAt: Date): Promise<DrainResult> => new MockActivityEnvironment().run(drainDispatches, { runKey, deadlineAt: deadlineAt.toISOString() });
    const gaveUp = async () =>
      Object.fromEntries(((await metrics.registry.getSingleMetric('forgelink_dispatch_gave_up_total')!.get()).values).map((v) => [String(v.labels.reason), v.value]));

    const first = await drain(new Date(Date.now() + 60_000));
    expect(first.attempted).toBeGreaterThan(0);
    expect(first.undeliveredCount).toBe(first.attempted);
    expect(await gaveUp()).toEqual({ rejected: first.attempted });
    // The deadline passed (a later drain of the run, or a retried one): the rest, never attempted, are given up once.
    const past = new Date(Date.now() - 1);
    expect(await drain(past)).toMatchObject({ attempted: 0, pending: 0, undeliveredCount: 40 });
    expect(await drain(past)).toMatchObject({ attempted: 0, pending: 0, undeliveredCount: 40 });
    expect(await gaveUp()).toEqual({ rejected: first.attempted, deadline: 40 - first.attempted });
  });
});

describe('undelivered pairs of a queued fan-out (short dispatch deadline)', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  const { newSubscriber, subscribe, pushRefs, seedEvents, queuedPairs } = fanOutHelpers(() => h, subscribers);

  beforeAll(async () => {
    h = await startHarness({ settings: { subscriberDeliveryDeadlineSeconds: 4 } });
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all(subscribers.map((s) => s.close()));
  });

  it('gives up at the deadline, counts every undelivered pair and names the first 100', async () => {
    const o = await createOrgWithToken(h);
    const [down, alsoDown] = [await newSubscriber(), await newSubscriber()];
    for (const s of [down, alsoDown]) {
      s!.server.failNext('deliver', 1000, { status: 500 });
      await subscribe(o, s!);
    }
    const { result, workflowId } = await pushRefs(o, 60);
    expect(result.delivered).toBe(0);
    expect(result.undeliveredCount).toBe(120);
    expect(result.undelivered).toHaveLength(100);
    expect(result.undelivered[0]).toEqual({ eventId: expect.any(String), subscriberId: expect.any(String), reason: expect.stringMatching(/SubscriberRejected|not attempted/) });
    // A failing subscriber is not tried for every pair: its other pairs wait with it.
    expect(down!.server.calls.length).toBeLessThan(60);
    expect(await historyBytes(h.client, workflowId)).toBeLessThan(MAX_HISTORY_BYTES);
  });

  it("shows each organization its own undelivered pairs of a delivery that concerns several", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const installationId = String(randomInt(1_000_000, 2_000_000_000));
    const repository = { externalId: uniqueExternalId('github'), fullName: 'octo-org/fan-out' };
    // a: 9 subscribers that never answer; b: 8 that answer and 1 that never does (18 pairs: queued).
    const failingOf: Record<string, string[]> = {};
    for (const [o, answering] of [
      [a, 0],
      [b, 8],
    ] as const) {
      const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: installationId });
      await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'github', connectionId, ...repository });
      failingOf[o.org.id] = [];
      for (let i = 0; i < 9; i++) {
        const s = await newSubscriber();
        if (i >= answering) s.server.failNext('deliver', 1000, { status: 500 });
        const id = await subscribe(o, s);
        if (i >= answering) failingOf[o.org.id]!.push(id);
      }
    }
    const payload = withRepository('github', fixture(PUSH_FIXTURES.github), repository) as Payload;
    payload.installation.id = Number(installationId);
    const d = delivery('github', payload, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github });
    const res = await send(h, d);
    expect(res.status, await res.clone().text()).toBe(202);
    const workflowId = workflowIds.event('github', d.deliveryId);
    const full = await resultOf<EventResult>(h, workflowId);
    expect(full).toMatchObject({ recorded: 2, delivered: 8, undeliveredCount: 10 });
    expect(full.undelivered).toHaveLength(10);

    const resultFor = async (token: string) => {
      const run = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token });
      expect(run.status).toBe(200);
      return ((await run.json()) as { result: EventResult }).result;
    };
    const eventOf = async (o: Org) => (await eventsOfDelivery(h.db, 'github', d.deliveryId)).find((e) => e.organization_id === o.org.id)!.id;
    for (const [o, delivered] of [
      [a, 0],
      [b, 8],
    ] as const) {
      const own = await resultFor(o.token);
      const eventId = await eventOf(o);
      expect(own).toMatchObject({ recorded: 1, delivered, undeliveredCount: failingOf[o.org.id]!.length });
      expect(own.undelivered.map((u) => u.subscriberId).sort()).toEqual([...failingOf[o.org.id]!].sort());
      expect(own.undelivered.every((u) => u.eventId === eventId)).toBe(true);
    }
    expect(await resultFor(h.adminToken)).toEqual(full);
  });
});

describe('a drain refused an activity slot (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  const { newSubscriber, subscribe, seedEvents } = fanOutHelpers(() => h, subscribers);

  beforeAll(async () => {
    // One activity at a time per organization: a drain that waits on a subscriber holds its organization's place.
    h = await startHarness({ settings: { activityCallsPerOrganization: 1 } });
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all(subscribers.map((s) => s.close()));
  });

  it('waits longer the longer it has been refused, from its first refusal in a row, carried over continue-as-new', async () => {
    const o = await createOrgWithToken(h);
    const subscriber = await newSubscriber();
    const subscriberId = await subscribe(o, subscriber);
    /** A run of the organization's with one pair queued, started as a run that recorded its delivery goes on. */
    const queuedRun = async (queue: { deadlineMs: number; refusedSince?: string }, drainRoundsPerRun?: number) => {
      const { deliveryId, eventIds } = await seedEvents(o, 1);
      const workflowId = workflowIds.event('gitlab', deliveryId);
      await queueDispatches(h.db, workflowId, eventIds.map((eventId) => ({ eventId, subscriberId })), new Date());
      const queuedDispatch = { runKey: workflowId, recorded: 1, deadlineAt: new Date(Date.now() + queue.deadlineMs).toISOString(), ...(queue.refusedSince ? { refusedSince: queue.refusedSince } : {}) };
      const input: EventInput = { provider: 'gitlab', deliveryId, receivedAt: new Date().toISOString(), queuedDispatch, ...(drainRoundsPerRun ? { drainRoundsPerRun } : {}) };
      const handle = await h.client.workflow.start('eventWorkflow', { taskQueue: h.taskQueue, workflowId, args: [input] });
      return { workflowId, handle, eventIds };
    };

    // The organization's place is taken by a drain waiting on its subscriber.
    const hold = subscriber.hold();
    const holding = await queuedRun({ deadlineMs: 120_000 });
    await hold.arrivals(1);

    // A run refused for an hour already (its previous runs' refusals): its next ask is minutes away, not a second.
    const long = await queuedRun({ deadlineMs: 24 * 60 * 60_000, refusedSince: new Date(Date.now() - 60 * 60_000).toISOString() });
    await expect.poll(async () => (await historyEvents(h.client, long.workflowId)).some((e) => e.timerStartedEventAttributes), { timeout: 20_000, interval: 100 }).toBe(true);
    const timer = (await historyEvents(h.client, long.workflowId)).find((e) => e.timerStartedEventAttributes)!.timerStartedEventAttributes!.startToFireTimeout!;
    const waitMs = Number(timer.seconds ?? 0) * 1000 + (timer.nanos ?? 0) / 1e6;
    // Up to a fifth of the hour refused (12 min), over its upper half.
    expect(waitMs).toBeGreaterThanOrEqual(6 * 60_000);
    expect(waitMs).toBeLessThanOrEqual(12 * 60_000);
    await long.handle.terminate('the test has read its wait');

    // A run refused round after round continues as new with the time of its first refusal, the same in each run.
    const carried = await queuedRun({ deadlineMs: 120_000 }, 2);
    const continuedRuns = async () => {
      let runs = 0;
      for await (const _run of h.client.workflow.list({ query: `WorkflowId = '${carried.workflowId}' AND ExecutionStatus = 'ContinuedAsNew'` })) runs++;
      return runs;
    };
    const carriedSince = async () => (await startInput<EventInput>(h.client, carried.workflowId)).queuedDispatch?.refusedSince;
    await expect.poll(async () => ((await continuedRuns()) >= 1 ? carriedSince() : undefined), { timeout: 30_000, interval: 200 }).toEqual(expect.any(String));
    const first = await carriedSince();
    await expect.poll(continuedRuns, { timeout: 30_000, interval: 200 }).toBeGreaterThanOrEqual(2);
    expect(await carriedSince()).toBe(first);
    expect(Date.parse(first!)).toBeLessThanOrEqual(Date.now());

    // Once admitted, both deliver, each pair once. The carried run's pair fails its first two attempts,
    // so an admitted round leaves it pending and the run continues as new at least once after admission:
    // without the refusals' time, so that a later refusal waits from its own first again.
    subscriber.server.failNext('deliver', 2, { status: 503 });
    hold.release();
    expect(await resultOf<EventResult>(h, holding.workflowId)).toMatchObject({ delivered: 1, undelivered: [] });
    expect(await resultOf<EventResult>(h, carried.workflowId)).toMatchObject({ delivered: 1, undelivered: [] });
    expect(subscriber.server.calls.filter((c) => c.status === 503)).toHaveLength(2);
    expect(await carriedSince()).toBeUndefined();
    const received = subscriber.received.map((r) => r.body.id);
    for (const eventId of [...holding.eventIds, ...carried.eventIds]) expect(received.filter((id) => id === eventId)).toHaveLength(1);
    await recordHistory(h.client, carried.workflowId, 'event-drain-refused-carried', carried.handle.firstExecutionRunId);
  }, 90_000);
});
