import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import {
  attachmentOf,
  azureDevOpsWorld,
  bitbucketWorld,
  deliveryUrlOf,
  expectExactHookSet,
  expectRecorded,
  gitlabWorld,
  outcomeOf,
  requestAttachment,
  seedConnection,
  seedRepository,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import { createOrgWithToken, historyText, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

/**
 * Attach and detach through the API, the repository workflow and the real client libraries
 * against each fake provider: the exact request bodies each provider documents for its hooks,
 * the hook state left at the provider, and what the API shows.
 */
describe('attach and detach per provider', () => {
  let h: Harness;
  let github: FakeGithub;
  let org: Org;
  const worlds: Partial<Record<HookWorld['provider'], HookWorld>> = {};

  beforeAll(async () => {
    github = await startFakeGithub();
    h = await startHarness({ github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem } });
    const created = await createOrgWithToken(h);
    org = { id: created.org.id, slug: created.org.slug, token: created.token };
    [worlds.gitlab, worlds.bitbucket, worlds['azure-devops']] = await Promise.all([gitlabWorld(h, org), bitbucketWorld(h, org), azureDevOpsWorld(h, org)]);
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all([github?.close(), ...Object.values(worlds).map((w) => w.close())]);
  });

  /** Bodies of the hook-creating calls the fake received since `from`. */
  const createBodies = (world: HookWorld, from: number) => world.server.calls.slice(from).filter((c) => c.operation === world.ops.create).map((c) => c.body);

  async function expectNoSecretLeaked(world: HookWorld, workflowId: string) {
    const secrets = [world.credential, world.webhook.secret];
    const history = await historyText(h, workflowId);
    const logs = h.logs.join('\n');
    const rows = JSON.stringify(await h.db.selectFrom('hooks').selectAll().execute()) + JSON.stringify(await h.db.selectFrom('attachments').selectAll().execute());
    for (const secret of secrets) {
      expect(history).not.toContain(secret);
      expect(logs).not.toContain(secret);
      expect(rows).not.toContain(secret);
    }
  }

  it('GitLab: one project hook (push, tag push, merge requests; SSL verified) whose token is the webhook secret', async () => {
    const world = worlds.gitlab!;
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    expect(workflowId).toBe(`repository:${org.id}:${repo.repositoryId}`);
    const { result } = await outcomeOf(h, workflowId);
    expect(result).toMatchObject({ status: 'attached', hookIds: [expect.any(String)] });

    // POST /projects/:id/hooks as GitLab documents it: every event flag explicit, the secret as `token`.
    expect(createBodies(world, from)).toEqual([
      {
        url: deliveryUrlOf('gitlab', world.connectionId),
        push_events: true,
        tag_push_events: true,
        merge_requests_events: true,
        issues_events: false,
        confidential_issues_events: false,
        note_events: false,
        confidential_note_events: false,
        job_events: false,
        pipeline_events: false,
        wiki_page_events: false,
        deployment_events: false,
        releases_events: false,
        feature_flag_events: false,
        resource_access_token_events: false,
        enable_ssl_verification: true,
        token: world.webhook.secret,
      },
    ]);
    const hooks = expectExactHookSet(world, repo);
    const attachment = await attachmentOf(h, org, repo.repositoryId);
    expect(attachment).toMatchObject({ status: 'attached', workflowId });
    expect(attachment).not.toHaveProperty('reason');
    expectRecorded(attachment, hooks);
    await expectNoSecretLeaked(world, workflowId);
  });

  it('Bitbucket DC: one repository webhook (refs changed; PR opened, source updated, modified, merged, declined) with the secret', async () => {
    const world = worlds.bitbucket!;
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    expect((await outcomeOf(h, workflowId)).result?.status).toBe('attached');
    expect(createBodies(world, from)).toEqual([
      {
        name: 'forgelink',
        url: deliveryUrlOf('bitbucket', world.connectionId),
        active: true,
        events: ['repo:refs_changed', 'pr:opened', 'pr:from_ref_updated', 'pr:modified', 'pr:merged', 'pr:declined'],
        configuration: { secret: world.webhook.secret },
        sslVerificationRequired: true,
      },
    ]);
    const hooks = expectExactHookSet(world, repo);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
    await expectNoSecretLeaked(world, workflowId);
  });

  it('Azure DevOps: three repository-scoped subscriptions with Basic auth, PR-updated filtered to source pushes, none global', async () => {
    const world = worlds['azure-devops']!;
    const repo = await world.newRepository();
    const from = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'PUT');
    expect((await outcomeOf(h, workflowId)).result?.hookIds).toHaveLength(3);

    const bodies = createBodies(world, from) as { publisherInputs: Record<string, string> }[];
    const projectId = bodies[0]!.publisherInputs.projectId;
    const repositoryId = bodies[0]!.publisherInputs.repository;
    expect(projectId).toMatch(/^[0-9a-f-]{36}$/);
    const consumerInputs = {
      url: deliveryUrlOf('azure-devops', world.connectionId),
      basicAuthUsername: world.webhook.basicAuthUser,
      basicAuthPassword: world.webhook.secret,
      resourceDetailsToSend: 'all',
      messagesToSend: 'none',
      detailedMessagesToSend: 'none',
    };
    const subscription = (eventType: string, filters: Record<string, string> = {}) => ({
      publisherId: 'tfs',
      eventType,
      resourceVersion: '1.0',
      consumerId: 'webHooks',
      consumerActionId: 'httpRequest',
      publisherInputs: { projectId, repository: repositoryId, ...filters },
      consumerInputs,
    });
    // POST _apis/hooks/subscriptions as the Service Hooks REST reference documents it (the three at once, in any order).
    const byEventType = (a: object, b: object) => (a as { eventType: string }).eventType.localeCompare((b as { eventType: string }).eventType);
    expect([...bodies].sort(byEventType)).toEqual(
      [subscription('git.push'), subscription('git.pullrequest.created'), subscription('git.pullrequest.updated', { notificationType: 'PushNotification' })].sort(byEventType),
    );
    const hooks = expectExactHookSet(world, repo);
    expectRecorded(await attachmentOf(h, org, repo.repositoryId), hooks);
    await expectNoSecretLeaked(world, workflowId);
    await recordHistory(h.client, workflowId, 'repository-attach-azure-devops-retries-on-timers');
  });

  it.each(['gitlab', 'bitbucket', 'azure-devops'] as const)('%s: attaching an attached repository creates nothing and keeps the same hooks', async (provider) => {
    const world = worlds[provider]!;
    const repo = await world.newRepository();
    const first = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    const before = world.server.calls.length;
    const second = await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    expect(second.result?.status).toBe('attached');
    expect([...second.result!.hookIds].sort()).toEqual([...first.result!.hookIds].sort());
    const calls = world.server.calls.slice(before);
    expect(calls.filter((c) => c.operation === world.ops.create)).toHaveLength(0);
    // Adopted hooks are saved with our settings: the secret is write-only at every provider.
    expect(calls.filter((c) => c.operation === world.ops.update)).toHaveLength(world.hookSet.length);
    expectExactHookSet(world, repo);
  });

  it.each(['gitlab', 'bitbucket', 'azure-devops'] as const)('%s: detach deletes the hooks and leaves the repository detached', async (provider) => {
    const world = worlds[provider]!;
    const repo = await world.newRepository();
    await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'));
    expect(repo.hooks()).toHaveLength(world.hookSet.length);
    const before = world.server.calls.length;
    const workflowId = await requestAttachment(h, org, repo.repositoryId, 'DELETE');
    expect((await outcomeOf(h, workflowId)).result).toEqual({ status: 'detached', hookIds: [], requests: 1 });
    expect(repo.hooks()).toEqual([]);
    expect(world.server.calls.slice(before).filter((c) => c.operation === world.ops.delete && c.status === 204)).toHaveLength(world.hookSet.length);
    expect(await attachmentOf(h, org, repo.repositoryId)).toEqual({ status: 'detached', repositoryVanished: false, hooks: [], workflowId });
  });

  describe('GitHub App', () => {
    let connectionId: string;
    let installationId: number;
    beforeAll(async () => {
      installationId = github.addInstallation({ account: { login: 'octo-org' }, repositorySelection: 'selected' }).id;
      connectionId = await seedConnection(h, { organizationId: org.id, provider: 'github', baseUrl: github.url, externalKey: String(installationId) });
    });

    it('attaches without creating a hook once the installation can see the repository', async () => {
      const repo = github.addRepository(installationId, { fullName: 'octo-org/service' });
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'github', externalId: String(repo.id), fullName: repo.fullName });
      const before = github.server.calls.length;
      const { result } = await outcomeOf(h, await requestAttachment(h, org, repositoryId, 'PUT'));
      expect(result).toEqual({ status: 'attached', hookIds: [], requests: 1 });
      // Read-only: the App delivers events, so nothing is written to GitHub.
      expect(github.server.calls.slice(before).every((c) => c.method === 'GET' || c.operation === 'createInstallationToken')).toBe(true);
      expect(github.server.calls.slice(before).some((c) => c.operation === 'getRepo' && c.status === 200)).toBe(true);
      expect(await attachmentOf(h, org, repositoryId)).toMatchObject({ status: 'attached', hooks: [] });

      const detached = await outcomeOf(h, await requestAttachment(h, org, repositoryId, 'DELETE'));
      expect(detached.result?.status).toBe('detached');
      expect((await attachmentOf(h, org, repositoryId)).status).toBe('detached');
    });

    it('fails with a typed error and the reason when the installation cannot see the repository', async () => {
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'github', externalId: '999999', fullName: 'octo-org/not-installed' });
      const workflowId = await requestAttachment(h, org, repositoryId, 'PUT');
      const { failure } = await outcomeOf(h, workflowId);
      expect(failure).toMatchObject({ type: 'RepositoryAttachFailed', message: expect.stringContaining('RepositoryNotVisible') });
      const attachment = await attachmentOf(h, org, repositoryId);
      expect(attachment).toMatchObject({ status: 'failed', hooks: [], reason: expect.stringContaining('octo-org/not-installed') });
      // The API shows the run's typed failure too.
      const run = (await (await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token: org.token })).json()) as { status: string; failure: { type: string } };
      expect(run).toMatchObject({ status: 'FAILED', failure: { type: 'RepositoryAttachFailed' } });
    });
  });

  describe('API', () => {
    it('answers 404 for a repository of another organization, and hides the run', async () => {
      const repo = await worlds.gitlab!.newRepository();
      const other = await createOrgWithToken(h);
      for (const method of ['PUT', 'GET', 'DELETE']) {
        const res = await h.request(method, `/api/v1/orgs/${other.org.slug}/repositories/${repo.repositoryId}/attachment`, { token: other.token });
        expect(res.status, method).toBe(404);
        expect(res.headers.get('content-type')).toBe('application/problem+json');
      }
      expect((await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/${repo.repositoryId}/attachment`, { token: other.token })).status).toBe(404);
      expect((await attachmentOf(h, org, repo.repositoryId)).status).toBe('detached');
    });

    it("takes the organization's id where its slug goes, and still not another organization's", async () => {
      const repo = await worlds.gitlab!.newRepository();
      const byId = await h.request('GET', `/api/v1/orgs/${org.id}/repositories/${repo.repositoryId}/attachment`, { token: org.token });
      expect(byId.status).toBe(200);
      expect(((await byId.json()) as { status: string }).status).toBe('detached');
      const other = await createOrgWithToken(h);
      for (const method of ['PUT', 'GET']) {
        const res = await h.request(method, `/api/v1/orgs/${other.org.id}/repositories/${repo.repositoryId}/attachment`, { token: other.token });
        expect(((await res.json()) as { detail: string }).detail, method).toBe(`repository ${repo.repositoryId} does not exist`);
        expect((await h.request(method, `/api/v1/orgs/${org.id}/repositories/${repo.repositoryId}/attachment`, { token: other.token })).status, method).toBe(404);
      }
    });

    it('answers 400 for an id that is not a UUID and 409 when the connection is not active', async () => {
      const bad = await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/not-a-uuid/attachment`, { token: org.token });
      expect(bad.status).toBe(400);
      expect(bad.headers.get('content-type')).toBe('application/problem+json');

      const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: 'http://127.0.0.1:9', secret: 'glpat-unused' });
      await h.db.updateTable('connections').set({ status: 'failed', reason: 'token revoked' }).where('id', '=', connectionId).execute();
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'gitlab', externalId: '1', fullName: 'platform/inactive' });
      const conflict = await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: org.token });
      expect(conflict.status).toBe(409);
      expect(((await conflict.json()) as { detail: string }).detail).toMatch(/is failed/);
    });
  });
});
