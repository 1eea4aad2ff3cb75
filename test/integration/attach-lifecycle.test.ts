import { describe, expect, it } from 'vitest';
import { manualHold, type ProxiedRequest, type ProxyFault } from '../support/flaky-proxy.ts';
import {
  attachmentOf,
  deliveryUrlOf,
  expectExactHookSet,
  expectRecorded,
  gitlabWorld,
  HOOK_WORLDS,
  outcomeOf,
  requestAttachment,
  seedConnection,
  seedRepository,
  signalReceived,
  HOOK_PROVIDERS,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import { createOrgWithToken, resultOf, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { AttachmentFailureTypes, attachmentRequested, workflowIds } from '../../workflows/contract.ts';
import { recordHistory } from '../support/histories.ts';

/**
 * An attachment over time: hooks deleted or disabled at the provider and restored by re-attach,
 * copies adopted, attach and detach of one repository serialized, detach of hooks already gone,
 * each organization's own hooks on a shared project, legacy hooks shared before, and disconnect detaching every repository first.
 */
describe('attachment lifecycle', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  /** A rule applying `fault` to the next hook creation only. */
  function onFirstCreation(world: HookWorld, fault: ProxyFault) {
    let applied = false;
    return (request: ProxiedRequest): ProxyFault | undefined => {
      if (applied || !world.isCreate(request)) return undefined;
      applied = true;
      return fault;
    };
  }
  const createCalls = (world: HookWorld, from: number) => world.server.calls.slice(from).filter((c) => c.operation === world.ops.create);

  async function attached(world: HookWorld) {
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    return { repo, hooks: expectExactHookSet(world, repo) };
  }

  it.each(HOOK_PROVIDERS)('%s: a hook deleted by hand is restored by re-attach, and the records follow', async (provider) => {
    const world = worlds[provider];
    const { repo, hooks } = await attached(world);
    const removed = hooks.at(-1)!;
    repo.deleteByHand(removed.id);
    const from = world.server.calls.length;
    const { result } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));

    expect(result?.status).toBe('attached');
    const restored = expectExactHookSet(world, repo);
    expect(createCalls(world, from).map((c) => c.status)).toEqual([world.provider === 'gitlab' ? 201 : 200]);
    expect(restored.map((hook) => hook.id)).not.toContain(removed.id);
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment.status).toBe('attached');
    expectRecorded(attachment, restored);
  });

  it('GitLab: a hook the provider disabled is re-enabled in place by re-attach', async () => {
    const world = worlds.gitlab;
    const { repo, hooks } = await attached(world);
    world.disableByProvider!(repo, hooks[0]!.id);
    expect(repo.hooks()[0]!.enabled).toBe(false);
    const from = world.server.calls.length;
    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    expect(expectExactHookSet(world, repo).map((hook) => hook.id)).toEqual([hooks[0]!.id]);
    expect(createCalls(world, from)).toHaveLength(0);
  });

  it('Azure DevOps: subscriptions disabled by the system or on probation are replaced (enabled again) by re-attach', async () => {
    const world = worlds['azure-devops'];
    const { repo, hooks } = await attached(world);
    world.disableByProvider!(repo, hooks[0]!.id, 'disabledBySystem');
    world.disableByProvider!(repo, hooks[2]!.id, 'onProbation');
    expect(repo.hooks().filter((hook) => !hook.enabled)).toHaveLength(2);
    const from = world.server.calls.length;
    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    const after = expectExactHookSet(world, repo);
    expect(after.map((hook) => hook.id).sort()).toEqual(hooks.map((hook) => hook.id).sort());
    expect(createCalls(world, from)).toHaveLength(0);
    // Replaced with our full subscription, status enabled, Basic password included.
    const replaced = world.server.calls.slice(from).filter((c) => c.operation === world.ops.update).map((c) => c.body as { status: string; consumerInputs: Record<string, string> });
    expect(replaced).toHaveLength(3);
    for (const body of replaced) expect(body).toMatchObject({ status: 'enabled', consumerInputs: { basicAuthPassword: world.webhook.secret } });
  });

  it.each(HOOK_PROVIDERS)('%s: copies of the hook set at our delivery URL are deleted, the recorded hooks kept with our secret', async (provider) => {
    const world = worlds[provider];
    const { repo, hooks } = await attached(world);
    await repo.addCopyOfHookSet();
    expect(repo.hooks()).toHaveLength(2 * world.hookSet.length);
    const from = world.server.calls.length;
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect(expectExactHookSet(world, repo).map((hook) => hook.id).sort()).toEqual(hooks.map((hook) => hook.id).sort());
    expect(createCalls(world, from)).toHaveLength(0);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
  });

  it.each(HOOK_PROVIDERS)('%s: with no record of the hooks (a crash before recording), attach adopts what is there and fixes its secret', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    await repo.addCopyOfHookSet();
    const from = world.server.calls.length;
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const hooks = expectExactHookSet(world, repo);
    expect(createCalls(world, from)).toHaveLength(0);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
  });

  it.each(HOOK_PROVIDERS)('%s: a detach sent while an attach is creating hooks runs after it and ends with no hooks', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    const hold = manualHold();
    world.proxy.fault = onFirstCreation(world, hold.fault);
    const attachId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    await hold.held;
    // Accepted means the request is in the run's history: it is queued behind the attach in flight.
    const detachId = await requestAttachment(h, org, repo.repositoryId, 'DELETE');
    expect(detachId).toBe(attachId);
    expect((await attachmentOf(h, org, repo.repositoryId)).status).toBe('attaching');
    hold.release('answer');

    expect((await outcomeOf(h, detachId)).result).toEqual({ status: 'detached', hookIds: [], requests: 2 });
    expect(repo.hooks()).toEqual([]);
    expect(await attachmentOf(h, org, repo.repositoryId)).toMatchObject({ status: 'detached', hooks: [] });
    // One run did both, in order: the attach completed before the detach began.
    const history = await h.client.workflow.getHandle(detachId).fetchHistory();
    const activities = (history.events ?? []).map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean);
    expect(activities.indexOf('completeAttachment')).toBeLessThan(activities.indexOf('beginDetachment'));
  });

  it.each(HOOK_PROVIDERS)('%s: detach succeeds when the hooks are already gone', async (provider) => {
    const world = worlds[provider];
    const { repo, hooks } = await attached(world);
    for (const hook of hooks) repo.deleteByHand(hook.id);
    const from = world.server.calls.length;
    const { result } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(result?.status).toBe('detached');
    expect(repo.hooks()).toEqual([]);
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.delete).map((c) => c.status)).toEqual(hooks.map(() => 404));
    expect(await attachmentOf(h, org, repo.repositoryId)).toMatchObject({ status: 'detached', hooks: [] });
  });

  it('GitLab: a 404 for the hook while the project itself answers 404 (access lost) is not a detach: it fails with the reason and keeps the hook recorded', async () => {
    const world = worlds.gitlab;
    const { repo, hooks } = await attached(world);
    repo.loseAccess!();
    const from = world.server.calls.length;
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));

    expect(failure).toMatchObject({ type: AttachmentFailureTypes.detachFailed, message: expect.stringContaining('HookPresenceUnknown') });
    // The hook still exists and still delivers: asked to delete, GitLab said 404.
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.delete).map((c) => c.status)).toEqual([404]);
    expect(repo.hooks().map((hook) => hook.id)).toEqual(hooks.map((hook) => hook.id));
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment).toMatchObject({ status: 'failed', reason: expect.stringMatching(/can no longer see it and the hook may still deliver/) });
    expectRecorded(attachment, hooks);
  });

  it('detach sweeps a hook at our delivery URL that was never recorded, and leaves other hooks alone', async () => {
    const world = worlds.gitlab;
    const { repo } = await attached(world);
    // Someone else's hook on the same repository, and a copy of ours our records never knew about.
    const api = `${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks`;
    const headers = { 'private-token': world.credential, 'content-type': 'application/json' };
    await fetch(api, { method: 'POST', headers, body: JSON.stringify({ url: 'https://ci.example.com/hook', push_events: true }) });
    await fetch(api, { method: 'POST', headers, body: JSON.stringify({ url: deliveryUrlOf('gitlab', world.connectionId), push_events: true }) });
    expect(repo.hooks()).toHaveLength(3);
    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(repo.hooks().map((hook) => hook.url)).toEqual(['https://ci.example.com/hook']);
  });

  it('two organizations attaching the same project each get their own hook with their own credential, and detach only their own', async () => {
    const world = worlds.gitlab;
    const { repo, hooks: [first] } = await attached(world);
    const created = await createOrgWithToken(h);
    const second: Org = { id: created.org.id, slug: created.org.slug, token: created.token };
    const connectionId = await seedConnection(h, { organizationId: second.id, provider: 'gitlab', baseUrl: world.proxy.url, secret: world.credential });
    const sameProject = await seedRepository(h, { organizationId: second.id, connectionId, provider: 'gitlab', externalId: repo.externalId, fullName: repo.fullName });

    expect((await outcomeOf(h, await requestAttachment(h, second, sameProject, 'PUT'))).result?.status).toBe('attached');
    const secondCredential = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' });
    expect(secondCredential.secret).not.toBe(world.webhook.secret);
    const own = repo.hooks().find((hook) => hook.id !== first!.id)!;
    expect(repo.hooks()).toEqual([first, { ...first, id: own.id, url: deliveryUrlOf('gitlab', connectionId), secret: secondCredential.secret }]);
    expect((await attachmentOf(h, org, repo.repositoryId)).hooks.map((r) => r.providerHookId)).toEqual([first!.id]);
    expect((await attachmentOf(h, second, sameProject)).hooks.map((r) => r.providerHookId)).toEqual([own.id]);

    // Attaching again adopts each connection's own hook, never the other's.
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.hookIds).toEqual([first!.id]);
    expect((await outcomeOf(h, await requestAttachment(h, second, sameProject, 'PUT'))).result?.hookIds).toEqual([own.id]);
    expect(repo.hooks()).toHaveLength(2);

    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(repo.hooks().map((hook) => hook.id)).toEqual([own.id]);
    await outcomeOf(h, await requestAttachment(h, second, sameProject, 'DELETE'));
    expect(repo.hooks()).toEqual([]);
  });

  it('a legacy hook two organizations shared stays while one still records it; re-attaching replaces it with its own hook', async () => {
    const world = worlds.gitlab;
    const repo = await world.newRepository();
    const created = await createOrgWithToken(h);
    const second: Org = { id: created.org.id, slug: created.org.slug, token: created.token };
    const connectionId = await seedConnection(h, { organizationId: second.id, provider: 'gitlab', baseUrl: world.proxy.url, secret: world.credential });
    const sameProject = await seedRepository(h, { organizationId: second.id, connectionId, provider: 'gitlab', externalId: repo.externalId, fullName: repo.fullName });
    // What the previous release left: one hook at the bare URL with the global secret, recorded on both attachments.
    const res = await fetch(`${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks`, {
      method: 'POST',
      headers: { 'private-token': world.credential, 'content-type': 'application/json' },
      body: JSON.stringify({ url: `${TEST_PUBLIC_URL}/api/events-handler/v1/events/gitlab`, push_events: true, token: 'global-secret' }),
    });
    const legacy = String(((await res.json()) as { id: number }).id);
    for (const [organizationId, repositoryId] of [[org.id, repo.repositoryId], [second.id, sameProject]] as const) {
      const attachment = await setAttachmentStatus(h.db, { organizationId, repositoryId, status: 'attached' });
      await h.db.insertInto('hooks').values({ attachment_id: attachment, provider_hook_id: legacy, events: JSON.stringify(['push_events']), credential_version: null }).execute();
    }

    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(repo.hooks().map((hook) => hook.id)).toEqual([legacy]);
    expect(await attachmentOf(h, org, repo.repositoryId)).toMatchObject({ status: 'detached', hooks: [] });

    expect((await outcomeOf(h, await requestAttachment(h, second, sameProject, 'PUT'))).result?.status).toBe('attached');
    const [own] = repo.hooks();
    expect(repo.hooks()).toHaveLength(1);
    expect(own).toMatchObject({ url: deliveryUrlOf('gitlab', connectionId), secret: (await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' })).secret });
    expect(await h.db.selectFrom('hooks').select(['provider_hook_id', 'credential_version']).where('provider_hook_id', 'in', [legacy, own!.id]).execute()).toEqual([{ provider_hook_id: own!.id, credential_version: 1 }]);
    await outcomeOf(h, await requestAttachment(h, second, sameProject, 'DELETE'));
  });

  it('disconnect detaches every repository of the connection first, waiting for an attach in flight, then deletes the credential', async () => {
    const world = await gitlabWorld(h, org);
    try {
      const first = await attached(world);
      const second = await attached(world);
      const failedRepo = await world.newRepository();
      world.proxy.fault = onFirstCreation(world, world.refusal);
      expect((await outcomeOf(h, await requestAttachment(h, org, failedRepo.repositoryId, 'PUT'))).failure).toBeDefined();
      const untouched = await world.newRepository();

      // An attach in flight when disconnect starts: disconnect queues its detach on the same run.
      const inFlight = await world.newRepository();
      const hold = manualHold();
      world.proxy.fault = onFirstCreation(world, hold.fault);
      const inFlightId = await requestAttachment(h, org, inFlight.repositoryId, 'PUT');
      await hold.held;

      const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}`, { token: org.token });
      expect(res.status).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      await signalReceived(h, inFlightId, 'attachmentRequested', workflowId);
      hold.release('answer');

      const result = await resultOf<{ status: string; detachedRepositories: number; notDetached?: unknown }>(h, workflowId);
      // Three attached (one in flight) and one failed attach: all detached; the never-attached one not touched.
      expect(result).toEqual({ status: 'disconnected', detachedRepositories: 4 });
      for (const repo of [first.repo, second.repo, failedRepo, inFlight, untouched]) expect(repo.hooks()).toEqual([]);
      for (const repo of [first.repo, second.repo, failedRepo, inFlight]) expect(await attachmentOf(h, org, repo.repositoryId)).toMatchObject({ status: 'detached', hooks: [] });
      // The never-attached one was only a cached row: the disconnect deleted it with the rest of the
      // connection's cache (attached ones stay, for their records), so it is no longer the organization's.
      expect((await h.request('GET', `/api/v1/orgs/${org.slug}/repositories/${untouched.repositoryId}/attachment`, { token: org.token })).status).toBe(404);
      // The in-flight run did its attach, then the detach the disconnect asked for.
      expect((await outcomeOf(h, inFlightId)).result).toEqual({ status: 'detached', hookIds: [], requests: 2 });
      const row = await h.db.selectFrom('connections').select(['status', 'credential']).where('id', '=', world.connectionId).executeTakeFirstOrThrow();
      expect(row).toEqual({ status: 'disconnected', credential: null });
      await recordHistory(h.client, workflowId, 'disconnect-with-attach-in-flight');
      await recordHistory(h.client, inFlightId, 'repository-attach-then-detach');
    } finally {
      await world.close();
    }
  });

  it('a disconnect under way takes no new attach: the API answers 409, and an attach queued past it fails without creating hooks', async () => {
    const world = await gitlabWorld(h, org);
    try {
      const first = await attached(world);
      const late = await world.newRepository();
      // The detach of the attached repository is held at the provider: the disconnect stays under way.
      const hold = manualHold();
      world.proxy.fault = (request) => (request.method === 'DELETE' ? hold.fault : undefined);
      const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}`, { token: org.token });
      expect(res.status).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      await hold.held;

      const refused = await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/${late.repositoryId}/attachment`, { token: org.token });
      expect(refused.status).toBe(409);
      expect(((await refused.json()) as { detail: string }).detail).toMatch(/being disconnected/);
      const connection = await h.request('GET', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}`, { token: org.token });
      expect(await connection.json()).toMatchObject({ status: 'active', disconnectRequestedAt: expect.any(String) });

      // An attach request that passed the API just before the disconnect began reaches the workflow anyway.
      const lateRun = workflowIds.repository(org.id, late.repositoryId);
      await h.client.workflow.signalWithStart('repositoryWorkflow', {
        taskQueue: h.taskQueue,
        workflowId: lateRun,
        args: [{ organizationId: org.id, repositoryId: late.repositoryId, pending: [] }],
        signal: attachmentRequested,
        signalArgs: [{ action: 'attach' }],
      });
      expect((await outcomeOf(h, lateRun)).failure).toMatchObject({ type: AttachmentFailureTypes.attachFailed, message: expect.stringMatching(/being disconnected/) });
      expect(late.hooks()).toEqual([]);

      hold.release('answer');
      expect(await resultOf(h, workflowId)).toEqual({ status: 'disconnected', detachedRepositories: 1 });
      expect(first.repo.hooks()).toEqual([]);
    } finally {
      await world.close();
    }
  });
});

