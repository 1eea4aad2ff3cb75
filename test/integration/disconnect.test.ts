import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findAttachedRepositories } from '../../lib/db/repositories/events.ts';
import { markConnectionDisconnected } from '../../lib/db/repositories/connections.ts';
import { DisconnectFailureTypes, workflowIds } from '../../workflows/contract.ts';
import { expectExactHookSet, gitlabWorld, outcomeOf, requestAttachment, seedConnection, seedRepository, signalReceived, type HookWorld, type Org, type WorldRepository } from '../support/attachments.ts';
import { manualHold } from '../support/flaky-proxy.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

/**
 * Disconnect when not everything detaches: the credential stays while hooks it could remove remain,
 * the connection and the run say so, and DELETE runs it again (after a failed or a terminated run);
 * `force` gives the hooks up, says which, and leaves nothing routed.
 */
describe('disconnect loose ends', () => {
  let h: Harness;
  let org: Org;
  let world: HookWorld;

  beforeAll(async () => {
    h = await startHarness();
    const created = await createOrgWithToken(h);
    org = { id: created.org.id, slug: created.org.slug, token: created.token };
  });
  afterAll(async () => {
    await h?.close();
  });

  async function newWorld() {
    world = await gitlabWorld(h, org);
    return world;
  }
  async function attached(): Promise<WorldRepository> {
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expectExactHookSet(world, repo);
    return repo;
  }
  /** Every hook deletion on this repository's project is refused for good. */
  const refuseDeletesOf = (repo: WorldRepository) => {
    world.proxy.fault = (request) =>
      request.method === 'DELETE' && request.url.includes(`/projects/${repo.externalId}/hooks`) ? { kind: 'answer', status: 403, body: JSON.stringify({ message: '403 Forbidden' }) } : undefined;
  };
  async function disconnect(query = ''): Promise<string> {
    const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}${query}`, { token: org.token });
    expect(res.status, await res.clone().text()).toBe(202);
    return ((await res.json()) as { workflowId: string }).workflowId;
  }
  async function failureOf(workflowId: string) {
    const error = await resultOf(h, workflowId).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(WorkflowFailedError);
    const cause = (error as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    return cause as ApplicationFailure;
  }
  const connectionRow = () => h.db.selectFrom('connections').select(['status', 'credential', 'reason', 'disconnect_requested_at']).where('id', '=', world.connectionId).executeTakeFirstOrThrow();

  it('a repository that cannot be detached keeps the credential: the run fails saying which, and DELETE again finishes once the provider lets it', async () => {
    await newWorld();
    try {
      const stuck = await attached();
      const fine = await attached();
      refuseDeletesOf(stuck);
      const workflowId = await disconnect();
      const failure = await failureOf(workflowId);
      expect(failure.type).toBe(DisconnectFailureTypes.incomplete);
      expect(failure.message).toContain(stuck.repositoryId);
      await recordHistory(h.client, workflowId, 'disconnect-incomplete');

      // The hooks that remain can still be removed: the credential is kept, and the connection says why.
      const row = await connectionRow();
      expect(row).toMatchObject({ status: 'active', credential: expect.any(String), reason: expect.stringMatching(/disconnect incomplete: 1 of 2 repositories could not be detached/) });
      const connection = await h.request('GET', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}`, { token: org.token });
      expect(await connection.json()).toMatchObject({ status: 'active', disconnectRequestedAt: expect.any(String), reason: expect.stringContaining(stuck.repositoryId) });
      expect(stuck.hooks()).toHaveLength(1);
      expect(fine.hooks()).toEqual([]);

      world.proxy.fault = () => undefined;
      const rerun = await disconnect();
      expect(rerun).toBe(workflowId);
      expect(await resultOf(h, rerun)).toEqual({ status: 'disconnected', detachedRepositories: 1 });
      expect(stuck.hooks()).toEqual([]);
      expect(await connectionRow()).toMatchObject({ status: 'disconnected', credential: null, reason: null });
    } finally {
      await world.close();
    }
  });

  it('a terminated disconnect runs again on DELETE', async () => {
    await newWorld();
    try {
      const repo = await attached();
      const hold = manualHold();
      world.proxy.fault = (request) => (request.method === 'DELETE' ? hold.fault : undefined);
      const workflowId = await disconnect();
      await hold.held;
      await h.client.workflow.getHandle(workflowId).terminate('operator gave up');

      world.proxy.fault = () => undefined;
      expect(await disconnect()).toBe(workflowId);
      // The new run asks the repository's run, still holding the first detach, for its own.
      await signalReceived(h, workflowIds.repository(org.id, repo.repositoryId), 'attachmentRequested', workflowId);
      hold.release('answer');
      expect(await resultOf(h, workflowId)).toEqual({ status: 'disconnected', detachedRepositories: 1 });
      expect(repo.hooks()).toEqual([]);
      expect(await connectionRow()).toMatchObject({ status: 'disconnected', credential: null });
    } finally {
      await world.close();
    }
  });

  it('force deletes the credential even so, lists the hooks that may remain, and nothing of the connection stays routed', async () => {
    await newWorld();
    try {
      const stuck = await attached();
      refuseDeletesOf(stuck);
      const workflowId = await disconnect('?force=true');
      const result = await resultOf<{ status: string; detachedRepositories: number; notDetached: { repositoryId: string; reason: string }[] }>(h, workflowId);
      expect(result).toMatchObject({ status: 'disconnected', detachedRepositories: 0, notDetached: [{ repositoryId: stuck.repositoryId, reason: expect.stringMatching(/403/) }] });
      expect(stuck.hooks()).toHaveLength(1);
      expect(await connectionRow()).toMatchObject({ status: 'disconnected', credential: null });
      // Fake GitLabs number projects alike: other tests' attachments of the same id are not this one.
      expect((await findAttachedRepositories(h.db, 'gitlab', [stuck.externalId], { connectionId: world!.connectionId })).map((r) => r.repositoryId)).not.toContain(stuck.repositoryId);
      await recordHistory(h.client, workflowId, 'disconnect-forced-with-detach-failed');
    } finally {
      await world.close();
    }
  });

  it('a connection marked disconnected leaves no attachment of it routed, whatever its state', async () => {
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: 'https://gitlab.test', secret: 'glpat-unused' });
    const externalId = String(Date.now());
    const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'gitlab', externalId, fullName: 'platform/left-attached' });
    await h.db.insertInto('attachments').values({ organization_id: org.id, repository_id: repositoryId, status: 'attached' }).execute();
    expect(await findAttachedRepositories(h.db, 'gitlab', [externalId], { connectionId })).toHaveLength(1);

    await markConnectionDisconnected(h.db, connectionId);
    expect(await findAttachedRepositories(h.db, 'gitlab', [externalId], { connectionId })).toEqual([]);
    const attachment = await h.db.selectFrom('attachments').select(['status', 'reason']).where('repository_id', '=', repositoryId).executeTakeFirstOrThrow();
    expect(attachment).toMatchObject({ status: 'failed', reason: expect.stringMatching(/hooks may remain/) });
  });
});
