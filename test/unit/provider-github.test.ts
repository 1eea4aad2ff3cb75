import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createGithubAdapter, proveInstallationAccess, USER_TOKEN_API_VERSION, type GithubAdapterOptions } from '../../activities/providers/github.ts';
import { ProviderHttpError, type RepositoryPage } from '../../activities/providers/port.ts';
import { githubError, startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { walkListing } from '../support/listing.ts';
import { testOutbound } from '../support/outbound.ts';

describe('GitHub adapter against the fake GitHub', () => {
  let github: FakeGithub;
  let orgs = 0;

  beforeAll(async () => {
    github = await startFakeGithub();
  });
  afterAll(async () => {
    await github?.close();
  });
  afterEach(() => {
    github.server.clearFaults();
    github.setSecondaryRateLimit(null);
    github.setRateLimit({ remaining: 5000, reset: Math.floor(Date.now() / 1000) + 3600 });
  });

  function adapterFor(installationId: number, options: Partial<GithubAdapterOptions> = {}, privateKey = github.privateKeyPem) {
    return createGithubAdapter(
      { connectionId: 'conn-1', provider: 'github', baseUrl: github.url, externalKey: String(installationId) },
      { appId: github.appId, privateKey, baseUrl: github.url },
      { outbound: testOutbound, ...options },
    );
  }
  function installationWith(repoCount: number) {
    const login = `org-${++orgs}`;
    const installation = github.addInstallation({ account: { login } });
    for (let i = 0; i < repoCount; i++) github.addRepository(installation.id, { fullName: `${login}/repo-${i}` });
    return installation;
  }
  async function rejection(promise: Promise<unknown>): Promise<ProviderHttpError> {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ProviderHttpError);
    return error as ProviderHttpError;
  }
  async function walk(adapter: ReturnType<typeof adapterFor>): Promise<RepositoryPage[]> {
    const pages: RepositoryPage[] = [];
    let cursor: string | undefined;
    do {
      const page = await adapter.listRepositoriesPage({ cursor });
      pages.push(page);
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    return pages;
  }

  describe('validate', () => {
    it('reads the installation with the App JWT and names its account', async () => {
      const installation = installationWith(0);
      const outcome = await adapterFor(installation.id).validate();
      expect(outcome).toEqual({
        ok: true,
        identity: { account: installation.account.login, accountId: String(installation.account.id), detail: 'Organization installation, selected repositories' },
      });
      expect(github.server.calls.at(-1)).toMatchObject({ operation: 'getInstallation', status: 200 });
    });

    it('refuses an unknown installation, a suspended one and App credentials GitHub rejects', async () => {
      expect(await adapterFor(123).validate()).toEqual({ ok: false, reason: 'GitHub App installation 123 not found (uninstalled?)' });

      const frozen = installationWith(0);
      github.suspendInstallation(frozen.id);
      const suspended = await adapterFor(frozen.id).validate();
      expect(suspended.ok).toBe(false);
      expect(!suspended.ok && suspended.reason).toMatch(new RegExp(`^GitHub App installation ${frozen.id} on ${frozen.account.login} is suspended`));

      const otherApp = await startFakeGithub();
      try {
        const badKey = await adapterFor(installationWith(0).id, {}, otherApp.privateKeyPem).validate();
        expect(badKey).toEqual({
          ok: false,
          reason: expect.stringMatching(new RegExp(`^GitHub rejected the App credentials \\(App ID ${github.appId}\\): A JSON web token could not be decoded`)),
        });
      } finally {
        await otherApp.close();
      }
    });

    it('throws ProviderHttpError on a 500, so the activity retries', async () => {
      github.server.failNext('getInstallation', 1, { status: 500, body: { message: 'Server Error' } });
      const error = await rejection(adapterFor(installationWith(0).id).validate());
      expect(error).toMatchObject({ provider: 'github', status: 500, message: 'Server Error' });
    });
  });

  describe('listRepositoriesPage', () => {
    it.each([
      { repos: 0, sizes: [0] },
      { repos: 1, sizes: [1] },
      { repos: 100, sizes: [100] },
      { repos: 250, sizes: [100, 100, 50] },
    ])('walks $repos repositories in pages of 100', async ({ repos, sizes }) => {
      const installation = installationWith(repos);
      const pages = await walk(adapterFor(installation.id));
      expect(pages.map((p) => p.repositories.length)).toEqual(sizes);
      expect(pages.map((p) => p.nextCursor)).toEqual([...sizes.slice(1).map((_, i) => String(i + 2)), undefined]);
      expect(pages.flatMap((p) => p.repositories.map((r) => r.fullName))).toEqual(
        Array.from({ length: repos }, (_, i) => `${installation.account.login}/repo-${i}`),
      );
      // One token minted, one page read: the token never leaves the adapter.
      expect(pages[0]!.apiCalls).toBe(2);
      expect(JSON.stringify(pages)).not.toContain('ghs_');
    });

    it('maps GitHub repositories to the port shape', async () => {
      const installation = github.addInstallation({ account: { login: 'mapped' } });
      const repo = github.addRepository(installation.id, { fullName: 'mapped/api', defaultBranch: 'trunk' });
      const page = await adapterFor(installation.id).listRepositoriesPage({});
      expect(page.repositories).toEqual([{ externalId: String(repo.id), fullName: 'mapped/api', defaultBranch: 'trunk', webUrl: 'https://github.com/mapped/api' }]);
      expect(page.etag).toMatch(/^W\/"/);
    });

    it('fans out from the first page to every page up to the Link header\'s last', async () => {
      const pages = await walkListing(adapterFor(installationWith(350).id));
      expect(pages[0]!.fanOut).toEqual(['2', '3', '4']);
      expect(pages.map((p) => p.cursor)).toEqual([undefined, '2', '3', '4']);
      expect(pages.slice(1).every((p) => p.fanOut === undefined)).toBe(true);
      expect(pages.flatMap((p) => p.repositories)).toHaveLength(350);
    });

    it('turns a 304 into notModified, leaving where the page leads to the stored page', async () => {
      const installation = installationWith(1);
      const adapter = adapterFor(installation.id);
      const first = await adapter.listRepositoriesPage({});
      const again = await adapter.listRepositoriesPage({ etag: first.etag });
      // A 304 has no Link header: the page, its next page and its fan-out are what the listing stored.
      expect(again).toEqual({ repositories: [], notModified: true, etag: first.etag, apiCalls: 1 });
      expect(github.server.calls.at(-1)).toMatchObject({ operation: 'listInstallationRepos', status: 304 });
      const beyond = await adapter.listRepositoriesPage({ cursor: '2' });
      expect(beyond.repositories).toEqual([]);
      expect(beyond.nextCursor).toBeUndefined();

      github.addRepository(installation.id, { fullName: `${installation.account.login}/new` });
      const changed = await adapter.listRepositoriesPage({ etag: first.etag });
      expect(changed.notModified).toBeUndefined();
      expect(changed.repositories).toHaveLength(2);
      expect(changed.etag).not.toBe(first.etag);
    });

    it('reports a 429 with Retry-After as ProviderHttpError without retrying in-process', async () => {
      const installation = installationWith(1);
      github.server.failNext('listInstallationRepos', 1, {
        status: 429,
        headers: { 'retry-after': '30' },
        body: { message: 'Too many requests', documentation_url: 'https://docs.github.com/rest', status: '429' },
      });
      const before = github.server.count('listInstallationRepos');
      const error = await rejection(adapterFor(installation.id).listRepositoriesPage({}));
      expect(error).toMatchObject({ status: 429, retryAfterSeconds: 30, message: 'Too many requests' });
      expect(github.server.count('listInstallationRepos') - before).toBe(1);
    });

    it('reports a 403 primary-limit exhaustion as a 429 retryable at the reset', async () => {
      const installation = installationWith(1);
      const now = Math.floor(Date.now() / 1000) * 1000;
      github.setRateLimit({ remaining: 0, reset: now / 1000 + 120 });
      const error = await rejection(adapterFor(installation.id, { now: () => now }).listRepositoriesPage({}));
      expect(error).toMatchObject({ status: 429, retryAfterSeconds: 120 });
      expect(error.message).toMatch(/^API rate limit exceeded for installation ID \d+\. \(GitHub answered 403\)$/);
    });

    it('reports a 403 secondary limit as a 429, waiting a minute when GitHub gives no Retry-After', async () => {
      const installation = installationWith(1);
      github.setSecondaryRateLimit({});
      expect(await rejection(adapterFor(installation.id).listRepositoriesPage({}))).toMatchObject({ status: 429, retryAfterSeconds: 60 });
      github.setSecondaryRateLimit({ retryAfterSeconds: 7 });
      expect(await rejection(adapterFor(installation.id).listRepositoriesPage({}))).toMatchObject({ status: 429, retryAfterSeconds: 7 });
    });

    it('spreads a low remaining budget over the time to the reset, never pausing longer than 5 s', async () => {
      const installation = installationWith(1);
      const now = Math.floor(Date.now() / 1000) * 1000;
      const pauses: number[] = [];
      const options = { now: () => now, sleep: async (ms: number) => void pauses.push(ms) };

      await adapterFor(installation.id, options).listRepositoriesPage({});
      expect(pauses).toEqual([]);

      // 50 left, one spent by this page: 98 s over the remaining 49 requests.
      github.setRateLimit({ remaining: 50, reset: now / 1000 + 98 });
      await adapterFor(installation.id, options).listRepositoriesPage({});
      expect(pauses).toEqual([2000]);

      github.setRateLimit({ remaining: 50, reset: now / 1000 + 3000 });
      await adapterFor(installation.id, options).listRepositoriesPage({});
      expect(pauses).toEqual([2000, 5000]);
    });
  });

  describe('getRepository', () => {
    it('finds a repository by full name, follows a rename, and returns null when it is not visible', async () => {
      const installation = github.addInstallation({ account: { login: 'lookup' } });
      const repo = github.addRepository(installation.id, { fullName: 'lookup/service' });
      const adapter = adapterFor(installation.id);
      expect(await adapter.getRepository({ externalId: String(repo.id), fullName: 'lookup/service' })).toMatchObject({
        externalId: String(repo.id),
        fullName: 'lookup/service',
        defaultBranch: 'main',
      });
      expect(await adapter.getRepository({ externalId: '1', fullName: 'lookup/missing' })).toBeNull();

      github.renameRepository(repo.id, 'lookup/service-v2');
      expect(await adapter.getRepository({ externalId: String(repo.id), fullName: 'lookup/service' })).toMatchObject({ fullName: 'lookup/service-v2' });

      // The old name now belongs to another repository: not the one we asked about.
      github.addRepository(installation.id, { fullName: 'lookup/service' });
      expect(await adapter.getRepository({ externalId: String(repo.id), fullName: 'lookup/service' })).toBeNull();
    });
  });

  describe('hooks', () => {
    it('has none per repository: the App delivers events', async () => {
      const adapter = adapterFor(installationWith(0).id);
      const ref = { externalId: '1', fullName: 'x/y' };
      expect(await adapter.listHooks(ref)).toEqual([]);
      await expect(adapter.createHook(ref, { url: 'https://ci.example/hook', events: ['push'] })).rejects.toThrow(/no per-repository hooks/);
      await expect(adapter.updateHook(ref, '1', { url: 'https://ci.example/hook', events: ['push'] })).rejects.toThrow(/no per-repository hooks/);
      expect(await adapter.deleteHook(ref, '1')).toBe(false);
      expect(github.server.calls.filter((c) => c.path.includes('x/y'))).toEqual([]);
    });
  });

  describe('proving that the installing user reaches an installation', () => {
    const oauthApp = () => ({ clientId: github.clientId, clientSecret: github.clientSecret, webUrl: github.url, baseUrl: github.url });
    const prove = (code: string, installationId: number) => proveInstallationAccess(oauthApp(), testOutbound, code, String(installationId));

    it('is proven only for an installation on one of the pages of the user\'s installations', async () => {
      const mine = github.addInstallation({ account: { login: `mine-${++orgs}` } });
      const theirs = github.addInstallation({ account: { login: `theirs-${++orgs}` } });
      const login = `user-${++orgs}`;
      github.grantInstallation(login, mine.id);
      github.setOrgMembership(mine.account.login, login, { role: 'admin' });
      expect(await prove(github.issueOAuthCode(login), mine.id)).toEqual({ proven: true });
      expect(await prove(github.issueOAuthCode(login), theirs.id)).toEqual({ proven: false, reason: `the GitHub user who authorized the App cannot reach installation ${theirs.id}` });
      expect(await prove('used-or-unknown', mine.id)).toEqual({ proven: false, reason: 'GitHub did not accept the authorization code (bad_verification_code)' });
    });

    it('is proven only for the user an installation is on, or an active owner of its organization', async () => {
      const login = `admin-${++orgs}`;
      const own = github.addInstallation({ account: { login, type: 'User' } });
      const org = github.addInstallation({ account: { login: `org-${++orgs}` } });
      for (const id of [own.id, org.id]) github.grantInstallation(login, id);
      expect(await prove(github.issueOAuthCode(login), own.id)).toEqual({ proven: true });
      const on = `installation ${org.id} is on the organization ${org.account.login}`;
      const who = `the GitHub user ${login} who authorized the App`;
      expect(await prove(github.issueOAuthCode(login), org.id)).toEqual({ proven: false, reason: `${on}, of which ${who} is not a member: only an owner of ${org.account.login} can bind it` });
      github.setOrgMembership(org.account.login, login, { role: 'member' });
      expect(await prove(github.issueOAuthCode(login), org.id)).toEqual({ proven: false, reason: `${on}, where ${who} is a member: only an active owner (role admin) of ${org.account.login} can bind it` });
      github.setOrgMembership(org.account.login, login, { role: 'admin' });
      expect(await prove(github.issueOAuthCode(login), org.id)).toEqual({ proven: true });
      // A rate limit on the membership is GitHub not answering (thrown), not a refusal.
      github.server.failNext('getOrgMembershipForUser', 1, { status: 403, headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(Math.floor(Date.now() / 1000) + 60) }, body: { message: 'API rate limit exceeded for user.' } });
      expect((await rejection(prove(github.issueOAuthCode(login), org.id))).status).toBe(429);
    });

    it("is not proven when GitHub refuses a user-token call (a 4xx but a rate limit), in GitHub's words; a rate limit, a 5xx or no answer is thrown", async () => {
      const login = `refused-${++orgs}`;
      const installation = github.addInstallation({ account: { login: `refusing-${++orgs}` } });
      github.grantInstallation(login, installation.id);
      github.setOrgMembership(installation.account.login, login, { role: 'admin' });
      const by = 'for the GitHub user who authorized the App';
      const listing = 'You must authenticate with an access token authorized to a GitHub App in order to list installations';
      github.server.failNext('listUserInstallations', 1, githubError(403, listing));
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({ proven: false, reason: `GitHub answered 403 to GET /user/installations ${by} (${listing})` });
      github.server.failNext('getAuthenticatedUser', 1, githubError(404, 'Not Found'));
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({ proven: false, reason: `GitHub answered 404 to GET /user ${by} (Not Found)` });
      github.server.failNext('getOrgMembershipForUser', 1, githubError(422, 'Validation Failed'));
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({
        proven: false,
        reason: `GitHub answered 422 to GET /user/memberships/orgs/${installation.account.login} ${by} (Validation Failed)`,
      });
      // GitHub's text is kept short and printable.
      github.server.failNext('getAuthenticatedUser', 1, githubError(403, `Sorry.\u0007\nYour account was suspended. ${'x'.repeat(500)}`));
      const { reason } = (await prove(github.issueOAuthCode(login), installation.id)) as { reason: string };
      expect(reason).toMatch(/^GitHub answered 403 to GET \/user for the GitHub user who authorized the App \(Sorry\. Your account was suspended\. x+…\)$/);
      expect(reason.length).toBeLessThan(300);

      // Asking again may help: thrown (the setup callback's 503).
      const reset = String(Math.floor(Date.now() / 1000) + 60);
      github.server.failNext('listUserInstallations', 1, { ...githubError(403, 'API rate limit exceeded for user.'), headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': reset } });
      expect((await rejection(prove(github.issueOAuthCode(login), installation.id))).status).toBe(429);
      github.server.failNext('getAuthenticatedUser', 1, githubError(429, 'You have exceeded a secondary rate limit.'));
      expect((await rejection(prove(github.issueOAuthCode(login), installation.id))).status).toBe(429);
      github.server.failNext('getAuthenticatedUser', 1, githubError(503, 'Service Unavailable'));
      expect((await rejection(prove(github.issueOAuthCode(login), installation.id))).status).toBe(503);
      github.server.dropNext('listUserInstallations', 1);
      await expect(prove(github.issueOAuthCode(login), installation.id)).rejects.toThrow(/^GitHub did not answer/);
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({ proven: true });
    });

    it('says what GitHub said when it will not show a membership: Members: read only for a missing permission', async () => {
      const login = `sso-${++orgs}`;
      const installation = github.addInstallation({ account: { login: `sso-org-${++orgs}` } });
      const org = installation.account.login;
      github.grantInstallation(login, installation.id);
      github.setOrgMembership(org, login, { role: 'admin' });
      const shown = `installation ${installation.id} is on the organization ${org}, and GitHub would not show the GitHub user ${login} who authorized the App's membership of it`;
      github.setSamlEnforcement(org, true);
      try {
        expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({
          proven: false,
          reason: `${shown} (Resource protected by organization SAML enforcement. You must grant your OAuth token access to this organization.): ${org} enforces SAML single sign-on; sign in to it with single sign-on, then start again`,
        });
      } finally {
        github.setSamlEnforcement(org, false);
      }
      github.server.failNext('getOrgMembershipForUser', 1, githubError(403, 'Although you appear to have the correct authorization credentials, the organization has an IP allow list enabled.'));
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({
        proven: false,
        reason: `${shown} (Although you appear to have the correct authorization credentials, the organization has an IP allow list enabled.)`,
      });
      github.setMembersPermission(false);
      try {
        expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({
          proven: false,
          reason: `${shown} (Resource not accessible by integration): the App needs the organization permission Members: read, accepted by ${org}`,
        });
      } finally {
        github.setMembersPermission(true);
      }
    });

    it('pins the REST API version on every user-token call', async () => {
      const login = `pinned-${++orgs}`;
      const installation = github.addInstallation({ account: { login: `pinned-org-${++orgs}` } });
      github.grantInstallation(login, installation.id);
      github.setOrgMembership(installation.account.login, login, { role: 'admin' });
      const calls = github.server.calls.length;
      expect(await prove(github.issueOAuthCode(login), installation.id)).toEqual({ proven: true });
      const userCalls = github.server.calls.slice(calls).filter((c) => c.operation !== 'exchangeOAuthCode');
      expect(userCalls.map((c) => `${c.operation} ${String(c.headers['x-github-api-version'])}`)).toEqual(
        ['listUserInstallations', 'getAuthenticatedUser', 'getOrgMembershipForUser'].map((operation) => `${operation} ${USER_TOKEN_API_VERSION}`),
      );
      expect(USER_TOKEN_API_VERSION).toBe('2022-11-28');
    });

    it('fails with GitHub\'s status and message, never carrying the client secret or the code', async () => {
      const installation = github.addInstallation({ account: { login: `down-${++orgs}` } });
      const code = github.issueOAuthCode('someone');
      github.server.failNext('exchangeOAuthCode', 1, { status: 502, body: { message: 'Bad Gateway' } });
      const error = await rejection(prove(code, installation.id));
      expect(error.status).toBe(502);
      const everything = JSON.stringify(error, Object.getOwnPropertyNames(error)) + String(error.stack);
      expect(everything).not.toContain(github.clientSecret);
      expect(everything).not.toContain(code);
    });
  });
});
