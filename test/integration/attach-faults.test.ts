import { describe, expect, it } from 'vitest';
import { failEachRequestOnce, heldRequest, manualHold, type ProxiedRequest, type ProxyFault } from '../support/flaky-proxy.ts';
import {
  agePastSweepDelay,
  attachmentOf,
  expectExactHookSet,
  expectRecorded,
  HOOK_WORLDS,
  outcomeOf,
  requestAttachment,
  runHookHealth,
  HOOK_PROVIDERS,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { historyEvents, localStepsOf, patchesOf, recordHistory } from '../support/histories.ts';
import { findAttachedRepositories } from '../../lib/db/repositories/events.ts';

/**
 * Attach under faults: permanent refusals (the saga removes what it made), transient 5xx/429 on
 * every call, an answer lost after the provider stored the hook, the worker stopped with a
 * creation in flight, and the run cancelled with a creation on its way. New runs ensure their hooks
 * inside the workflow task (local activities); runs of the earlier shapes are covered by replaying
 * their recorded histories (test/unit/workflow-replay.test.ts). After each, the fake holds exactly the hooks the scenario demands.
 */
describe('attach under faults', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  /** A rule applying `fault` to the n-th hook creation (1-based) only. */
  function onCreation(world: HookWorld, n: number, fault: ProxyFault) {
    let creations = 0;
    return (request: ProxiedRequest) => (world.isCreate(request) && ++creations === n ? fault : undefined);
  }
  const createCalls = (world: HookWorld, from: number) => world.server.calls.slice(from).filter((c) => c.operation === world.ops.create);

  /**
   * Waits until `count` hooks of the repository are recorded. The hooks are ensured inside the
   * run's workflow task, whose history shows nothing until the task ends: the records are what a
   * finished ensureHook leaves.
   */
  async function hooksRecorded(h: Harness, repositoryId: string, count: number): Promise<void> {
    const deadline = performance.now() + 30_000;
    while ((await attachmentOf(h, org, repositoryId)).hooks.length < count) {
      if (performance.now() > deadline) throw new Error(`repository ${repositoryId} did not get ${count} recorded hooks in 30 s`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  it.each([
    ['gitlab', 'gitlab listed more than 20 pages of hooks of one repository', 20],
    ['bitbucket', 'bitbucket listed more than 2,000 hooks of one repository', 3],
  ] as const)('%s: a hook listing that never ends fails the attach at the cap, once, not retried, with the reason', async (provider, reason, calls) => {
    // Before the caps, the listing collected pages (+508 MiB in 15 s at Bitbucket) until the step's timeout, then again on each retry.
    const world = worlds[provider];
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    world.listHooksEndlessly!(true);
    try {
      const started = performance.now();
      const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
      const { failure } = await outcomeOf(h, workflowId);
      console.log(`${provider}: attach failed ${Math.round(performance.now() - started)} ms after it was asked for`);
      expect(failure?.type).toBe('RepositoryAttachFailed');
      expect(failure?.message).toContain(`ProviderListingTooLong: ${reason}: forgelink caps a listing there`);
      // Two listings, each ended at the cap in one attempt: the ensure step's, and its undo's, which looks for a hook to remove.
      expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.list)).toHaveLength(2 * calls);
      expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.create)).toHaveLength(0);
    } finally {
      world.listHooksEndlessly!(false);
    }
  });

  it('Azure DevOps: the three subscriptions are created at once; one refused for good, the two others are removed, none left behind; the run failed typed', async () => {
    const world = worlds['azure-devops'];
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    // git.push and git.pullrequest.updated are stored and their answers held until all three
    // creations have arrived: one after another, the second would never be sent.
    const holds = [manualHold(), manualHold()];
    let arrived = 0;
    let nextHold = 0;
    let allArrived!: () => void;
    const allThree = new Promise<void>((resolve) => (allArrived = resolve));
    world.proxy.fault = (request) => {
      if (!world.isCreate(request)) return undefined;
      if (++arrived === 3) allArrived();
      if ((JSON.parse(request.body) as { eventType: string }).eventType === 'git.pullrequest.created') return world.refusal;
      return holds[nextHold++]!.fault;
    };
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    await allThree;
    await Promise.all(holds.map((hold) => hold.held));
    for (const hold of holds) hold.release('answer');
    const { failure } = await outcomeOf(h, workflowId);

    expect(failure?.type).toBe('RepositoryAttachFailed');
    expect(failure?.message).toContain('ProviderRejectedRequest: azure-devops answered 400: Invalid value');
    const creations = createCalls(world, from);
    expect(creations.map((c) => (c.body as { eventType: string }).eventType).sort()).toEqual(['git.pullrequest.updated', 'git.push']);
    // Both stored subscriptions were deleted; nothing of this attach is left at the provider or in our records.
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.delete).map((c) => c.status)).toEqual([204, 204]);
    expect(repo.hooks()).toEqual([]);
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment).toMatchObject({ status: 'failed', hooks: [], reason: expect.stringContaining('azure-devops answered 400') });
    // A new run's one patch marker (workflows/attach.ts attachAsPatched); its steps inside the
    // workflow task, the three undos as activities (one workflow task each), the failure's record: 32 events.
    const events = await historyEvents(h.client, workflowId);
    expect(patchesOf(events)).toEqual(['attach-one-patch']);
    expect(localStepsOf(events).map((step) => step.activityType).sort()).toEqual(['beginAttachment', 'ensureHook', 'ensureHook', 'ensureHook', 'failAttachment', 'verifyRepository']);
    expect(events).toHaveLength(32);
    await recordHistory(h.client, workflowId, 'repository-attach-azure-devops-one-patch-refused');
  });

  it('Azure DevOps: compensation runs in reverse order; a compensation that fails is logged and recorded, never rethrown', async () => {
    const world = worlds['azure-devops'];
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    let deletes = 0;
    world.proxy.fault = (request) => {
      // git.pullrequest.updated, the last of the set, is refused for good.
      if (world.isCreate(request)) return (JSON.parse(request.body) as { eventType: string }).eventType === 'git.pullrequest.updated' ? world.refusal : undefined;
      // The first compensation (of git.pullrequest.created) is refused for good.
      if (request.method === 'DELETE' && ++deletes === 1) return { kind: 'answer', status: 403, body: JSON.stringify({ message: 'TF400813: not authorized to delete the subscription' }) };
      return undefined;
    };
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(failure?.type).toBe('RepositoryAttachFailed');
    const created = createCalls(world, from).filter((c) => c.status === 200);
    expect(created.map((c) => (c.body as { eventType: string }).eventType).sort()).toEqual(['git.pullrequest.created', 'git.push']);
    // Undone in reverse order of the set: git.pullrequest.updated (nothing to delete), git.pullrequest.created (refused), then git.push (deleted).
    const [leftover] = repo.hooks();
    expect(repo.hooks()).toHaveLength(1);
    expect(leftover!.events).toEqual(['git.pullrequest.created']);
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment.status).toBe('failed');
    expect(attachment.reason).toContain('could not remove hook git.pullrequest.created');
    // Still recorded, so a detach removes it.
    expectRecorded(attachment, [leftover!]);

    world.proxy.fault = () => undefined;
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'))).result?.status).toBe('detached');
    expect(repo.hooks()).toEqual([]);
  });

  it.each(['gitlab', 'bitbucket'] as const)('%s: a permanent refusal of the hook leaves no hook and the attachment failed', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    world.proxy.fault = onCreation(world, 1, world.refusal);
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    expect(failure?.type).toBe('RepositoryAttachFailed');
    expect(repo.hooks()).toEqual([]);
    expect(await attachmentOf(h, org, repo.repositoryId)).toMatchObject({ status: 'failed', hooks: [], reason: expect.stringMatching(/ProviderRejectedRequest: \S+ answered (400|422)/) });
  });

  it.each(HOOK_PROVIDERS)('%s: a failed re-attach of an attached repository keeps it attached and routed on its hooks, with the failure as its reason', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const hooks = expectExactHookSet(world, repo);
    // The reconcile's update of the hook in place is refused for good.
    world.proxy.fault = (request) => (request.method === 'PUT' || request.method === 'PATCH' ? world.refusal : undefined);
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(failure?.type).toBe('RepositoryAttachFailed');
    expect(expectExactHookSet(world, repo).map((hook) => hook.id)).toEqual(hooks.map((hook) => hook.id));
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment).toMatchObject({ status: 'attached', reason: expect.stringContaining('ProviderRejectedRequest') });
    expectRecorded(attachment, hooks);
    expect((await findAttachedRepositories(h.db, provider, [repo.externalId], { connectionId: world.connectionId })).map((r) => r.repositoryId)).toEqual([repo.repositoryId]);

    // The next reconcile that works clears the reason.
    world.proxy.fault = () => undefined;
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect((await attachmentOf(h, org, repo.repositoryId)).reason).toBeUndefined();
  });

  it.each(HOOK_PROVIDERS)('%s: transient 503 and 429 (Retry-After) on every call still end with exactly the hook set', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    world.proxy.fault = failEachRequestOnce([
      { kind: 'answer', status: 503, body: JSON.stringify({ message: 'Service Unavailable' }) },
      { kind: 'answer', status: 429, headers: { 'retry-after': '1' }, body: JSON.stringify({ message: 'Too Many Requests' }) },
    ]);
    const seenBefore = world.proxy.requests.length;
    const from = world.server.calls.length;
    const { result } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(result?.status).toBe('attached');
    const hooks = expectExactHookSet(world, repo);
    expect(createCalls(world, from)).toHaveLength(world.hookSet.length);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
    // Every request that reached the provider had first been refused once.
    const seen = world.proxy.requests.slice(seenBefore).map((r) => `${r.method} ${r.url} ${r.body}`);
    for (const request of new Set(seen)) expect(seen.filter((s) => s === request).length, request).toBeGreaterThanOrEqual(2);
  });

  it.each(HOOK_PROVIDERS)('%s: an answer lost after the provider stored the hook is adopted on retry, never duplicated', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    // The last creation to arrive (Azure DevOps creates its three at once).
    world.proxy.fault = onCreation(world, world.hookSet.length, { kind: 'lose-answer' });
    const from = world.server.calls.length;
    const { result } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(result?.status).toBe('attached');
    const hooks = expectExactHookSet(world, repo);
    expect(createCalls(world, from)).toHaveLength(world.hookSet.length);
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.update)).toHaveLength(1);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
  });

  it.each(HOOK_PROVIDERS)('%s: the worker stopped right after a hook was stored; a new worker ends with exactly the hook set', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    const hold = manualHold();
    world.proxy.fault = onCreation(world, world.hookSet.length, hold.fault);
    const from = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');

    // The provider has stored the hook; its answer has not reached the activity. The others of
    // the set (Azure DevOps) were created beside it: wait until they are recorded.
    await hold.held;
    await hooksRecorded(h, repo.repositoryId, world.hookSet.length - 1);
    expect(repo.hooks()).toHaveLength(world.hookSet.length);
    expect((await attachmentOf(h, org, repo.repositoryId)).hooks).toHaveLength(world.hookSet.length - 1);
    // Stop the worker with the creation in flight; the connection dies with it.
    const restarting = h.restartWorker();
    hold.release('drop');
    await restarting;

    const { result } = await outcomeOf(h, workflowId);
    expect(result?.status).toBe('attached');
    const hooks = expectExactHookSet(world, repo);
    expect(createCalls(world, from)).toHaveLength(world.hookSet.length);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
  });

  it.each([
    ['never acts on it (the client had gone)', false],
    ['stores it late, after the undo listed', true],
  ] as const)(
    'GitLab: an attach cancelled while a hook creation is on its way undoes once the step has ended; the provider %s: no hook stays (a late one swept by the nightly pass)',
    { timeout: 120_000 },
    async (_how, late) => {
      const world = worlds.gitlab;
      const repository = await world.newRepository();
      const creation = heldRequest({ forwardWhenClientGone: late });
      world.proxy.fault = onCreation(world, 1, creation.fault);
      const workflowId = await requestAttachment(h, org, repository.repositoryId, 'PUT');
      await creation.held;

      await h.client.workflow.getHandle(workflowId).cancel();
      // The run ends (its undo done) without the creation released: the step stopped waiting for it.
      expect((await outcomeOf(h, workflowId)).result).toBeUndefined();
      // The nightly pass below starts a later run of the repository's workflow: this one is named by its run id.
      const { runId } = await h.client.workflow.getHandle(workflowId).describe();
      // The provider had the whole request: it acts on it now, or not at all.
      expect(await creation.release()).toBe(late);
      const attachment = await attachmentOf(h, org, repository.repositoryId);
      expect(attachment.status).toBe('failed');
      expect(attachment.hooks).toEqual([]);
      // The undo listed before the provider stored it: the late hook is there, unrecorded, until the
      // nightly hook-health pass sweeps the repository (an hour after the failure).
      expect(repository.hooks()).toHaveLength(late ? 1 : 0);
      await agePastSweepDelay(h, repository.repositoryId);
      await runHookHealth(h, org);
      expect(repository.hooks()).toEqual([]);
      expect((await attachmentOf(h, org, repository.repositoryId)).status).toBe('failed');
      if (!late) await recordHistory(h.client, workflowId, 'repository-attach-gitlab-cancelled-mid-creation', runId);

      // The undo (removeHook) was scheduled only after the step creating the hook had ended: the
      // step runs inside the workflow task, and its marker is recorded once it has ended (cancelled).
      const events = (await h.client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? [];
      const removeScheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'removeHook');
      const ensureEnded = localStepsOf(events).find((step) => step.activityType === 'ensureHook')?.event;
      expect(ensureEnded, 'the ensureHook step ended in the run').toBeDefined();
      expect(ensureEnded!.markerRecordedEventAttributes?.failure?.canceledFailureInfo ?? ensureEnded!.markerRecordedEventAttributes?.failure?.cause?.canceledFailureInfo, 'the step ended cancelled').toBeDefined();
      expect(removeScheduled, 'the undo ran').toBeDefined();
      expect(Number(ensureEnded!.eventId)).toBeLessThan(Number(removeScheduled!.eventId));
    },
  );
});
