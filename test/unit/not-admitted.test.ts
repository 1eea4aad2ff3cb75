import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { admitActivity, holdingAdmission } from '../../activities/activity-admission.ts';
import { createInlineAdmission, inlineNotAdmitted } from '../../activities/inline-admission.ts';
import { createAnswerBudget, withinAnswerBudget } from '../../activities/providers/answer-budget.ts';
import { parseAnswer } from '../../activities/providers/answer.ts';
import { createLogger, temporalLogger } from '../../lib/logger.ts';
import { createWorkerMetrics } from '../../lib/metrics.ts';
import { activityInterceptors } from '../../worker/create-worker.ts';
import { ACTIVITY_NOT_ADMITTED, INLINE_NOT_ADMITTED } from '../../workflows/contract.ts';

const MiB = 1024 * 1024;

/**
 * A refused activity run as the worker runs it: the SDK's Activity (which logs how each one ends)
 * with the worker's activity interceptors, its logger and metrics.
 */
function worker(info: { activityType: string; isLocal?: boolean }) {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('worker', 'info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const metrics = createWorkerMetrics();
  const env = new MockActivityEnvironment(info, { interceptors: activityInterceptors({ logger, metrics }), logger: temporalLogger(logger) });
  const refusals = async () => (await metrics.registry.getSingleMetric('forgelink_activities_not_admitted_total')!.get()).values.map(({ labels, value }) => ({ ...labels, value }));
  return { env, lines, refusals };
}

describe('an activity refused a place', () => {
  it('is counted by its activity type and logged in one line at INFO, without a stack trace', async () => {
    const { env, lines, refusals } = worker({ activityType: 'verifyRepository' });
    const slots = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
    const held = slots.tryAdmit('org-a');
    expect(held).toBeDefined();
    let calls = 0;
    const { verifyRepository } = holdingAdmission({
      verifyRepository: async (input: { organizationId: string; askAdmission: boolean }) => {
        admitActivity(slots, input);
        calls++;
      },
    });

    await expect(env.run(verifyRepository, { organizationId: 'org-a', askAdmission: true })).rejects.toMatchObject({ type: ACTIVITY_NOT_ADMITTED });
    await expect(env.run(verifyRepository, { organizationId: 'org-a', askAdmission: true })).rejects.toMatchObject({ type: ACTIVITY_NOT_ADMITTED });
    expect(calls).toBe(0);
    expect(await refusals()).toEqual([{ activity: 'verifyRepository', slot: 'activity', value: 2 }]);
    // Two refusals, two lines: the SDK's "Activity failed" (a WARN with the stack) is at DEBUG for a benign failure.
    expect(lines.map((l) => ({ level: l.level, msg: l.msg, slot: l.slot }))).toEqual([
      { level: 30, msg: 'activity not admitted: it made no call', slot: 'activity' },
      { level: 30, msg: 'activity not admitted: it made no call', slot: 'activity' },
    ]);
    expect(lines[0]).toMatchObject({ activityType: 'verifyRepository', attempt: 1, reason: expect.stringContaining('organization org-a') });
    expect(JSON.stringify(lines)).not.toMatch(/stack|\n\s+at /);

    // Admitted once the place is given back: no count, no line.
    held!();
    await env.run(verifyRepository, { organizationId: 'org-a', askAdmission: true });
    expect(calls).toBe(1);
    expect(await refusals()).toEqual([{ activity: 'verifyRepository', slot: 'activity', value: 2 }]);
    expect(lines).toHaveLength(2);
  });

  it('inside a workflow task is counted apart (slot workflow_task)', async () => {
    const { env, lines, refusals } = worker({ activityType: 'dispatchEvent', isLocal: true });
    await expect(env.run(async () => Promise.reject(inlineNotAdmitted('org-b')))).rejects.toMatchObject({ type: INLINE_NOT_ADMITTED });
    expect(await refusals()).toEqual([{ activity: 'dispatchEvent', slot: 'workflow_task', value: 1 }]);
    expect(lines.map((l) => [l.level, l.slot])).toEqual([[30, 'workflow_task']]);
  });

  /*
   * A step asking admission whose provider answer the worker's answer budget refused (full of
   * others' answers) is refused as the admissions refuse (holdingAdmission): counted the same, but
   * it made calls before, so its line must not say it made none.
   */
  it("refused by the answer budget after its calls, is logged as that, not as a step that made no call", async () => {
    const budget = createAnswerBudget({ limit: 64 * MiB, perOrganization: 16 * MiB });
    const others = budget.tryReserve('org-c', 16 * MiB)!;
    let calls = 0;
    const { listHooks } = holdingAdmission({
      listHooks: async (_input: { organizationId: string; askAdmission: boolean }) => {
        calls++;
        // The provider's answer, counted in the organization's full share as the factory's adapters count it.
        return withinAnswerBudget({ budget, organizationId: 'org-c' }, async () => parseAnswer('gitlab', 'https://gitlab.example', Buffer.from('[{"id":1}]')));
      },
    });
    try {
      for (const isLocal of [false, true]) {
        const { env, lines, refusals } = worker({ activityType: 'listHooks', isLocal });
        await expect(env.run(listHooks, { organizationId: 'org-c', askAdmission: true })).rejects.toMatchObject({ type: isLocal ? INLINE_NOT_ADMITTED : ACTIVITY_NOT_ADMITTED });
        expect(await refusals()).toEqual([{ activity: 'listHooks', slot: isLocal ? 'workflow_task' : 'activity', value: 1 }]);
        expect(lines.map((l) => ({ level: l.level, msg: l.msg, refusedBy: l.refusedBy }))).toEqual([
          { level: 30, msg: "activity refused: a provider answer did not fit the worker's answer budget (its calls are made again when its step runs again)", refusedBy: 'answerBudget' },
        ]);
        expect(lines[0]).toMatchObject({ reason: expect.stringContaining("the worker's answer budget is full") });
      }
      expect(calls).toBe(2);
    } finally {
      others();
    }
  });

  it('is told apart from any other failure, which the SDK still logs as a WARN with its stack', async () => {
    const { env, lines, refusals } = worker({ activityType: 'ensureHook' });
    await expect(env.run(async () => Promise.reject(new Error('provider down')))).rejects.toThrow('provider down');
    expect(await refusals()).toEqual([]);
    expect(lines).toEqual([expect.objectContaining({ level: 40, msg: 'Activity failed' })]);
  });
});
