import { describe, expect, it } from 'vitest';
import { failEachRequestOnce, manualHold, type ProxiedRequest, type ProxyFault } from '../support/flaky-proxy.ts';
import {
  attachmentOf,
  expectExactHookSet,
  expectRecorded,
  HOOK_WORLDS,
  outcomeOf,
  requestAttachment,
  HOOK_PROVIDERS,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { findAttachedRepositories } from '../../lib/db/repositories/events.ts';

/**
 * Attach under faults: permanent refusals (the saga removes what it made), transient 5xx/429 on
 * every call, an answer lost after the provider stored the hook, and the worker stopped with a
 * creation in flight. After each, the fake holds exactly the hooks the scenario demands.
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

  it('Azure DevOps: a permanent refusal of the 2nd of 3 subscriptions leaves none, the attachment failed with the reason, the run failed typed', async () => {
    const world = worlds['azure-devops'];
    const repo = await world.newRepository();
    world.proxy.fault = onCreation(world, 2, world.refusal);
    const from = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    const { failure } = await outcomeOf(h, workflowId);

    expect(failure?.type).toBe('RepositoryAttachFailed');
    expect(failure?.message).toContain('ProviderRejectedRequest: azure-devops answered 400: Invalid value');
    expect(repo.hooks()).toEqual([]);
    // Created one (git.push), refused the second, never tried the third, deleted the first.
    expect(createCalls(world, from).map((c) => (c.body as { eventType: string }).eventType)).toEqual(['git.push']);
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.delete).map((c) => c.status)).toEqual([204]);
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment).toMatchObject({ status: 'failed', hooks: [], reason: expect.stringContaining('azure-devops answered 400') });
  });

  it('Azure DevOps: compensation runs in reverse order; a compensation that fails is logged and recorded, never rethrown', async () => {
    const world = worlds['azure-devops'];
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    let deletes = 0;
    const onThird = onCreation(world, 3, world.refusal);
    world.proxy.fault = (request) => {
      if (world.isCreate(request)) return onThird(request);
      // The first compensation (of git.pullrequest.created) is refused for good.
      if (request.method === 'DELETE' && ++deletes === 1) return { kind: 'answer', status: 403, body: JSON.stringify({ message: 'TF400813: not authorized to delete the subscription' }) };
      return undefined;
    };
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(failure?.type).toBe('RepositoryAttachFailed');
    const created = createCalls(world, from).filter((c) => c.status === 200);
    expect(created.map((c) => (c.body as { eventType: string }).eventType)).toEqual(['git.push', 'git.pullrequest.created']);
    // git.pullrequest.created was undone first (refused), then git.push (deleted).
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
    // The last hook of the set: for Azure DevOps the two before it are already recorded.
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

    // The provider has stored the hook; its answer has not reached the activity.
    await hold.held;
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
});
