import * as activity from '@temporalio/activity';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger, type LogEntry } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';
import { callScope, ownActivityContext } from '../../activities/call-scope.ts';
import { activityCancellations, activityContext } from '../../activities/outbound.ts';

/**
 * activities/call-scope.ts leans on @temporalio/activity's Context as the SDK builds it: a scope's
 * context is a copy made with Object.create over the activity's (its own cancellationSignal, every
 * other member found through the prototype), set as the store of the SDK's asyncLocalStorage. An SDK
 * upgrade that moves a member to a private field, binds a method to the original object, or reads
 * the context from elsewhere than that store breaks a scope silently: these fail instead.
 */
describe("a call scope's context, as the Temporal SDK's activity context lets it be copied", () => {
  const environment = () => {
    const heartbeats: unknown[] = [];
    const logged: LogEntry[] = [];
    const env = new MockActivityEnvironment(
      { isLocal: true, activityId: '7', workflowExecution: { workflowId: 'w', runId: 'r' } },
      { logger: new DefaultLogger('TRACE', (entry) => logged.push(entry)) },
    );
    env.on('heartbeat', (details: unknown) => heartbeats.push(details));
    return { env, heartbeats, logged };
  };

  it('inside run: the SDK, activityContext() and the outbound layer see the copy, with the scope\'s signal and the activity\'s info, heartbeat, logger and meter', async () => {
    const { env, heartbeats, logged } = environment();
    await env.run(async () => {
      const own = activity.Context.current();
      const scope = callScope();
      await scope.run(async () => {
        const scoped = activity.Context.current();
        expect(scoped).not.toBe(own);
        expect(scoped).toBeInstanceOf(activity.Context);
        expect(activityContext()).toBe(scoped);
        expect(activity.asyncLocalStorage.getStore()).toBe(scoped);
        // Its cancellationSignal is the scope's, as the SDK's own accessor and the outbound layer read it.
        expect(scoped.cancellationSignal).toBe(scope.signal);
        expect(activity.cancellationSignal()).toBe(scope.signal);
        expect(activityCancellations()).toContain(scope.signal);
        expect(activityCancellations()).not.toContain(own.cancellationSignal);
        // Everything else is the activity's.
        expect(scoped.info).toBe(own.info);
        expect(activity.activityInfo().activityId).toBe('7');
        expect(scoped.log).toBe(own.log);
        expect(scoped.metricMeter).toBe(own.metricMeter);
        expect(ownActivityContext()).toBe(own);
        scoped.heartbeat('through the copy');
        activity.heartbeat('through the SDK');
        scoped.log.info('logged through the copy');
        activity.log.info('logged through the SDK');
        await scoped.sleep(1);
        // Getters reading the instance's fields work through the prototype (a private field would throw a TypeError).
        expect(() => scoped.client).toThrow(/No Client available/);
        // A scope inside it: still the activity's own context underneath.
        const inner = callScope();
        inner.run(() => {
          expect(activity.Context.current().cancellationSignal).toBe(inner.signal);
          expect(ownActivityContext()).toBe(own);
        });
        // After an await, still the copy.
        await Promise.resolve();
        expect(activity.Context.current()).toBe(scoped);
        scope.end('done');
        expect(inner.signal.aborted).toBe(true);
      });
      expect(activity.Context.current()).toBe(own);
      expect(own.cancellationSignal.aborted).toBe(false);
    });
    expect(heartbeats).toEqual(['through the copy', 'through the SDK']);
    expect(logged.map((entry) => entry.message)).toEqual(expect.arrayContaining(['logged through the copy', 'logged through the SDK']));
  });

  it("end aborts the scope's signal with its reason and leaves the activity's alone; the activity's cancellation aborts the scope's", async () => {
    const { env } = environment();
    await env.run(async () => {
      const own = activity.Context.current();
      const ended = callScope();
      ended.end('the step ended');
      expect(ended.signal.aborted).toBe(true);
      expect(ended.signal.reason).toBe('the step ended');
      expect(own.cancellationSignal.aborted).toBe(false);
      const running = callScope();
      const inner = running.run(() => callScope());
      env.cancel();
      await expect(own.cancelled).rejects.toThrow();
      expect(own.cancellationSignal.aborted).toBe(true);
      expect(running.signal.aborted).toBe(true);
      expect(inner.signal.aborted).toBe(true);
      // A scope made under an activity already cancelled starts aborted.
      expect(callScope().signal.aborted).toBe(true);
    });
  });

  it('outside an activity, run runs as it is and end still aborts its signal', () => {
    const scope = callScope();
    expect(scope.run(() => activityContext())).toBeUndefined();
    scope.end('over');
    expect(scope.signal.aborted).toBe(true);
  });
});
