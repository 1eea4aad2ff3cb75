import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open } from '../../lib/crypto.ts';
import { webhookCredentialsOf } from '../../lib/db/repositories/webhook-credentials.ts';
import { fillLargeOrganization, startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, type Harness } from '../support/harness.ts';

/**
 * Connect and disconnect for GitHub, Bitbucket Data Center and Azure DevOps through the API, the
 * real workflows and the real client libraries against the fake providers.
 */
describe('connect and disconnect: GitHub, Bitbucket DC, Azure DevOps', () => {
  let h: Harness;
  let github: FakeGithub;
  let bitbucket: FakeBitbucket;
  let azure: FakeAzureDevOps;
  let org: { id: string; slug: string };
  let orgToken: string;
  let n = 0;
  const unique = (prefix: string) => `${prefix}-${++n}-${Math.random().toString(36).slice(2)}-SECRET`;

  beforeAll(async () => {
    [github, bitbucket, azure] = await Promise.all([startFakeGithub(), startFakeBitbucket(), startFakeAzureDevOps({ organization: 'contoso' })]);
    // A token's permissions show through what it can list, so the instance has a project with a repository.
    bitbucket.addProject({ key: 'CI', name: 'CI' });
    bitbucket.addRepository({ projectKey: 'CI', slug: 'app' });
    h = await startHarness({ github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem, appName: 'forgelink-test' } });
    ({ org, token: orgToken } = await createOrgWithToken(h));
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all([github?.close(), bitbucket?.close(), azure?.close()]);
  });

  async function post(body: { provider: string; [field: string]: unknown }) {
    // GitHub installations are bound by the admin here (the install flow: github-installations.test.ts).
    return h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: body.provider === 'github' ? h.adminToken : orgToken, body });
  }
  async function connect(body: { provider: string; [field: string]: unknown }) {
    const res = await post(body);
    expect(res.status, await res.clone().text()).toBe(202);
    const accepted = (await res.json()) as { id: string; workflowId: string };
    const result = await resultOf<{ status: string; reason?: string }>(h, accepted.workflowId);
    const connection = (await (await h.request('GET', `/api/v1/orgs/${org.slug}/connections/${accepted.id}`, { token: orgToken })).json()) as {
      status: string;
      reason?: string;
      account?: string;
    };
    return { ...accepted, result, connection };
  }
  async function disconnect(id: string) {
    const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${id}`, { token: orgToken });
    expect(res.status).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    await resultOf(h, workflowId);
    return h.db.selectFrom('connections').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  }
  const webhookCredentialRows = (connectionId: string) => h.db.selectFrom('webhook_credentials').selectAll().where('connection_id', '=', connectionId).execute();
  async function expectNoLeak(secret: string, workflowId: string) {
    expect(await historyText(h, workflowId)).not.toContain(secret);
    expect(h.logs.join('\n')).not.toContain(secret);
    expect(JSON.stringify(await h.db.selectFrom('connections').selectAll().execute())).not.toContain(secret);
    expect(JSON.stringify(await h.db.selectFrom('webhook_credentials').selectAll().execute())).not.toContain(secret);
    expect(await (await h.request('GET', `/api/v1/orgs/${org.slug}/connections`, { token: orgToken })).text()).not.toContain(secret);
  }

  describe('GitHub App', () => {
    it('connects an installation, then disconnects', async () => {
      const installation = github.addInstallation({ account: { login: 'octo-org', type: 'Organization' } });
      const { id, connection, workflowId } = await connect({ provider: 'github', installationId: installation.id });
      expect(connection).toMatchObject({ status: 'active', account: 'octo-org', installationId: String(installation.id) });
      // Installation tokens are minted per call and never stored.
      const row = await h.db.selectFrom('connections').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
      expect(row.credential).toBeNull();
      // The App signs deliveries: no per-connection webhook credential.
      expect(await webhookCredentialRows(id)).toEqual([]);
      expect(await historyText(h, workflowId)).not.toContain(github.privateKeyPem.split('\n')[1]!);
      expect((await disconnect(id)).status).toBe('disconnected');
    });

    it('fails clearly for an unknown and for a suspended installation', async () => {
      expect((await connect({ provider: 'github', installationId: 987654321 })).connection).toMatchObject({ status: 'failed', reason: expect.stringMatching(/not found/) });
      const suspended = github.addInstallation({ account: { login: 'sleepy' } });
      github.suspendInstallation(suspended.id);
      expect((await connect({ provider: 'github', installationId: suspended.id })).connection).toMatchObject({ status: 'failed', reason: expect.stringMatching(/suspended/) });
    });

    it('retries transient failures', async () => {
      const installation = github.addInstallation({ account: { login: 'flaky-org' } });
      github.server.failNext('getInstallation', 2, { status: 503, body: { message: 'Service Unavailable' } });
      expect((await connect({ provider: 'github', installationId: installation.id })).connection.status).toBe('active');
    });
  });

  describe('Bitbucket Data Center', () => {
    it('connects with PROJECT_READ and REPO_ADMIN, never leaking the token, then disconnects', async () => {
      const token = unique('bbtoken');
      bitbucket.addToken({ token, username: 'ci-bot', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
      const { id, connection, workflowId } = await connect({ provider: 'bitbucket', baseUrl: bitbucket.url, token });
      expect(connection, connection.reason).toMatchObject({ status: 'active', account: 'ci-bot' });
      await expectNoLeak(token, workflowId);
      const [credential] = await webhookCredentialsOf(h.db, h.keys, id);
      expect(credential).toMatchObject({ version: 1 });
      await expectNoLeak(credential!.secret, workflowId);
      const row = await disconnect(id);
      expect(row).toMatchObject({ status: 'disconnected', credential: null, pending_credential: null });
      expect(await webhookCredentialRows(id)).toEqual([]);
    });

    it('names the missing permission', async () => {
      const token = unique('bbtoken');
      bitbucket.addToken({ token, username: 'reader', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_READ' });
      const { id, connection } = await connect({ provider: 'bitbucket', baseUrl: bitbucket.url, token });
      expect(connection.status).toBe('failed');
      expect(connection.reason).toContain('REPO_ADMIN');
      expect(await webhookCredentialRows(id)).toEqual([]);
    });

    it('fails on a rejected token and retries a 5xx', async () => {
      expect((await connect({ provider: 'bitbucket', baseUrl: bitbucket.url, token: 'never-issued' })).connection).toMatchObject({
        status: 'failed',
        reason: expect.stringMatching(/401/),
      });
      const token = unique('bbtoken');
      bitbucket.addToken({ token, username: 'ci-bot', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
      bitbucket.server.failNext('*', 2, { status: 503, body: { errors: [{ context: null, message: 'Service unavailable', exceptionName: null }] } });
      expect((await connect({ provider: 'bitbucket', baseUrl: bitbucket.url, token })).connection.status).toBe('active');
    });
  });

  describe('Azure DevOps', () => {
    it('connects, refuses a second connection to the same organization, rotates the PAT, disconnects', async () => {
      const pat = unique('adopat');
      azure.addPat({ pat, displayName: 'Build Admin', canManageHooks: true });
      const { id, connection, workflowId } = await connect({ provider: 'azure-devops', organizationUrl: azure.url, token: pat });
      expect(connection).toMatchObject({ status: 'active', account: 'Build Admin' });
      await expectNoLeak(pat, workflowId);
      const [credential] = await webhookCredentialsOf(h.db, h.keys, id);
      expect(credential).toMatchObject({ version: 1, basicAuthUser: expect.stringMatching(/^forgelink-/) });
      await expectNoLeak(credential!.secret, workflowId);

      const again = await post({ provider: 'azure-devops', organizationUrl: `${azure.url}/`, token: pat });
      expect(again.status).toBe(409);
      expect(((await again.json()) as { detail: string }).detail).toMatch(/credential/);

      const rotated = unique('adopat');
      azure.addPat({ pat: rotated, displayName: 'Build Admin', canManageHooks: true });
      const rotate = await h.request('PUT', `/api/v1/orgs/${org.slug}/connections/${id}/credential`, { token: orgToken, body: { token: rotated } });
      expect(rotate.status).toBe(202);
      const { workflowId: rotateRun } = (await rotate.json()) as { workflowId: string };
      expect(await resultOf<{ status: string }>(h, rotateRun)).toMatchObject({ status: 'active' });
      const row = await h.db.selectFrom('connections').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
      expect(open(h.keys, row.credential!, id)).toBe(rotated);
      await expectNoLeak(rotated, rotateRun);
      // A new token is not a new webhook credential: the hooks keep theirs.
      expect(await webhookCredentialsOf(h.db, h.keys, id)).toEqual([credential]);

      expect((await disconnect(id)).status).toBe('disconnected');
    });

    it('connects and rotates the PAT of an organization whose whole lists pass the answer limit', async () => {
      // 9,000 subscriptions (~10 MiB unfiltered: 3,000 attached repositories) and 12,000 repositories
      // (~8.8 MiB organization-wide): validate, on connect and on rotation, reads neither whole.
      const large = await startFakeAzureDevOps({ organization: 'fabrikam' });
      try {
        fillLargeOrganization(large, { projects: 120, repositoriesPerProject: 100, subscriptions: 9_000 });
        const pat = unique('adopat');
        large.addPat({ pat, displayName: 'Large Admin' });
        const { id, connection } = await connect({ provider: 'azure-devops', organizationUrl: large.url, token: pat });
        expect(connection, connection.reason).toMatchObject({ status: 'active', account: 'Large Admin' });

        const rotated = unique('adopat');
        large.addPat({ pat: rotated, displayName: 'Large Admin' });
        const rotate = await h.request('PUT', `/api/v1/orgs/${org.slug}/connections/${id}/credential`, { token: orgToken, body: { token: rotated } });
        expect(rotate.status).toBe(202);
        const { workflowId: rotateRun } = (await rotate.json()) as { workflowId: string };
        expect(await resultOf<{ status: string; reason?: string }>(h, rotateRun)).toMatchObject({ status: 'active' });
        const row = await h.db.selectFrom('connections').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
        expect(open(h.keys, row.credential!, id)).toBe(rotated);
        // Each validation asked for one project's repositories and for no subscription.
        const repositoryCalls = large.server.calls.filter((c) => c.operation === 'listRepositories').map((c) => c.path);
        expect(repositoryCalls).toHaveLength(2);
        for (const path of repositoryCalls) expect(path).toMatch(/^\/fabrikam\/[0-9a-f-]{36}\/_apis\/git\/repositories$/);
        expect((await disconnect(id)).status).toBe('disconnected');
      } finally {
        await large.close();
      }
    });

    it('says when the PAT cannot manage service hooks, and when it is rejected', async () => {
      const pat = unique('adopat');
      azure.addPat({ pat, displayName: 'Reader', canManageHooks: false });
      const other = await createOrgWithToken(h);
      const res = await h.request('POST', `/api/v1/orgs/${other.org.slug}/connections`, { token: other.token, body: { provider: 'azure-devops', organizationUrl: azure.url, token: pat } });
      const { workflowId, id } = (await res.json()) as { workflowId: string; id: string };
      expect(await resultOf<{ status: string; reason: string }>(h, workflowId)).toMatchObject({ status: 'failed', reason: expect.stringMatching(/service hook/i) });
      const row = await h.db.selectFrom('connections').select(['status', 'reason']).where('id', '=', id).executeTakeFirstOrThrow();
      expect(row.status).toBe('failed');

      const third = await createOrgWithToken(h);
      const bad = await h.request('POST', `/api/v1/orgs/${third.org.slug}/connections`, { token: third.token, body: { provider: 'azure-devops', organizationUrl: azure.url, token: 'not-a-pat' } });
      const badRun = (await bad.json()) as { workflowId: string };
      expect(await resultOf<{ status: string; reason: string }>(h, badRun.workflowId)).toMatchObject({ status: 'failed', reason: expect.stringMatching(/401|rejected/i) });
    });
  });
});
