import { once } from 'node:events';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import type { EventResult } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { eventsOfDelivery, pushTo, subscribe, subscribedRepository, type SubscribedRepository } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, localStepsOf, recordHistory } from '../support/histories.ts';
import { startWorkerProcess } from '../support/worker-process.ts';

/**
 * An event run whose one local activity, recordEventAndDispatch (activities/events.ts), ends
 * without its result after the recording committed and some first attempts were made: it timed out
 * (45 s), or its worker died. The activity runs again, and then: the event stays recorded once; a
 * pair its subscriber acknowledged is not sent again; a failed pair goes on as a failed first
 * attempt does (attempt 2, after its Retry-After); a pair whose attempt was lost is attempted
 * again; the run ends with every pair delivered.
 */
describe('an event run whose recording ends without its result after its first attempts', () => {
  const harnesses: Harness[] = [];
  const subscribers: FakeSubscriber[] = [];
  afterAll(async () => {
    await Promise.all(harnesses.map((h) => h.close()));
    await Promise.all(subscribers.map((s) => s.close()));
  });

  /** An organization with three subscribers (created in this order: their pairs' order) and an attached repository. */
  async function threeSubscribers(h: Harness) {
    const o = await createOrgWithToken(h);
    const a = await subscribedRepository(h, o, subscribers);
    const b = await subscribe(h, o, subscribers);
    const c = await subscribe(h, o, subscribers);
    return { target: a as SubscribedRepository, a, b, c };
  }

  const deliveries = (s: { subscriber: FakeSubscriber }) => s.subscriber.server.calls.filter((call) => call.operation === 'deliver');
  const attemptsOf = (h: Harness, s: { subscriberId: string }) =>
    h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded', 'status_code']).where('subscriber_id', '=', s.subscriberId).orderBy('attempt').execute();

  /**
   * Locks the subscriber's row (FOR UPDATE, from a connection of the test's own) until the returned
   * function is called: an attempt's write for it (its foreign key takes a share lock on the row)
   * waits, as on a database that is slow or locked, while reads of the row go on.
   */
  async function lockSubscriberRow(subscriberId: string): Promise<() => Promise<void>> {
    const locker = createDb(inject('databaseUrl'), { max: 1 });
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const holding = new Promise<void>((resolve) => (locked = resolve));
    const transaction = locker.transaction().execute(async (trx) => {
      await trx.selectFrom('subscribers').select('id').where('id', '=', subscriberId).forUpdate().execute();
      locked();
      await released;
    });
    await Promise.race([holding, transaction]);
    return async () => {
      release();
      await transaction;
      await locker.destroy();
    };
  }

  it('timed out after its commit: the acknowledged pair is not sent again, the refused one waits out its Retry-After, the unrecorded one is sent again', { timeout: 150_000 }, async () => {
    const h = await startHarness();
    harnesses.push(h);
    const { target, a, b, c } = await threeSubscribers(h);
    // B refuses the first attempt and asks for a minute, longer than the local activity's 45 s.
    b.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '60' }, text: 'slow down' });
    // C acknowledges, but its attempt's write waits on the lock: the local activity times out at 45 s.
    const unlock = await lockSubscriberRow(c.subscriberId);
    let resent!: () => void;
    const cResent = new Promise<void>((resolve) => (resent = resolve));
    let arrivals = 0;
    c.subscriber.onDelivery = () => {
      if (++arrivals === 2) resent();
    };

    const workflowId = await pushTo(h, target);
    // The activity executed again (its first execution timed out) and sent C its event again; its write waits too, until now.
    const ended = resultOf<EventResult>(h, workflowId);
    try {
      await Promise.race([cResent, ended.then(() => Promise.reject(new Error('the run ended without sending C its event again')))]);
    } finally {
      // Also when failing: the harness's worker shuts down only once the writes waiting on the lock end.
      await unlock();
    }
    const result = await ended;
    expect(result).toEqual({ recorded: 1, delivered: 3, undelivered: [] });

    // Recorded once, by whichever execution committed first.
    expect(await eventsOfDelivery(h.db, 'gitlab', a.subscriber.received[0]!.body.deliveryId)).toHaveLength(1);
    // A acknowledged the first execution's attempt: the second read it and sent nothing.
    expect(deliveries(a).map((call) => [call.headers['x-forgelink-attempt'], call.status])).toEqual([['1', 204]]);
    expect(await attemptsOf(h, a)).toEqual([{ attempt: 1, succeeded: true, status_code: 204 }]);
    // B: refused once, then attempt 2 as an activity a minute after the refusal: not at the second
    // execution (~46 s), nor a whole Retry-After after it (~106 s: the wait is what was left of it).
    const [refused, second] = deliveries(b);
    expect([refused, second].map((call) => [call?.headers['x-forgelink-attempt'], call?.status])).toEqual([['1', 429], ['2', 204]]);
    expect(second!.receivedAt - refused!.receivedAt).toBeGreaterThanOrEqual(60_000);
    expect(second!.receivedAt - refused!.receivedAt).toBeLessThan(65_000);
    expect(await attemptsOf(h, b)).toEqual([{ attempt: 1, succeeded: false, status_code: 429 }, { attempt: 2, succeeded: true, status_code: 204 }]);
    // C: its acknowledgement was never recorded, so it was sent again (at least once; the event id is the same).
    expect(deliveries(c).map((call) => [call.headers['x-forgelink-attempt'], call.status])).toEqual([['1', 204], ['1', 204]]);
    expect(new Set(c.subscriber.received.map((r) => r.body.id)).size).toBe(1);
    expect(await attemptsOf(h, c)).toEqual([{ attempt: 1, succeeded: true, status_code: 204 }]);

    // The history holds the second execution's result only (no marker for the timed-out one).
    const events = await historyEvents(h.client, workflowId);
    const [step, ...more] = localStepsOf(events);
    expect(more).toEqual([]);
    const marker = JSON.parse(Buffer.from(step!.event.markerRecordedEventAttributes!.details!.data!.payloads![0]!.data!).toString('utf8')) as { attempt: number };
    expect(marker.attempt).toBeGreaterThanOrEqual(2);
    await recordHistory(h.client, workflowId, 'event-recording-timed-out-after-first-attempts');
  });

  it('its worker killed mid-attempt: the next worker skips the acknowledged pair, waits out the refused one, sends the one in flight again', { timeout: 120_000 }, async () => {
    const h = await startHarness({ withoutWorker: true });
    harnesses.push(h);
    const worker = await startWorkerProcess(h);
    const { target, a, b, c } = await threeSubscribers(h);
    // B asks for 30 s: longer than the workflow task timeout (10 s) after which another worker takes the run.
    b.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '30' }, text: 'slow down' });
    const hold = c.subscriber.hold();

    const workflowId = await pushTo(h, target);
    await hold.arrivals(1);
    // A's and B's outcomes recorded; C's request still unanswered.
    await expect.poll(async () => [...(await attemptsOf(h, a)), ...(await attemptsOf(h, b))].map((row) => row.status_code), { timeout: 20_000, interval: 50 }).toEqual([204, 429]);
    worker.kill('SIGKILL');
    await once(worker, 'exit');
    hold.release();
    await h.restartWorker();

    const result = await resultOf<EventResult>(h, workflowId);
    expect(result).toEqual({ recorded: 1, delivered: 3, undelivered: [] });
    expect(await eventsOfDelivery(h.db, 'gitlab', a.subscriber.received[0]!.body.deliveryId)).toHaveLength(1);
    expect(deliveries(a).map((call) => [call.headers['x-forgelink-attempt'], call.status])).toEqual([['1', 204]]);
    const [refused, second] = deliveries(b);
    expect([refused, second].map((call) => [call?.headers['x-forgelink-attempt'], call?.status])).toEqual([['1', 429], ['2', 204]]);
    expect(second!.receivedAt - refused!.receivedAt).toBeGreaterThanOrEqual(30_000);
    expect(await attemptsOf(h, b)).toEqual([{ attempt: 1, succeeded: false, status_code: 429 }, { attempt: 2, succeeded: true, status_code: 204 }]);
    // C's first request died with the worker (answered to no one); the next worker sent it again.
    expect(deliveries(c).map((call) => call.headers['x-forgelink-attempt'])).toEqual(['1', '1']);
    expect(await attemptsOf(h, c)).toEqual([{ attempt: 1, succeeded: true, status_code: 204 }]);
    await recordHistory(h.client, workflowId, 'event-recording-worker-killed-after-first-attempts');
  });
});
