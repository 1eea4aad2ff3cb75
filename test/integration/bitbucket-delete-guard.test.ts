import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, it } from 'vitest';
import { createHookActivities } from '../../activities/hooks.ts';
import { createAnswerBudget } from '../../activities/providers/answer-budget.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';
import { createLogger } from '../../lib/logger.ts';
import { createWorkerMetrics, type WorkerMetrics } from '../../lib/metrics.ts';
import { heldRequest, type ProxiedRequest } from '../support/flaky-proxy.ts';
import { attachmentOf, outcomeOf, requestAttachment, useHookWorlds, type HookProvider, type HookWorld, type Org, type WorldRepository } from '../support/attachments.ts';
import { TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { refreshOrganization } from '../support/listing.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * Bitbucket DC addresses a repository by its name, which another repository takes once the first
 * is deleted (or renamed), and the connection's delivery URL is shared by all its repositories: a
 * listing under the name of a repository deleted and recreated lists the new one's hooks at our
 * URL. Every deletion at Bitbucket goes through the adapter's guard (the name looked up, its id
 * compared with the recorded one, before any DELETE): the attach's undo (removeHook) and the
 * ensure's deletion of duplicates leave the new repository's hooks alone. Real adapter, fake
 * Bitbucket over HTTP; the steps run as the worker runs them.
 */
describe('Bitbucket DC: no deletion reaches the repository that took a deleted one\'s name', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  const hookActivities = (metrics?: WorkerMetrics) =>
    createHookActivities({
      metrics,
      db: h.db,
      keys: h.keys,
      providers: createProviderFactory({ outbound: testOutbound, answerBudget: createAnswerBudget({ limit: 64 * 1024 * 1024, perOrganization: 64 * 1024 * 1024 }) }),
      logger: createLogger('test', 'error'),
      settings: { publicUrl: TEST_PUBLIC_URL },
    });
  const asActivity = <T>(step: () => Promise<T>): Promise<T> => new MockActivityEnvironment().run(step) as Promise<T>;
  const failureOf = (promise: Promise<unknown>) => promise.then(() => undefined, (error: unknown) => error as { type?: string; nonRetryable?: boolean; message: string });
  const hookIds = (repository: WorldRepository) => repository.hooks().map((hook) => hook.id);

  /** A repository attached, its one hook at our URL. */
  async function attachedWithOneHook() {
    const world = worlds.bitbucket;
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const hooks = hookIds(repo);
    expect(hooks).toHaveLength(1);
    return { world, repo, hooks, slug: repo.fullName.split('/')[1]! };
  }

  /** `deleted` attached, then deleted at Bitbucket; a new repository under its name, attached (its hook at our URL) with a copy beside it. */
  async function nameTakenOver() {
    const world = worlds.bitbucket;
    const deleted = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, deleted.repositoryId, 'PUT'))).result?.status).toBe('attached');
    world.removeAtProvider(deleted);
    const current = await world.newRepository({ slug: deleted.fullName.split('/')[1] });
    expect(current.fullName).toBe(deleted.fullName);
    expect(current.externalId).not.toBe(deleted.externalId);
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    await current.addCopyOfHookSet();
    const hooks = hookIds(current);
    expect(hooks).toHaveLength(2);
    return { world, deleted, current, hooks };
  }

  it("the attach's undo (removeHook) deletes nothing of the name's new repository: fails for good naming both ids; once the deleted one is known deleted, ends removing nothing", async () => {
    const { deleted, current, hooks } = await nameTakenOver();
    const metrics = createWorkerMetrics();
    const activities = hookActivities(metrics);
    const key = { organizationId: org.id, repositoryId: deleted.repositoryId };
    const deletions = async () =>
      Object.fromEntries(
        (await metrics.registry.getSingleMetric('forgelink_hook_operations_total')!.get()).values
          .filter((v) => v.labels.provider === 'bitbucket' && v.labels.operation === 'delete')
          .map((v) => [v.labels.outcome, v.value]),
      );

    // Not known deleted yet (no listing since): renamed or deleted, a refresh tells.
    const failure = await failureOf(asActivity(() => activities.removeHook({ ...key, hookKey: 'repository-webhook', keepHookIds: [] })));
    expect(failure).toMatchObject({ type: 'HookPresenceUnknown', nonRetryable: true });
    expect(failure?.message).toContain(`shows no repository ${deleted.fullName} with id ${deleted.externalId}: the name is repository ${current.externalId}'s now`);
    expect(failure?.message).toContain('left alone');
    expect(hookIds(current)).toEqual(hooks);

    // The refresh finds the name's repository by its new id: the deleted one's row vanishes.
    await refreshOrganization(h, org);
    expect(await asActivity(() => activities.removeHook({ ...key, hookKey: 'repository-webhook', keepHookIds: [] }))).toEqual({ removed: [] });
    expect(hookIds(current)).toEqual(hooks);
    // The refused deletion has its own outcome: nothing was deleted or proven gone.
    expect(await deletions()).toEqual({ failed: 1, name_taken: 1 });
    const other = await attachmentOf(h, org, current.repositoryId);
    expect(other.status).toBe('attached');
    expect(hooks).toContain(other.hooks[0]?.providerHookId);
  });

  it("the ensure finding the name's new repository's hooks (a copy among them) fails RepositoryNameTaken (permanent) before its save, deleting none of them", async () => {
    const { world, deleted, current, hooks } = await nameTakenOver();
    const from = world.server.calls.length;
    const failure = await failureOf(asActivity(() => hookActivities().ensureHook({ organizationId: org.id, repositoryId: deleted.repositoryId, hookKey: 'repository-webhook' })));
    expect(failure).toMatchObject({ type: 'RepositoryNameTaken', nonRetryable: true });
    expect(failure?.message).toContain(`${deleted.fullName} is repository ${current.externalId} now, not ${deleted.externalId} as recorded`);
    expect(failure?.message).not.toContain(world.credential);
    expect(hookIds(current)).toEqual(hooks);
    // One lookup of the name for the save and the duplicates, and no save or DELETE.
    expect(world.server.calls.slice(from).filter((c) => c.operation === 'getRepo')).toHaveLength(1);
    expect(world.server.calls.slice(from).filter((c) => [world.ops.create, world.ops.update, world.ops.delete].includes(c.operation))).toEqual([]);
  });

  it("a repository renamed after its attach verified it, another created under its old name: the ensure's save is refused RepositoryNameTaken (one lookup after the listing, no POST), nothing made on the other repository or recorded on ours", async () => {
    const world = worlds.bitbucket;
    const renamed = await world.newRepository();
    const slug = renamed.fullName.split('/')[1]!;
    const key = { organizationId: org.id, repositoryId: renamed.repositoryId };
    await setAttachmentStatus(h.db, { ...key, status: 'attaching' });
    const activities = hookActivities();
    expect(await asActivity(() => activities.verifyRepository(key))).toEqual({});
    world.renameAtProvider!(renamed, `${slug}-renamed`);
    const other = await world.newRepository({ slug });
    const from = world.server.calls.length;

    const failure = await failureOf(asActivity(() => activities.ensureHook({ ...key, hookKey: 'repository-webhook' })));
    expect(failure).toMatchObject({ type: 'RepositoryNameTaken', nonRetryable: true });
    expect(failure?.message).toContain(`${renamed.fullName} is repository ${other.externalId} now, not ${renamed.externalId} as recorded`);
    expect(hookIds(other)).toEqual([]);
    expect(hookIds(renamed)).toEqual([]);
    expect((await attachmentOf(h, org, renamed.repositoryId)).hooks).toEqual([]);
    expect(world.server.calls.slice(from).map((c) => c.operation)).toEqual([world.ops.list, 'getRepo']);
  });

  it("the attach's last step (prune) on a repository known deleted, its name another's: fails RepositoryNameTaken, deleting none of the new repository's hooks and never marking the deleted one attached", async () => {
    const { deleted, current, hooks } = await nameTakenOver();
    await refreshOrganization(h, org);
    const key = { organizationId: org.id, repositoryId: deleted.repositoryId };
    // Its attach under way (the repository deleted, the name taken and the list refreshed meanwhile).
    await setAttachmentStatus(h.db, { ...key, status: 'attaching' });

    const failure = await failureOf(asActivity(() => hookActivities().pruneHooks({ ...key, keepHookIds: [], completeAttachment: true })));
    expect(failure).toMatchObject({ type: 'RepositoryNameTaken', nonRetryable: true });
    expect(failure?.message).toContain(`${deleted.fullName} is repository ${current.externalId} now, not ${deleted.externalId} as recorded`);
    expect(hookIds(current)).toEqual(hooks);
    expect((await attachmentOf(h, org, deleted.repositoryId)).status).toBe('attaching');
    expect((await attachmentOf(h, org, current.repositoryId)).status).toBe('attached');
  });

  it("a repository renamed between the name's lookup and the DELETE: the DELETE's 404 is weighed against the name looked up again, so the hook still delivering under the new name is not counted gone (the undo fails, a detach keeps its record)", async () => {
    const { world, repo, hooks, slug } = await attachedWithOneHook();
    // The rename lands as the step's first DELETE reaches Bitbucket: after the name's lookup, before the DELETE (which then answers 404).
    let renameOnDelete = true;
    world.proxy.fault = (request: ProxiedRequest) => {
      if (request.method === 'DELETE' && renameOnDelete) {
        renameOnDelete = false;
        world.renameAtProvider!(repo, `${slug}-renamed`);
      }
      return undefined;
    };
    const activities = hookActivities();
    const key = { organizationId: org.id, repositoryId: repo.repositoryId };

    const failure = await failureOf(asActivity(() => activities.removeHook({ ...key, hookKey: 'repository-webhook', keepHookIds: [] })));
    expect(failure).toMatchObject({ type: 'HookPresenceUnknown', nonRetryable: true });
    expect(failure?.message).toContain(`answered 404 for hook ${hooks[0]} and for repository ${repo.fullName} itself: the repository is gone or renamed`);
    expect(failure?.message).toContain('refresh the repository list (a renamed repository is picked up)');
    expect(renameOnDelete).toBe(false);
    expect(hookIds(repo)).toEqual(hooks);

    // Back under its old name, then renamed again during a detach's DELETE: the hook's record is kept.
    world.renameAtProvider!(repo, slug);
    renameOnDelete = true;
    const { failure: detachFailure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(detachFailure?.message).toContain('HookPresenceUnknown');
    expect(renameOnDelete).toBe(false);
    expect(hookIds(repo)).toEqual(hooks);
    expect((await attachmentOf(h, org, repo.repositoryId)).hooks.map((r) => r.providerHookId)).toEqual(hooks);
  });

  it("a name that answered 404 to the step's lookup is looked up again before the DELETE, not taken for the hook being gone: a 404 that flapped back leaves no hook delivering unasked", async () => {
    const { world, repo, hooks, slug } = await attachedWithOneHook();
    // The step's lookup of the name answers 404 once (access removed and restored, a proxy's hiccup); every later one answers the repository.
    let notFoundOnce = true;
    world.proxy.fault = (request: ProxiedRequest) => {
      if (request.method === 'GET' && notFoundOnce && new URL(request.url, 'http://x').pathname.endsWith(`/repos/${slug}`)) {
        notFoundOnce = false;
        return { kind: 'answer', status: 404, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ errors: [{ message: `Repository ${slug} does not exist.` }] }) };
      }
      return undefined;
    };
    const from = world.server.calls.length;
    const removed = await asActivity(() => hookActivities().removeHook({ organizationId: org.id, repositoryId: repo.repositoryId, hookKey: 'repository-webhook', keepHookIds: [] }));
    expect(notFoundOnce).toBe(false);
    // Deleted for real (counted before without a DELETE, the hook left delivering).
    expect(removed).toEqual({ removed: hooks });
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.delete)).toHaveLength(1);
    expect(hookIds(repo)).toEqual([]);
  });

  it("an attach cancelled while its hook's creation is held, the repository deleted and its name taken meanwhile: the undo leaves the new repository's hooks alone, and the attach's reason says the hook could not be removed", { timeout: 120_000 }, async () => {
    const world = worlds.bitbucket;
    const deleted = await world.newRepository();
    const creation = heldRequest();
    let creations = 0;
    world.proxy.fault = (request: ProxiedRequest) => (world.isCreate(request) && ++creations === 1 ? creation.fault : undefined);
    const workflowId = await requestAttachment(h, org, deleted.repositoryId, 'PUT');
    await creation.held;

    world.removeAtProvider(deleted);
    const current = await world.newRepository({ slug: deleted.fullName.split('/')[1] });
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const hooks = hookIds(current);
    expect(hooks).toHaveLength(1);

    await h.client.workflow.getHandle(workflowId).cancel();
    expect((await outcomeOf(h, workflowId)).result).toBeUndefined();
    expect(await creation.release()).toBe(false);
    expect(hookIds(current)).toEqual(hooks);
    const attachment = await attachmentOf(h, org, deleted.repositoryId);
    expect(attachment.status).toBe('failed');
    expect(attachment.reason).toContain('could not remove hook repository-webhook');
    const events = (await h.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
    const undone = events.find((e) => e.activityTaskFailedEventAttributes)?.activityTaskFailedEventAttributes?.failure;
    expect(undone?.message).toContain(`the name is repository ${current.externalId}'s now`);
    expect((await attachmentOf(h, org, current.repositoryId)).status).toBe('attached');
  });
});
