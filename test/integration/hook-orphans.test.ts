import { describe, expect, it } from 'vitest';
import { AttachmentFailureTypes } from '../../workflows/contract.ts';
import {
  attachmentOf,
  deliveryUrlOf,
  expectExactHookSet,
  expectRecorded,
  HOOK_PROVIDERS,
  outcomeOf,
  requestAttachment,
  seedConnection,
  seedRepository,
  useHookWorlds,
  type HookProvider,
  type HookWorld,
  type Org,
  type WorldRepository,
} from '../support/attachments.ts';
import { createOrgWithToken, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';

/**
 * Hooks left delivering with nobody's record of them, or deleted while wanted (from the hook-
 * lifecycle review, branch rev-hooks): a re-attach saves a recorded hook whose URL drifted back in
 * place instead of forgetting it beside a new one; a detach of a stale Bitbucket row never sweeps the
 * hooks of the repository that took its name.
 */
describe('hooks never orphaned, never swept from another repository', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  /** Points hook `hookId` at `url` at the provider, keeping the rest of it (as someone editing it, or an older publicUrl, left it). */
  async function pointElsewhere(world: HookWorld, repo: WorldRepository, hookId: string, url: string): Promise<void> {
    let res: Response;
    if (world.provider === 'gitlab') {
      res = await fetch(`${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks/${hookId}`, {
        method: 'PUT',
        headers: { 'private-token': world.credential, 'content-type': 'application/json' },
        body: JSON.stringify({ url, token: world.webhook.secret }),
      });
    } else if (world.provider === 'bitbucket') {
      const [projectKey, slug] = repo.fullName.split('/');
      res = await fetch(`${world.proxy.url}/rest/api/latest/projects/${projectKey}/repos/${slug}/webhooks/${hookId}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${world.credential}`, 'content-type': 'application/json' },
        body: JSON.stringify({ url }),
      });
    } else {
      const subscription = `${world.proxy.url}/contoso/_apis/hooks/subscriptions/${hookId}?api-version=7.1`;
      const headers = { authorization: `Basic ${Buffer.from(`:${world.credential}`).toString('base64')}`, 'x-tfs-fedauthredirect': 'Suppress', 'content-type': 'application/json' };
      const current = (await (await fetch(subscription, { headers })).json()) as { consumerInputs: Record<string, string> };
      res = await fetch(subscription, { method: 'PUT', headers, body: JSON.stringify({ ...current, consumerInputs: { ...current.consumerInputs, url } }) });
    }
    expect(res.status, await res.clone().text()).toBe(200);
  }

  it.each(HOOK_PROVIDERS)('%s: a re-attach saves a recorded hook whose delivery URL drifted back in place (no second hook, none forgotten); a detach then leaves none', async (provider) => {
    const world = worlds[provider];
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const made = expectExactHookSet(world, repo);
    // Azure DevOps: one subscription of the three drifts; the others stay at our URL.
    const drifted = made.find((hook) => provider !== 'azure-devops' || hook.events[0] === 'git.pullrequest.updated')!;
    const oldUrl = deliveryUrlOf(provider, world.connectionId).replace('https://forgelink.test', 'https://old-forgelink.test');
    expect(oldUrl).not.toBe(deliveryUrlOf(provider, world.connectionId));
    await pointElsewhere(world, repo, drifted.id, oldUrl);
    expect(repo.hooks().find((hook) => hook.id === drifted.id)?.url).toBe(oldUrl);

    // Attaching again reconciles: the recorded hook is ours wherever it points, so it is updated (as the hook-health check does).
    const again = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    expect(again.result?.status).toBe('attached');
    const after = expectExactHookSet(world, repo);
    const ids = (hooks: { id: string }[]) => hooks.map((hook) => hook.id).sort();
    expect(ids(after)).toEqual(ids(made));
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), after);
    // And once more: a retry or a further reconcile never makes a copy.
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect(ids(expectExactHookSet(world, repo))).toEqual(ids(made));

    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect((await attachmentOf(h, org, repo.repositoryId)).status).toBe('detached');
    expect(repo.hooks()).toEqual([]);
  });

  it('GitLab: of two hooks recorded for the one hook of the set, both drifted, the re-attach keeps one and deletes the other (never only forgets it)', async () => {
    const world = worlds.gitlab;
    const repo = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [made] = expectExactHookSet(world, repo);
    const oldUrl = deliveryUrlOf('gitlab', world.connectionId).replace('https://forgelink.test', 'https://old-forgelink.test');
    await pointElsewhere(world, repo, made!.id, oldUrl);
    // A second recorded hook of the same key, at the old URL too (as a run under the old publicUrl could leave it).
    const res = await fetch(`${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks`, {
      method: 'POST',
      headers: { 'private-token': world.credential, 'content-type': 'application/json' },
      body: JSON.stringify({ url: oldUrl, push_events: true, token: world.webhook.secret }),
    });
    expect(res.status).toBe(201);
    const second = String(((await res.json()) as { id: number }).id);
    const { id: attachmentId } = await h.db.selectFrom('attachments').select('id').where('repository_id', '=', repo.repositoryId).executeTakeFirstOrThrow();
    await h.db.insertInto('hooks').values({ attachment_id: attachmentId, provider_hook_id: second, events: JSON.stringify(['push_events']), credential_version: world.webhook.version }).execute();
    expect(repo.hooks()).toHaveLength(2);

    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const after = expectExactHookSet(world, repo);
    expect([made!.id, second]).toContain(after[0]!.id);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), after);

    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(repo.hooks()).toEqual([]);
  });

  it('GitLab: a recorded legacy hook another organization still records is not taken over by a re-attach: its own hook is made beside it', async () => {
    const world = worlds.gitlab;
    const repo = await world.newRepository();
    const created = await createOrgWithToken(h);
    const second: Org = { id: created.org.id, slug: created.org.slug, token: created.token };
    const connectionId = await seedConnection(h, { organizationId: second.id, provider: 'gitlab', baseUrl: world.proxy.url, secret: world.credential });
    const sameProject = await seedRepository(h, { organizationId: second.id, connectionId, provider: 'gitlab', externalId: repo.externalId, fullName: repo.fullName });
    // What the previous release left: one hook at the bare URL with the global secret, recorded on both attachments.
    const legacyUrl = `${TEST_PUBLIC_URL}/api/events-handler/v1/events/gitlab`;
    const res = await fetch(`${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks`, {
      method: 'POST',
      headers: { 'private-token': world.credential, 'content-type': 'application/json' },
      body: JSON.stringify({ url: legacyUrl, push_events: true, token: 'global-secret' }),
    });
    const legacy = String(((await res.json()) as { id: number }).id);
    for (const [organizationId, repositoryId] of [[org.id, repo.repositoryId], [second.id, sameProject]] as const) {
      const attachment = await setAttachmentStatus(h.db, { organizationId, repositoryId, status: 'attached' });
      await h.db.insertInto('hooks').values({ attachment_id: attachment, provider_hook_id: legacy, events: JSON.stringify(['push_events']), credential_version: null }).execute();
    }

    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect(repo.hooks().find((hook) => hook.id === legacy)).toMatchObject({ url: legacyUrl, secret: 'global-secret' });
    const own = repo.hooks().filter((hook) => hook.id !== legacy);
    expect(own).toEqual([expect.objectContaining({ url: deliveryUrlOf('gitlab', world.connectionId), secret: world.webhook.secret })]);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), own);
    expect((await attachmentOf(h, second, sameProject)).hooks.map((r) => r.providerHookId)).toEqual([legacy]);

    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'DELETE'));
    expect(repo.hooks().map((hook) => hook.id)).toEqual([legacy]);
    await outcomeOf(h, await requestAttachment(h, second, sameProject, 'DELETE'));
    expect(repo.hooks()).toEqual([]);
  });

  it("Bitbucket DC: detaching a stale row whose name another repository of the connection now has leaves that repository's hook alone", async () => {
    const world = worlds.bitbucket;
    const current = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    expect(hook).toBeDefined();
    // A row of the same connection for a repository deleted at Bitbucket whose name was then reused
    // (rows once attached are kept, and a DELETE is allowed on any row).
    const stale = await seedRepository(h, { organizationId: org.id, connectionId: world.connectionId, provider: 'bitbucket', externalId: '987654', fullName: current.fullName, project: 'CI' });

    // The sweep lists the hooks by name and finds the other repository's at the connection's URL:
    // the name is not the stale row's repository any more (getRepository by id), so it deletes none.
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, stale, 'DELETE'));
    expect(failure).toMatchObject({ type: AttachmentFailureTypes.detachFailed, message: expect.stringContaining('HookPresenceUnknown') });
    expect(failure?.message).toContain(`no repository ${current.fullName} with id 987654`);
    expect(current.hooks()).toEqual([hook]);
    const attachment = await attachmentOf(h, org, current.repositoryId);
    expect(attachment.status).toBe('attached');
    expect(attachment.hooks.map((r) => r.providerHookId)).toEqual([hook!.id]);

    await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'DELETE'));
    expect(current.hooks()).toEqual([]);
  });
});
