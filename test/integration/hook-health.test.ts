import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ConnectionHookHealthResult, HookHealthResult } from '../../workflows/contract.ts';
import { HOOK_HEALTH_ALL_WORKFLOW_ID_PREFIX, workflowIds } from '../../workflows/contract.ts';
import { ensureHookHealthSchedule } from '../../worker/schedule.ts';
import {
  attachmentOf,
  expectExactHookSet,
  expectRecorded,
  HOOK_PROVIDERS,
  outcomeOf,
  requestAttachment,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
  type WorldRepository,
} from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

interface HookHealthAnswer {
  checkedAt: string;
  status: 'healthy' | 'repaired' | 'failing';
  reason?: string;
}

/**
 * The hook-health reconcile through the real workflows (organization run → one run per connection
 * → each repository's own workflow), the real client libraries and the fake providers: drift is
 * repaired in place and reported on the attachment, a healthy set costs no write at the provider,
 * and a repository the provider no longer shows is flagged, not detached.
 */
describe('hook-health reconcile', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  async function attached(world: HookWorld): Promise<WorldRepository> {
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    return repo;
  }

  /** Runs the reconcile for the test's organization, as the Schedule's run does for all. */
  async function reconcile(): Promise<{ workflowId: string; result: HookHealthResult }> {
    const workflowId = `hook-health:${org.id}:${randomUUID()}`;
    const result = await h.client.workflow.execute('hookHealthWorkflow', {
      taskQueue: h.taskQueue,
      workflowId,
      args: [{ organizationId: org.id, connectionsAtOnce: 2 }],
    });
    return { workflowId, result: result as HookHealthResult };
  }

  const connectionResult = (world: HookWorld) =>
    h.client.workflow.getHandle(workflowIds.hookHealthConnection(org.id, world.connectionId)).result() as Promise<ConnectionHookHealthResult>;

  async function hookHealthOf(repo: WorldRepository): Promise<HookHealthAnswer | undefined> {
    return ((await attachmentOf(h, org, repo.repositoryId)) as { hookHealth?: HookHealthAnswer }).hookHealth;
  }

  /** Calls that change hooks at the provider (Azure DevOps' subscriptions query is a read). */
  const writes = (world: HookWorld) => [world.ops.create, world.ops.update, world.ops.delete].reduce((sum, op) => sum + world.server.count(op), 0);

  it('repairs a deleted hook, one GitLab disabled, one Bitbucket hook switched off and an Azure DevOps subscription on probation, and says so', async () => {
    const gitlabDeleted = await attached(worlds.gitlab);
    const gitlabDisabled = await attached(worlds.gitlab);
    const bitbucketOff = await attached(worlds.bitbucket);
    const probation = await attached(worlds['azure-devops']);
    const healthy = await attached(worlds['azure-devops']);

    const deletedId = gitlabDeleted.hooks()[0]!.id;
    gitlabDeleted.deleteByHand(deletedId);
    worlds.gitlab.disableByProvider!(gitlabDisabled, gitlabDisabled.hooks()[0]!.id);
    worlds.bitbucket.disableByProvider!(bitbucketOff, bitbucketOff.hooks()[0]!.id);
    const push = probation.hooks().find((hook) => hook.events[0] === 'git.push')!;
    worlds['azure-devops'].disableByProvider!(probation, push.id, 'onProbation');
    const before = new Date();

    const { workflowId, result } = await reconcile();
    expect(result).toEqual({ connections: 3, alreadyRunning: 0, failed: 0, failures: [] });
    expect(await connectionResult(worlds.gitlab)).toEqual({ healthy: 0, repaired: 2, failing: 0, failures: [], unattachedSwept: 0 });
    expect(await connectionResult(worlds.bitbucket)).toEqual({ healthy: 0, repaired: 1, failing: 0, failures: [], unattachedSwept: 0 });
    expect(await connectionResult(worlds['azure-devops'])).toEqual({ healthy: 1, repaired: 1, failing: 0, failures: [], unattachedSwept: 0 });

    // Every hook set is complete, enabled, on our URL, events and secret; the records follow the provider.
    for (const [world, repo] of [
      [worlds.gitlab, gitlabDeleted],
      [worlds.gitlab, gitlabDisabled],
      [worlds.bitbucket, bitbucketOff],
      [worlds['azure-devops'], probation],
      [worlds['azure-devops'], healthy],
    ] as const) {
      const answer = await attachmentOf(h, org, repo.repositoryId);
      expect(answer.status).toBe('attached');
      expectRecorded(answer, expectExactHookSet(world, repo));
      expect(Date.parse((await hookHealthOf(repo))!.checkedAt)).toBeGreaterThanOrEqual(before.getTime() - 1000);
    }
    expect(gitlabDeleted.hooks()[0]!.id).not.toBe(deletedId);
    // Repaired in place: the disabled ones keep their ids.
    expect(probation.hooks().find((hook) => hook.events[0] === 'git.push')!.id).toBe(push.id);

    expect(await hookHealthOf(gitlabDeleted)).toMatchObject({ status: 'repaired', reason: 'project-hook re-created (missing)' });
    expect(await hookHealthOf(gitlabDisabled)).toMatchObject({ status: 'repaired', reason: 'project-hook updated (alert_status disabled)' });
    expect(await hookHealthOf(bitbucketOff)).toMatchObject({ status: 'repaired', reason: 'repository-webhook updated (active false)' });
    expect(await hookHealthOf(probation)).toMatchObject({ status: 'repaired', reason: 'git.push updated (status onProbation)' });
    expect(await hookHealthOf(healthy)).toEqual({ status: 'healthy', checkedAt: expect.any(String) });

    await recordHistory(h.client, workflowId, 'hook-health-organization');
    await recordHistory(h.client, workflowIds.hookHealthConnection(org.id, worlds.gitlab.connectionId), 'hook-health-connection-repaired');
    await recordHistory(h.client, workflowIds.repository(org.id, gitlabDeleted.repositoryId), 'repository-reconcile-repaired');
  });

  it('makes no write call at any provider when every hook set is healthy', async () => {
    // The sets the previous test repaired, plus a fresh one per provider.
    const fresh = await Promise.all(HOOK_PROVIDERS.map(async (provider) => [worlds[provider], await attached(worlds[provider])] as const));
    const writesBefore = HOOK_PROVIDERS.map((provider) => writes(worlds[provider]));
    const listsBefore = HOOK_PROVIDERS.map((provider) => worlds[provider].server.count(worlds[provider].ops.list));

    const { result } = await reconcile();
    expect(result.failed).toBe(0);
    expect(HOOK_PROVIDERS.map((provider) => writes(worlds[provider]))).toEqual(writesBefore);
    // It did look: each provider's hooks were listed.
    HOOK_PROVIDERS.forEach((provider, i) => expect(worlds[provider].server.count(worlds[provider].ops.list)).toBeGreaterThan(listsBefore[i]!));
    for (const provider of HOOK_PROVIDERS) expect((await connectionResult(worlds[provider])).repaired).toBe(0);
    for (const [, repo] of fresh) expect(await hookHealthOf(repo)).toMatchObject({ status: 'healthy' });
  });

  it('flags a repository the provider no longer shows, and leaves it attached', async () => {
    const world = worlds.gitlab;
    const repo = await attached(world);
    const hooksBefore = repo.hooks();
    world.removeAtProvider(repo);

    await reconcile();
    const answer = (await attachmentOf(h, org, repo.repositoryId)) as Awaited<ReturnType<typeof attachmentOf>> & { repositoryVanished: boolean; hookHealth?: HookHealthAnswer };
    expect(answer.status).toBe('attached');
    expect(answer.repositoryVanished).toBe(true);
    expect(answer.hooks.map((hook) => hook.providerHookId)).toEqual(hooksBefore.map((hook) => hook.id));
    expect(answer.hookHealth).toMatchObject({ status: 'failing', reason: expect.stringContaining('no longer shows') });
    expect((await connectionResult(world)).failures).toEqual([{ repositoryId: repo.repositoryId, reason: expect.stringContaining('flagged vanished, not detached') }]);
  });

  it('registers the Schedule with the configured spec and connection concurrency', async () => {
    const scheduleId = `test-hook-health-${randomUUID()}`;
    const settings = { cron: '0 4 * * *', timeZone: 'UTC', taskQueue: h.taskQueue, scheduleId, connectionsAtOnce: 3 };
    expect(await ensureHookHealthSchedule(h.client, settings)).toBe('created');
    expect(await ensureHookHealthSchedule(h.client, { ...settings, cron: '15 5 * * *', connectionsAtOnce: 6 })).toBe('updated');
    const description = await h.client.schedule.getHandle(scheduleId).describe();
    expect(JSON.stringify(description.spec)).toContain('"minute":[{"start":15');
    expect(description.action).toMatchObject({ workflowType: 'hookHealthWorkflow', workflowId: HOOK_HEALTH_ALL_WORKFLOW_ID_PREFIX, taskQueue: h.taskQueue, args: [{ connectionsAtOnce: 6 }] });
    expect(description.policies.overlap).toBe('SKIP');
    await h.client.schedule.getHandle(scheduleId).delete();
  });
});
