import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import { createInlineAdmission, withAdmission } from '../../activities/inline-admission.ts';
import { INLINE_NOT_ADMITTED } from '../../workflows/contract.ts';

/** The attach's provider steps (activities/hooks.ts) run their calls through withAdmission. */
describe('withAdmission', () => {
  const local = (runId: string) => new MockActivityEnvironment({ isLocal: true, workflowExecution: { workflowId: `w-${runId}`, runId } });
  const full = () => {
    const admission = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    admission.tryAdmit('org-b');
    return admission;
  };

  it('refuses a local step that asks when the worker is full, before the step makes any call', async () => {
    let called = false;
    const refused = await local('run-1')
      .run(() => withAdmission(full(), { organizationId: 'org-a', askAdmission: true }, async () => (called = true)))
      .catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ApplicationFailure);
    expect(refused).toMatchObject({ type: INLINE_NOT_ADMITTED, nonRetryable: true });
    expect(called).toBe(false);
  });

  it('tells the caller of a refusal (the dispatch counts it as not_admitted), and only of a refusal', async () => {
    let refusals = 0;
    const onRefused = () => refusals++;
    await local('run-1')
      .run(() => withAdmission(full(), { organizationId: 'org-a', askAdmission: true }, async () => 'sent', onRefused))
      .catch(() => undefined);
    expect(refusals).toBe(1);
    const admitted = await local('run-2').run(() => withAdmission(createInlineAdmission({ perWorker: 1, perOrganization: 1 }), { organizationId: 'org-a', askAdmission: true }, async () => 'sent', onRefused));
    expect(admitted).toBe('sent');
    expect(refusals).toBe(1);
  });

  it("runs a step that does not ask (a run of the earlier code) or that runs as an activity, full or not", async () => {
    expect(await local('run-1').run(() => withAdmission(full(), { organizationId: 'org-a' }, async () => 'as before'))).toBe('as before');
    const activity = new MockActivityEnvironment({ isLocal: false });
    expect(await activity.run(() => withAdmission(full(), { organizationId: 'org-a', askAdmission: true }, async () => 'activity'))).toBe('activity');
  });

  it("gives the place back when the step ends, failed or not; one run's steps side by side take one place", async () => {
    const admission = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    const ask = { organizationId: 'org-a', askAdmission: true };
    await expect(local('run-1').run(() => withAdmission(admission, ask, async () => Promise.reject(new Error('provider down'))))).rejects.toThrow('provider down');
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const env = local('run-2');
    const sideBySide = Promise.all([1, 2, 3].map(() => env.run(() => withAdmission(admission, ask, () => held))));
    await expect(local('run-3').run(() => withAdmission(admission, ask, async () => 'other run'))).rejects.toMatchObject({ type: INLINE_NOT_ADMITTED });
    release();
    await sideBySide;
    expect(await local('run-3').run(() => withAdmission(admission, ask, async () => 'other run'))).toBe('other run');
  });
});
