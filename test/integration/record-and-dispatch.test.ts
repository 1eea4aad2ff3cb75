import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../../activities/index.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { createLogger } from '../../lib/logger.ts';
import type { EventInput } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { subscribedRepository, type SubscribedRepository } from '../support/events.ts';
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
  const localAttempt = (workflowId: string, attempt: number) => new MockActivityEnvironment({ attempt, isLocal: true, workflowExecution: { workflowId, runId: randomUUID() } });

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
});
