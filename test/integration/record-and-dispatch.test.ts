import { randomUUID } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../activities/index.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { failedDispatchAttempt, recordDispatchAttempt } from '../../lib/db/repositories/subscribers.ts';
import { createLogger } from '../../lib/logger.ts';
import type { EventInput } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { subscribe, subscribedRepository, type SubscribedRepository } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * recordEventAndDispatch (activities/events.ts): the event run's one local activity that records a
 * delivery and makes its first attempts. Run here outside a workflow, as the SDK runs a local
 * activity, with the attempt numbers a retried recording has.
 */
describe('recordEventAndDispatch', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];
  let activities: ReturnType<typeof createActivities>;

  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    activities = createActivities({ db: h.db, keys: h.keys, providers: () => { throw new Error('no provider call here'); }, outbound: testOutbound, logger: createLogger('test', 'silent'), settings: h.settings });
  });
  afterAll(async () => {
    await Promise.all(subscribers.map((s) => s.close()));
    await h?.close();
  });

  /** A push of `target`'s repository as a run started before the intake table carries it (its events in its input). */
  const pushInput = ({ repository, connectionId }: SubscribedRepository): EventInput => {
    const deliveryId = randomUUID();
    const event: NormalizedEvent = { provider: 'gitlab', deliveryId, kind: 'push', repository, ref: { type: 'branch', name: 'main', before: null, after: null } };
    return { provider: 'gitlab', deliveryId, receivedAt: new Date().toISOString(), events: [event], connectionId };
  };
  /** The local activity's attempt `attempt` within the run `workflowId`. */
  const localAttempt = (workflowId: string, attempt: number, startToCloseTimeoutMs = 45_000) =>
    new MockActivityEnvironment({ attempt, isLocal: true, startToCloseTimeoutMs, workflowExecution: { workflowId, runId: randomUUID() } });

  it('makes each first attempt as attempt 1 whatever its own attempt, and a repeat sends nothing acknowledged again', async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;

    // The recording's third attempt (two failed before its transaction): the subscriber's first.
    const first = await localAttempt(workflowId, 3).run(activities.recordEventAndDispatch, input);
    expect(first).toMatchObject({ recorded: 1, dispatches: [{ subscriberId: target.subscriberId }], firstAttempts: [{ delivered: true, statusCode: 204 }] });
    expect(target.subscriber.received.map((r) => [r.headers['x-forgelink-attempt'], r.signatureValid])).toEqual([['1', true]]);
    const eventId = target.subscriber.received[0]!.body.id;
    expect(first).toMatchObject({ dispatches: [{ eventId }] });
    const attempts = () => h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded']).where('event_id', '=', eventId).execute();
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: true }]);

    // Repeated (the activity retried after its commit, the worker lost): the same pairs, read again, and nothing sent.
    const again = await localAttempt(workflowId, 4).run(activities.recordEventAndDispatch, input);
    expect(again).toEqual({ ...(first as object), firstAttempts: [{ delivered: true, skipped: 'already delivered' }] });
    expect(target.subscriber.received).toHaveLength(1);
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: true }]);
  });

  it("answers a first attempt's failure with its type and Retry-After, recorded, without failing the recording", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    target.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '7' }, text: 'slow down' });
    const input = pushInput(target);

    const recorded = await localAttempt(`event:gitlab:${target.connectionId}:${input.deliveryId}`, 1).run(activities.recordEventAndDispatch, input);
    expect(recorded).toMatchObject({
      recorded: 1,
      firstAttempts: [{ failed: { type: 'SubscriberRejected', message: `subscriber ${target.subscriberId} answered 429`, details: { status: 429, retryAfterSeconds: 7 } } }],
    });
    const [{ eventId }] = (recorded as { dispatches: { eventId: string }[] }).dispatches as [{ eventId: string }];
    expect(await h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded', 'status_code']).where('event_id', '=', eventId).execute()).toEqual([{ attempt: 1, succeeded: false, status_code: 429 }]);
  });

  it("a repeat does not send a pair whose first attempt failed again: it answers that failure with what is left of its Retry-After", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    target.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '120' }, text: 'slow down' });
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;
    await localAttempt(workflowId, 1).run(activities.recordEventAndDispatch, input);
    // Executed again (the first execution timed out or its worker died after the attempt was recorded).
    const again = await localAttempt(workflowId, 2).run(activities.recordEventAndDispatch, input);
    const [repeated] = (again as { firstAttempts: { failed: { type: string; message: string; details: { status: number; retryAfterSeconds: number } } }[] }).firstAttempts;
    expect(repeated).toMatchObject({ failed: { type: 'SubscriberRejected', message: `subscriber ${target.subscriberId} answered 429`, details: { status: 429 } } });
    expect(repeated!.failed.details.retryAfterSeconds).toBeGreaterThan(100);
    expect(repeated!.failed.details.retryAfterSeconds).toBeLessThanOrEqual(120);
    expect(target.subscriber.server.calls.filter((c) => c.operation === 'deliver')).toHaveLength(1);
  });

  it("records a subscriber's fractional or huge Retry-After as whole seconds, at most an hour, in the first attempt and in a regular one", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    // The subscriber is a tenant's: it may answer any number (the recording's attempt, then the regular attempt 2).
    target.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '1.5' }, text: 'slow down' });
    target.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '86400.5' }, text: 'slow down' });
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;
    const recorded = await localAttempt(workflowId, 1).run(activities.recordEventAndDispatch, input);
    expect(recorded).toMatchObject({ firstAttempts: [{ failed: { type: 'SubscriberRejected', details: { status: 429, retryAfterSeconds: 2 } } }] });
    const [dispatch] = (recorded as { dispatches: { eventId: string; subscriberId: string }[] }).dispatches as [{ eventId: string; subscriberId: string }];
    const attempts = () => h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded', 'status_code']).where('event_id', '=', dispatch.eventId).orderBy('attempt').execute();
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: false, status_code: 429 }]);
    expect((await failedDispatchAttempt(h.db, dispatch.subscriberId, dispatch.eventId))?.waitSeconds).toBeGreaterThanOrEqual(1);

    // Attempt 2, a regular activity: recorded, and its failure is the rejection the retry policy acts on.
    const regular = new MockActivityEnvironment({ attempt: 1, isLocal: false, startToCloseTimeoutMs: 15_000, workflowExecution: { workflowId, runId: randomUUID() } });
    const failure = await regular.run(activities.dispatchEvent, { ...dispatch, firstAttempt: 2, askAdmission: true }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ApplicationFailure);
    expect(failure).toMatchObject({ type: 'SubscriberRejected', details: [{ status: 429, retryAfterSeconds: 3600 }] });
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: false, status_code: 429 }, { attempt: 2, succeeded: false, status_code: 429 }]);
    const wait = (await failedDispatchAttempt(h.db, dispatch.subscriberId, dispatch.eventId))?.waitSeconds;
    expect(wait).toBeGreaterThanOrEqual(3590);
    expect(wait).toBeLessThanOrEqual(3600);
  });

  it("a repeat answers a recorded failure with what is left of its Retry-After, not all of it", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    target.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '120' }, text: 'slow down' });
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;
    await localAttempt(workflowId, 1).run(activities.recordEventAndDispatch, input);
    // The attempt was answered 100 s ago (the first execution's time, the workflow task's timeout and another worker's start).
    await h.db.updateTable('dispatch_attempts').set({ retry_not_before: sql<Date>`retry_not_before - interval '100 seconds'`, attempted_at: sql<Date>`attempted_at - interval '100 seconds'` } as never).where('subscriber_id', '=', target.subscriberId).execute();
    const again = await localAttempt(workflowId, 2).run(activities.recordEventAndDispatch, input);
    const [repeated] = (again as { firstAttempts: { failed: { type: string; details: { status: number; retryAfterSeconds: number } } }[] }).firstAttempts;
    expect(repeated).toMatchObject({ failed: { type: 'SubscriberRejected', details: { status: 429 } } });
    expect(repeated!.failed.details.retryAfterSeconds).toBeGreaterThanOrEqual(19);
    expect(repeated!.failed.details.retryAfterSeconds).toBeLessThanOrEqual(20);
    expect(target.subscriber.server.calls.filter((c) => c.operation === 'deliver')).toHaveLength(1);
  });

  it("reckons the Retry-After of an attempt written again from the latest write, not the row's first", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    target.subscriber.server.failNext('deliver', 1, { status: 500, text: 'boom' });
    const input = pushInput(target);
    const recorded = await localAttempt(`event:gitlab:${target.connectionId}:${input.deliveryId}`, 1).run(activities.recordEventAndDispatch, input);
    const [dispatch] = (recorded as { dispatches: { eventId: string; subscriberId: string }[] }).dispatches as [{ eventId: string; subscriberId: string }];
    // The row was first written 100 s ago.
    await h.db.updateTable('dispatch_attempts').set({ attempted_at: sql<Date>`attempted_at - interval '100 seconds'` } as never).where('subscriber_id', '=', target.subscriberId).execute();
    expect((await failedDispatchAttempt(h.db, dispatch.subscriberId, dispatch.eventId))?.waitSeconds).toBe(0);
    // The same attempt written again now (another execution's send of it, or its late write): 429, wait a minute.
    await recordDispatchAttempt(h.db, { ...dispatch, attempt: 1, succeeded: false, statusCode: 429, error: 'answered 429', retryAfterSeconds: 60, durationMs: 5 });
    const wait = (await failedDispatchAttempt(h.db, dispatch.subscriberId, dispatch.eventId))?.waitSeconds;
    expect(wait).toBeGreaterThanOrEqual(59);
    expect(wait).toBeLessThanOrEqual(60);
    // Written again without a Retry-After: no wait is left of the earlier answer's.
    await recordDispatchAttempt(h.db, { ...dispatch, attempt: 1, succeeded: false, statusCode: 503, error: 'answered 503', durationMs: 5 });
    expect(await failedDispatchAttempt(h.db, dispatch.subscriberId, dispatch.eventId)).toEqual({ attempt: 1, statusCode: 503, error: 'answered 503', waitSeconds: 0 });
  });

  it('a repeat left too little time for inline attempts still answers a recorded failure as that failure, so the run does not send it at once as attempt 1', async () => {
    const o = await createOrgWithToken(h);
    const acknowledging = await subscribedRepository(h, o, subscribers);
    const refusing = await subscribe(h, o, subscribers);
    refusing.subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '120' }, text: 'slow down' });
    const input = pushInput(acknowledging);
    const workflowId = `event:gitlab:${acknowledging.connectionId}:${input.deliveryId}`;
    await localAttempt(workflowId, 1).run(activities.recordEventAndDispatch, input);
    // The repeat's recording was slow (the database that timed the first execution out): under 12 s left.
    const again = (await localAttempt(workflowId, 2, 11_000).run(activities.recordEventAndDispatch, input)) as unknown as {
      dispatches: { subscriberId: string }[];
      firstAttempts: { failed: { type: string; details?: { status: number; retryAfterSeconds?: number } } }[];
    };
    const answerOf = (subscriberId: string) => again.firstAttempts[again.dispatches.findIndex((d) => d.subscriberId === subscriberId)]!;
    // workflows/event.ts makes a not-admitted pair at once as attempt 1 (the acknowledged one is then skipped), a refused one as attempt 2 after its wait.
    expect(answerOf(acknowledging.subscriberId)).toMatchObject({ failed: { type: 'InlineNotAdmitted' } });
    const refused = answerOf(refusing.subscriberId);
    expect(refused).toMatchObject({ failed: { type: 'SubscriberRejected', details: { status: 429 } } });
    expect(refused.failed.details!.retryAfterSeconds).toBeGreaterThan(100);
    expect(refused.failed.details!.retryAfterSeconds).toBeLessThanOrEqual(120);
    expect([acknowledging, refusing].map((s) => s.subscriber.server.calls.filter((c) => c.operation === 'deliver').length)).toEqual([1, 1]);
  });

  it('sends a first attempt only after the recording committed: the subscriber can read the event from another connection', async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    const seen: boolean[] = [];
    target.subscriber.onDelivery = async (event) => {
      // h.db's pool: never the recording transaction's connection (it is held until the commit).
      seen.push((await h.db.selectFrom('events').select('id').where('id', '=', event.body.id).executeTakeFirst()) !== undefined);
    };
    const input = pushInput(target);
    const recorded = await localAttempt(`event:gitlab:${target.connectionId}:${input.deliveryId}`, 1).run(activities.recordEventAndDispatch, input);
    expect(recorded).toMatchObject({ firstAttempts: [{ delivered: true }] });
    expect(seen).toEqual([true]);
  });

  it('leaves the first attempts to activities when the recording left too little of its time, and the activity sends each once as attempt 1', async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;
    // A start-to-close of 11 s: less than FIRST_ATTEMPTS_MIN_LEFT_MS (12 s) is left after any recording,
    // as with the workflow's 45 s after a recording that waited 34 s on locks or the pool.
    const recorded = await localAttempt(workflowId, 1, 11_000).run(activities.recordEventAndDispatch, input);
    expect(recorded).toMatchObject({ recorded: 1, firstAttempts: [{ failed: { type: 'InlineNotAdmitted' } }] });
    expect(target.subscriber.server.calls.filter((c) => c.operation === 'deliver')).toHaveLength(0);
    const [dispatch] = (recorded as { dispatches: { eventId: string; subscriberId: string }[] }).dispatches as [{ eventId: string; subscriberId: string }];
    const attempts = () => h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded']).where('event_id', '=', dispatch.eventId).execute();
    expect(await attempts()).toEqual([]);
    // What the run then does (workflows/event.ts, not admitted): dispatchEvent at once as a regular activity, still attempt 1.
    const regular = new MockActivityEnvironment({ attempt: 1, isLocal: false, startToCloseTimeoutMs: 15_000, workflowExecution: { workflowId, runId: randomUUID() } });
    expect(await regular.run(activities.dispatchEvent, { ...dispatch, firstAttempt: 1, askAdmission: true })).toEqual({ delivered: true, statusCode: 204 });
    expect(target.subscriber.received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(['1']);
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: true }]);
  });

  it("never lets a late failure of an attempt overwrite its recorded success, so the event is not sent again", async () => {
    const target = await subscribedRepository(h, await createOrgWithToken(h), subscribers);
    const input = pushInput(target);
    const workflowId = `event:gitlab:${target.connectionId}:${input.deliveryId}`;
    const recorded = await localAttempt(workflowId, 1).run(activities.recordEventAndDispatch, input);
    expect(recorded).toMatchObject({ firstAttempts: [{ delivered: true }] });
    const [dispatch] = (recorded as { dispatches: { eventId: string; subscriberId: string }[] }).dispatches as [{ eventId: string; subscriberId: string }];
    // A timed-out or cancelled earlier execution's attempt 1 (its subscriber no answer) recorded after the success.
    await recordDispatchAttempt(h.db, { ...dispatch, attempt: 1, succeeded: false, error: 'no answer within 10 s', durationMs: 10_000 });
    const attempts = () => h.db.selectFrom('dispatch_attempts').select(['attempt', 'succeeded']).where('event_id', '=', dispatch.eventId).execute();
    expect(await attempts()).toEqual([{ attempt: 1, succeeded: true }]);
    // A later attempt (a retry of the run's activity) finds it acknowledged and sends nothing.
    const regular = new MockActivityEnvironment({ attempt: 1, isLocal: false, startToCloseTimeoutMs: 15_000, workflowExecution: { workflowId, runId: randomUUID() } });
    expect(await regular.run(activities.dispatchEvent, { ...dispatch, firstAttempt: 2, askAdmission: true })).toEqual({ delivered: true, skipped: 'already delivered' });
    expect(target.subscriber.received).toHaveLength(1);
    // A failure still overwrites a failure (a re-run of the same attempt after a worker crash).
    await recordDispatchAttempt(h.db, { ...dispatch, attempt: 2, succeeded: false, error: 'answered 503', statusCode: 503, durationMs: 5 });
    await recordDispatchAttempt(h.db, { ...dispatch, attempt: 2, succeeded: false, error: 'answered 502', statusCode: 502, durationMs: 5 });
    expect(await h.db.selectFrom('dispatch_attempts').select('status_code').where('event_id', '=', dispatch.eventId).where('attempt', '=', 2).execute()).toEqual([{ status_code: 502 }]);
  });
});
