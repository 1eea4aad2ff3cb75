import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { admitActivity, holdingAdmission } from '../../activities/activity-admission.ts';
import { createInlineAdmission } from '../../activities/inline-admission.ts';
import { activityCallsPerOrganization, activityCallsPerWorker, configSchema } from '../../lib/config.ts';
import { ACTIVITY_NOT_ADMITTED } from '../../workflows/contract.ts';

/** The dispatch's regular attempts ask admitActivity before their call; holdingAdmission gives the place back. */
describe('admitActivity', () => {
  const activity = (attempt = 1) => new MockActivityEnvironment({ isLocal: false, attempt });
  const ask = (organizationId: string) => ({ organizationId, askAdmission: true });
  type Slots = ReturnType<typeof createInlineAdmission>;
  /** An activity that asks admission for `input`, then makes its call. */
  const withActivityAdmission = <T>(slots: Slots, input: Parameters<typeof admitActivity>[1], call: () => Promise<T>, onRefused?: (last: boolean) => void) =>
    holdingAdmission({
      step: async () => {
        admitActivity(slots, input, onRefused);
        return call();
      },
    }).step();

  it("refuses an organization's activity over its share before any call, not retried, saying how many attempts came before", async () => {
    const slots = createInlineAdmission({ perWorker: 3, perOrganization: 1 });
    slots.tryAdmit('org-a');
    let called = false;
    let refusals = 0;
    const refused = await activity(4)
      .run(() => withActivityAdmission(slots, ask('org-a'), async () => (called = true), () => refusals++))
      .catch((error: unknown) => error);
    expect(refused).toMatchObject({ type: ACTIVITY_NOT_ADMITTED, nonRetryable: true, details: [{ attemptsMade: 3 }] });
    expect({ called, refusals }).toEqual({ called: false, refusals: 1 });
    // Another organization's activity is admitted, and gives its place back when it ends, failed or not.
    await expect(activity().run(() => withActivityAdmission(slots, ask('org-b'), async () => Promise.reject(new Error('subscriber down'))))).rejects.toThrow('subscriber down');
    expect(await activity().run(() => withActivityAdmission(slots, ask('org-b'), async () => 'sent'))).toBe('sent');
  });

  it("says a refusal is the last when asking again after the run's wait would pass the activity's deadline, and tells onRefused", async () => {
    const slots = createInlineAdmission({ perWorker: 2, perOrganization: 1 });
    slots.tryAdmit('org-a');
    const scheduled = { isLocal: false, attempt: 1, scheduledTimestampMs: Date.now(), scheduleToCloseTimeoutMs: 10_000 };
    const refusal = async (refusedWaitMs?: number) => {
      const told: boolean[] = [];
      const input = { ...ask('org-a'), ...(refusedWaitMs !== undefined ? { refusedWaitMs } : {}) };
      const error = await new MockActivityEnvironment(scheduled).run(() => withActivityAdmission(slots, input, async () => 'sent', (last) => told.push(last))).catch((e: unknown) => e);
      return { details: (error as { details?: unknown[] }).details, told };
    };
    // 1 s of margin before the deadline 10 s after scheduling: a 4 s wait leaves time, a 9.5 s one does not.
    expect(await refusal(4000)).toEqual({ details: [{ attemptsMade: 0 }], told: [false] });
    expect(await refusal(9500)).toEqual({ details: [{ attemptsMade: 0, last: true }], told: [true] });
    // A run that does not say its wait decides alone.
    expect(await refusal()).toEqual({ details: [{ attemptsMade: 0 }], told: [false] });
  });

  it('runs an activity that does not ask (a run of the earlier code) and a local one (the inline admission is its gate), full or not', async () => {
    const full = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    full.tryAdmit('org-b');
    expect(await activity().run(() => withActivityAdmission(full, { organizationId: 'org-a' }, async () => 'as before'))).toBe('as before');
    const local = new MockActivityEnvironment({ isLocal: true });
    expect(await local.run(() => withActivityAdmission(full, ask('org-a'), async () => 'inline'))).toBe('inline');
  });

  it('will not take a place that nothing would give back', async () => {
    const slots = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    await expect(activity().run(async () => admitActivity(slots, ask('org-a')))).rejects.toThrow(/holdingAdmission/);
    expect(slots.tryAdmit('org-a')).toBeTypeOf('function');
  });
});

describe('worker.activityCallsPer*', () => {
  it('default to the activity slots less a quarter, and a quarter of them per organization', () => {
    expect([activityCallsPerWorker({ maxConcurrentActivityTaskExecutions: 20 }), activityCallsPerOrganization({ maxConcurrentActivityTaskExecutions: 20 })]).toEqual([15, 5]);
    expect([activityCallsPerWorker({ maxConcurrentActivityTaskExecutions: 4 }), activityCallsPerOrganization({ maxConcurrentActivityTaskExecutions: 4 })]).toEqual([3, 1]);
  });

  it("leave the other organizations a place whenever the worker admits 2 or more: one organization's default share stays below activityCallsPerWorker", () => {
    const both = (sizing: Parameters<typeof activityCallsPerWorker>[0]) => [activityCallsPerWorker(sizing), activityCallsPerOrganization(sizing)];
    // Small workers: 1 and 2 slots admit 1 (nothing to keep apart), 3 and 4 keep places for the others.
    expect([1, 2, 3, 4].map((slots) => both({ maxConcurrentActivityTaskExecutions: slots }))).toEqual([[1, 1], [1, 1], [2, 1], [3, 1]]);
    // A lowered activityCallsPerWorker lowers the default share with it (a quarter of 20 would be all 3).
    expect(both({ maxConcurrentActivityTaskExecutions: 20, activityCallsPerWorker: 3 })).toEqual([3, 2]);
    expect(both({ maxConcurrentActivityTaskExecutions: 20, activityCallsPerWorker: 2 })).toEqual([2, 1]);
  });

  it('must stay below the activity slots', () => {
    const base = { publicUrl: 'https://forgelink.test', database: { url: 'postgres://x' }, auth: { adminToken: 'a'.repeat(32) }, encryption: { key: Buffer.alloc(32).toString('base64') } };
    const parse = (worker: object) => configSchema.safeParse({ ...base, worker });
    expect(parse({ maxConcurrentActivityTaskExecutions: 8, activityCallsPerOrganization: 8 }).error?.issues.map((i) => i.path.join('.'))).toContain('worker.activityCallsPerOrganization');
    expect(parse({ maxConcurrentActivityTaskExecutions: 8, activityCallsPerWorker: 8 }).error?.issues.map((i) => i.path.join('.'))).toContain('worker.activityCallsPerWorker');
    expect(parse({ maxConcurrentActivityTaskExecutions: 8, activityCallsPerWorker: 7, activityCallsPerOrganization: 2 }).error?.issues.filter((i) => i.path[0] === 'worker')).toBeUndefined();
    // One organization's share set to every place the worker admits would keep nothing from it.
    expect(parse({ maxConcurrentActivityTaskExecutions: 20, activityCallsPerWorker: 3, activityCallsPerOrganization: 3 }).error?.issues.map((i) => i.path.join('.'))).toContain('worker.activityCallsPerOrganization');
    expect(parse({ maxConcurrentActivityTaskExecutions: 4, activityCallsPerOrganization: 3 }).error?.issues.map((i) => i.path.join('.'))).toContain('worker.activityCallsPerOrganization');
    expect(parse({ maxConcurrentActivityTaskExecutions: 2, activityCallsPerOrganization: 1 }).error?.issues.filter((i) => i.path[0] === 'worker')).toBeUndefined();
  });
});
