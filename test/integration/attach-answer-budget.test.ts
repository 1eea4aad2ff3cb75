import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAnswerBudget, type AnswerBudget } from '../../activities/providers/answer-budget.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { ACTIVITY_NOT_ADMITTED } from '../../workflows/contract.ts';
import { attachmentOf, expectExactHookSet, gitlabWorld, outcomeOf, requestAttachment, type HookWorld, type Org } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents } from '../support/histories.ts';
import { testOutbound } from '../support/outbound.ts';

const MiB = 1024 * 1024;

/**
 * A worker's answer budget full of other calls' answers (activities/providers/answer-budget.ts)
 * makes an attach wait, not fail. Its steps' answers are refused while the organization's share is
 * held; each refusal is an admission refusal (activities/activity-admission.ts, holdingAdmission):
 * the step refused inside the workflow task runs as an activity, the activity refused is asked again
 * after its run's jittered wait, from the same attempt. Refused as `WorkerBusy` retries, the inline
 * step spent its 10 attempts 3 s apart and the attach failed after ~27 s of a full budget; here the
 * budget stays full for 35 s of refusals, then frees, and the attach completes.
 */
describe("an attach under a full answer budget", () => {
  const inner = createAnswerBudget({ limit: 64 * MiB, perOrganization: 16 * MiB });
  /** When the budget refused an answer, each time. */
  const refusals: number[] = [];
  let onRefusal = () => {};
  const budget: AnswerBudget = {
    limit: inner.limit,
    perOrganization: inner.perOrganization,
    held: (organizationId) => inner.held(organizationId),
    tryReserve(organizationId, cost) {
      const release = inner.tryReserve(organizationId, cost);
      if (!release) {
        refusals.push(Date.now());
        onRefusal();
      }
      return release;
    },
  };
  let h: Harness;
  let org: Org;
  let world: HookWorld;

  beforeAll(async () => {
    h = await startHarness({ sizing: WORKER_SIZING_DEFAULTS, providers: createProviderFactory({ outbound: testOutbound, answerBudget: budget }) });
    const created = await createOrgWithToken(h);
    org = { id: created.org.id, slug: created.org.slug, token: created.token };
    world = await gitlabWorld(h, org);
  });
  afterAll(async () => {
    await h?.close();
    await world?.close();
  });

  it('waits while the budget is full for longer than the retries allowed, spending no attempt, and completes once it frees', { timeout: 150_000 }, async () => {
    const FULL_FOR_MS = 35_000;
    const repo = await world.newRepository();
    // Other calls hold the organization's whole share.
    const others = inner.tryReserve(org.id, inner.perOrganization)!;
    let freed = false;
    try {
      const fullLongEnough = new Promise<void>((resolve) => {
        onRefusal = () => {
          if (refusals.at(-1)! - refusals[0]! >= FULL_FOR_MS) resolve();
        };
      });
      const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
      const outcome = outcomeOf(h, workflowId).then((ended) => {
        if (!freed) throw new Error(`the attach ended while the budget was full: ${JSON.stringify(ended)}`);
        return ended;
      });
      await Promise.race([fullLongEnough, outcome]);
      expect((await attachmentOf(h, org, repo.repositoryId)).status).toBe('attaching');
      freed = true;
      others();

      expect((await outcome).result?.status).toBe('attached');
      expectExactHookSet(world, repo);
      expect((await attachmentOf(h, org, repo.repositoryId)).status).toBe('attached');
      // Every refusal of the step run as an activity was an admission refusal made at its first attempt: none spent one.
      const events = await historyEvents(h.client, workflowId);
      const failed = events.flatMap((e) => (e.activityTaskFailedEventAttributes ? [e.activityTaskFailedEventAttributes.failure] : []));
      expect(failed.length).toBeGreaterThanOrEqual(5);
      for (const failure of failed) expect((failure?.applicationFailureInfo ?? failure?.cause?.applicationFailureInfo)?.type).toBe(ACTIVITY_NOT_ADMITTED);
      const attempts = events.flatMap((e) => (e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.attempt] : []));
      expect(new Set(attempts)).toEqual(new Set([1]));
      expect(budget.held(org.id)).toBe(0);
    } finally {
      onRefusal = () => {};
      if (!freed) others();
    }
  });
});
