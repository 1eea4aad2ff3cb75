import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { INLINE_NOT_ADMITTED } from '../../workflows/contract.ts';
import type { ProxyFault } from '../support/flaky-proxy.ts';
import { attachmentOf, expectExactHookSet, gitlabWorld, outcomeOf, requestAttachment, type HookWorld, type Org, type WorldRepository } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, localStepsOf, patchesOf, recordHistory } from '../support/histories.ts';

/**
 * One organization's slow provider cannot stall another's attach on a shared worker. An attach's
 * provider steps run inside its workflow task, holding the task's slot until they end; here
 * organization A's provider holds every hook creation, A attaches as many repositories as the
 * worker has workflow task slots, and organization B attaches one repository against a healthy
 * provider. The worker admits at most inlineCallsPerOrganization (2) of A's calls into its workflow
 * tasks; A's other steps are refused there and run at once as activities, so workflow task slots
 * stay free and B's attach completes, inside its one workflow task, while every one of A's
 * creations is still held. Released, each of A's attaches ends attached with one hook and one
 * creation at the provider. (Without admission, A's held creations take the worker's workflow task
 * slots, and B's attach does not begin until the provider's 30 s timeout ends some of them.)
 */
describe('attach admission into workflow tasks', () => {
  // 4 of the 8 slots admit tenant-facing calls (the default half), 2 of them one organization's. A's
  // steps refused there all get activity slots (8 of A's), so that every one of A's creations
  // reaches A's provider: this test is about workflow task slots (activity slots:
  // provider-activity-admission.test.ts).
  const sizing = { ...WORKER_SIZING_DEFAULTS, maxConcurrentWorkflowTaskExecutions: 8, inlineCallsPerOrganization: 2, activityCallsPerOrganization: 8 };
  let h: Harness;
  let orgA: Org;
  let orgB: Org;
  let worldA: HookWorld;
  let worldB: HookWorld;

  const newOrg = async () => {
    const created = await createOrgWithToken(h);
    return { id: created.org.id, slug: created.org.slug, token: created.token };
  };

  beforeAll(async () => {
    h = await startHarness({ sizing });
    orgA = await newOrg();
    orgB = await newOrg();
    worldA = await gitlabWorld(h, orgA);
    worldB = await gitlabWorld(h, orgB);
  });
  afterAll(async () => {
    await h?.close();
    await worldA?.close();
    await worldB?.close();
  });

  /** Rejects when `promise` has not settled within `ms` (well inside the 30 s a held provider call takes to time out). */
  const within = <T>(ms: number, what: string, promise: Promise<T>) =>
    Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms).unref())]);

  it("organization B's attach completes while organization A's provider holds every hook creation of A's attaches", async () => {
    const count = sizing.maxConcurrentWorkflowTaskExecutions;
    // A's provider stores each hook it is asked to create, and holds its answer until released.
    let releaseA!: (how: 'answer') => void;
    const released = new Promise<'answer' | 'drop'>((resolve) => (releaseA = resolve));
    let held = 0;
    const waiters: { atLeast: number; resolve: () => void }[] = [];
    const creationsHeld = (atLeast: number) => new Promise<void>((resolve) => (held >= atLeast ? resolve() : waiters.push({ atLeast, resolve })));
    const onHeld = () => {
      held++;
      for (const waiter of waiters.filter((w) => held >= w.atLeast)) waiter.resolve();
    };
    worldA.proxy.fault = (request) => (worldA.isCreate(request) ? { kind: 'hold', onHeld, release: released } : undefined);

    try {
      const fromA = worldA.server.calls.length;
      const reposA: WorldRepository[] = [];
      for (let i = 0; i < count; i++) reposA.push(await worldA.newRepository());
      const runsA = await Promise.all(reposA.map((repo) => requestAttachment(h, orgA, repo.repositoryId, 'PUT')));
      await within(20_000, "two of A's hook creations did not reach the provider", creationsHeld(2));

      const repoB = await worldB.newRepository();
      const runB = await requestAttachment(h, orgB, repoB.repositoryId, 'PUT');
      const { result } = await within(15_000, "B's attach did not end", outcomeOf(h, runB));
      expect(result?.status).toBe('attached');
      expectExactHookSet(worldB, repoB);

      // Every one of A's creations reaches the provider and is held; none of A's attaches has ended.
      await within(20_000, "A's hook creations did not all reach the provider", creationsHeld(count));
      expect(held).toBe(count);
      for (const workflowId of runsA) expect((await h.client.workflow.getHandle(workflowId).describe()).status.name).toBe('RUNNING');

      releaseA('answer');
      for (const workflowId of runsA) expect((await outcomeOf(h, workflowId)).result?.status).toBe('attached');
      for (const repo of reposA) {
        expectExactHookSet(worldA, repo);
        expect((await attachmentOf(h, orgA, repo.repositoryId)).status).toBe('attached');
      }
      // One creation per hook: a step refused admission made no call before it ran as an activity.
      expect(worldA.server.calls.slice(fromA).filter((c) => c.operation === worldA.ops.create)).toHaveLength(count);

      // At most two of A's creations ran inside a workflow task; the others, refused there, ran as
      // activities right after. B's steps were all admitted: its attach is one workflow task.
      const historiesA = await Promise.all(runsA.map(async (workflowId) => ({ workflowId, events: await historyEvents(h.client, workflowId) })));
      const ensuredAsActivity = historiesA.filter(({ events }) => events.some((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'ensureHook'));
      expect(ensuredAsActivity.length).toBeGreaterThanOrEqual(count - sizing.inlineCallsPerOrganization);
      for (const { events } of ensuredAsActivity) {
        const refused = localStepsOf(events).find((step) => step.activityType === 'ensureHook')?.event.markerRecordedEventAttributes?.failure;
        expect((refused?.applicationFailureInfo ?? refused?.cause?.applicationFailureInfo)?.type).toBe(INLINE_NOT_ADMITTED);
      }
      const eventsB = await historyEvents(h.client, runB);
      expect(eventsB.filter((e) => e.activityTaskScheduledEventAttributes)).toEqual([]);
      // The bookkeeping is off the provider calls' path: the begin beside the lookup, the completion inside the prune's step.
      expect(localStepsOf(eventsB).map((step) => step.activityType).sort()).toEqual(['beginAttachment', 'ensureHook', 'pruneHooks', 'verifyRepository']);
      // A new run records one patch (workflows/attach.ts attachAsPatched), not one for each the path went through: 12 events.
      expect(patchesOf(eventsB)).toEqual(['attach-one-patch']);
      expect(eventsB).toHaveLength(12);
      await recordHistory(h.client, runB, 'repository-attach-gitlab-one-patch-admitted');
      await recordHistory(h.client, ensuredAsActivity[0]!.workflowId, 'repository-attach-gitlab-one-patch-not-admitted');
    } finally {
      releaseA('answer');
      worldA.proxy.fault = () => undefined;
    }
  });

  it('a local step whose attempt failed waits for its retry on a timer, not inside the workflow task', async () => {
    const repo = await worldB.newRepository();
    // The repository's lookup answers 503 once.
    let failed = 0;
    worldB.proxy.fault = (request) =>
      failed === 0 && request.method === 'GET' && new URL(request.url, 'http://x').pathname === `/api/v4/projects/${repo.externalId}` ? (failed++, { kind: 'answer', status: 503 }) : undefined;
    try {
      const workflowId = await requestAttachment(h, orgB, repo.repositoryId, 'PUT');
      expect((await outcomeOf(h, workflowId)).result?.status).toBe('attached');
      expect(failed).toBe(1);
      expectExactHookSet(worldB, repo);
      // The failed attempt ended the workflow task (its marker, then a timer for the 1 s backoff):
      // waited inside the task, the backoff would hold the slot without admission.
      const events = await historyEvents(h.client, workflowId);
      const lookups = localStepsOf(events).filter((step) => step.activityType === 'verifyRepository');
      expect(lookups.map((step) => Boolean(step.event.markerRecordedEventAttributes?.failure))).toEqual([true, false]);
      const timer = events.find((e) => e.timerStartedEventAttributes);
      expect(Number(timer?.eventId)).toBeGreaterThan(Number(lookups[0]!.event.eventId));
      expect(Number(timer?.eventId)).toBeLessThan(Number(lookups[1]!.event.eventId));
      // The retry costs a marker, a timer and a workflow task, no further patch marker: one, 18 events (12 without the retry).
      expect(patchesOf(events)).toEqual(['attach-one-patch']);
      expect(events).toHaveLength(18);
      await recordHistory(h.client, workflowId, 'repository-attach-gitlab-one-patch-retried');
    } finally {
      worldB.proxy.fault = () => undefined;
    }
  });
});
