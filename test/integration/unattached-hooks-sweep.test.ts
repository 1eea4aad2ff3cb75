import { describe, expect, it } from 'vitest';
import { workflowIds, type ConnectionHookHealthResult } from '../../workflows/contract.ts';
import {
  agePastSweepDelay,
  attachHeldAtCreate,
  attachmentOf,
  outcomeOf,
  requestAttachment,
  runHookHealth,
  seedRepository,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

/**
 * The nightly hook-health pass sweeps the hooks at forgelink's delivery URL off repositories that
 * are not attached, once per status: an attach left `attaching` by a terminated run, or `failed`
 * with a hook the provider stored after the undo had listed (attach-faults.test.ts, the cancelled
 * creation). It never deletes a hook an attached repository relies on.
 */
describe('hook-health pass: sweep of unattached repositories', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  const connectionResult = (world: HookWorld) =>
    h.client.workflow.getHandle(workflowIds.hookHealthConnection(org.id, world.connectionId)).result() as Promise<ConnectionHookHealthResult>;

  it('GitLab: an attach whose run an operator terminated after the hook was created is swept an hour later and marked failed, once', { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const { repository, hold, workflowId } = await attachHeldAtCreate({ h, org, world });
    await h.client.workflow.getHandle(workflowId).terminate('operator, Temporal UI');
    hold.release('drop');
    expect(repository.hooks()).toHaveLength(1);
    expect((await attachmentOf(h, org, repository.repositoryId)).status).toBe('attaching');

    // Not yet due: an attaching (or failed) status is swept once it has stood for an hour.
    await runHookHealth(h, org);
    expect(repository.hooks()).toHaveLength(1);
    expect((await attachmentOf(h, org, repository.repositoryId)).status).toBe('attaching');

    await agePastSweepDelay(h, repository.repositoryId);
    await runHookHealth(h, org);
    expect(repository.hooks()).toEqual([]);
    const attachment = await attachmentOf(h, org, repository.repositoryId);
    expect(attachment.status).toBe('failed');
    expect(attachment.reason).toMatch(/terminated/);
    expect(attachment.hooks).toEqual([]);
    expect((await connectionResult(world)).unattachedSwept).toBe(1);
    await recordHistory(h.client, workflowIds.hookHealthConnection(org.id, world.connectionId), 'hook-health-connection-swept-unattached');

    // Swept once per status: the next night asks nothing of the provider for it.
    await agePastSweepDelay(h, repository.repositoryId);
    const calls = world.server.calls.length;
    await runHookHealth(h, org);
    expect(world.server.calls.slice(calls).filter((c) => c.path.includes(`/projects/${repository.externalId}/`))).toEqual([]);

    // PUT again attaches it as usual.
    expect((await outcomeOf(h, await requestAttachment(h, org, repository.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect(repository.hooks()).toHaveLength(1);
  });

  it("Bitbucket DC: a failed row whose name another, attached repository of the connection now has is swept without touching that repository's hook", { timeout: 120_000 }, async () => {
    const world = worlds.bitbucket;
    const current = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    expect(hook).toBeDefined();
    // A row for a repository deleted at Bitbucket whose name was then reused, its attach failed.
    const stale = await seedRepository(h, { organizationId: org.id, connectionId: world.connectionId, provider: 'bitbucket', externalId: '987654', fullName: current.fullName, project: 'CI' });
    await h.db.insertInto('attachments').values({ organization_id: org.id, repository_id: stale, status: 'failed', reason: 'seeded' }).execute();
    await agePastSweepDelay(h, stale);

    const deletes = world.server.count(world.ops.delete);
    await runHookHealth(h, org);
    expect(current.hooks().map((h) => h.id)).toEqual([hook!.id]);
    expect(world.server.count(world.ops.delete)).toBe(deletes);
    expect((await attachmentOf(h, org, current.repositoryId)).status).toBe('attached');
    expect((await connectionResult(world)).unattachedSwept).toBe(1);
    const row = await h.db.selectFrom('attachments').select(['status', 'hooks_swept_at']).where('repository_id', '=', stale).executeTakeFirstOrThrow();
    expect(row.status).toBe('failed');
    expect(row.hooks_swept_at).not.toBeNull();
  });
});
