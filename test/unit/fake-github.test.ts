import { createSign, generateKeyPairSync } from 'node:crypto';
import { createAppAuth } from '@octokit/auth-app';
import { Octokit } from '@octokit/rest';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';

/** Octokit errors, as the client sees them. */
interface HttpError {
  status: number;
  response: { headers: Record<string, string>; data: { message: string; documentation_url: string; status: string } };
}

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

async function failure(promise: Promise<unknown>): Promise<HttpError> {
  try {
    await promise;
  } catch (error) {
    return error as HttpError;
  }
  throw new Error('expected the request to fail');
}

describe('fake GitHub, driven by Octokit + auth-app', () => {
  let github: FakeGithub;
  /** Shifts the fake's clock: token expiry, rate-limit resets and clock skew. */
  let offsetMs = 0;
  let orgs = 0;

  beforeAll(async () => {
    github = await startFakeGithub({ now: () => Date.now() + offsetMs });
  });
  afterAll(async () => {
    await github?.close();
  });
  afterEach(() => {
    offsetMs = 0;
    github.setSecondaryRateLimit(null);
    github.setRateLimit({ remaining: 5000, reset: Math.floor(Date.now() / 1000) + 3600 });
  });

  function asApp(privateKey = github.privateKeyPem, appId = github.appId) {
    return new Octokit({ baseUrl: github.url, authStrategy: createAppAuth, auth: { appId, privateKey }, log: quiet });
  }
  function asInstallation(installationId: number) {
    return new Octokit({ baseUrl: github.url, authStrategy: createAppAuth, auth: { appId: github.appId, privateKey: github.privateKeyPem, installationId }, log: quiet });
  }
  async function mintToken(installationId: number): Promise<string> {
    const { data } = await asApp().rest.apps.createInstallationAccessToken({ installation_id: installationId });
    return data.token;
  }
  function installationWith(repoCount: number, login = `org-${++orgs}`) {
    const installation = github.addInstallation({ account: { login } });
    for (let i = 0; i < repoCount; i++) github.addRepository(installation.id, { fullName: `${login}/repo-${i}` });
    return installation;
  }
  function signJwt(claims: Record<string, unknown>): string {
    const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const unsigned = `${encode({ alg: 'RS256', typ: 'JWT' })}.${encode(claims)}`;
    return `${unsigned}.${createSign('RSA-SHA256').update(unsigned).sign(github.privateKeyPem, 'base64url')}`;
  }

  describe('App JWT', () => {
    it('accepts the JWT auth-app signs with the App key', async () => {
      const { data, status } = await asApp().rest.apps.getAuthenticated();
      expect(status).toBe(200);
      expect(String(data?.id)).toBe(github.appId);
    });

    it('rejects a JWT signed with another key, or naming another App, with 401 in GitHub error shape', async () => {
      const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
      for (const octokit of [asApp(otherKey), asApp(github.privateKeyPem, '999')]) {
        const error = await failure(octokit.rest.apps.getAuthenticated());
        expect(error.status).toBe(401);
        expect(error.response.data).toEqual({ message: 'A JSON web token could not be decoded', documentation_url: expect.stringMatching(/^https:/), status: '401' });
      }
    });

    it('rejects a JWT living longer than 600 s, and installation tokens on /app', async () => {
      const iat = Math.floor(Date.now() / 1000) - 30;
      const raw = new Octokit({ baseUrl: github.url, log: quiet });
      const tooLong = await failure(raw.request('GET /app', { headers: { authorization: `Bearer ${signJwt({ iat, exp: iat + 601, iss: github.appId })}` } }));
      expect(tooLong.status).toBe(401);
      expect(tooLong.response.data.message).toMatch(/'Expiration time' claim \('exp'\) is too far in the future/);
      const fine = await raw.request('GET /app', { headers: { authorization: `Bearer ${signJwt({ iat, exp: iat + 600, iss: github.appId })}` } });
      expect(fine.status).toBe(200);

      const installation = installationWith(0);
      const token = await mintToken(installation.id);
      const wrongKind = await failure(raw.request('GET /app/installations/{id}', { id: installation.id, headers: { authorization: `token ${token}` } }));
      expect(wrongKind.status).toBe(401);
    });

    it('answers an expired-looking JWT with the message and Date header auth-app uses to correct clock skew', async () => {
      offsetMs = 20 * 60 * 1000;
      await expect(asApp().rest.apps.getAuthenticated()).resolves.toMatchObject({ status: 200 });
      expect(github.server.calls.slice(-2).map((c) => [c.operation, c.status])).toEqual([
        ['getApp', 401],
        ['getApp', 200],
      ]);
    });
  });

  describe('installation tokens', () => {
    it('mints a token valid for one hour, of no fixed length', async () => {
      const installation = installationWith(0);
      const octokit = asApp();
      const first = await octokit.rest.apps.createInstallationAccessToken({ installation_id: installation.id });
      const second = await octokit.rest.apps.createInstallationAccessToken({ installation_id: installation.id });
      expect(first.status).toBe(201);
      expect(first.data.token).toMatch(/^ghs_/);
      expect(first.data.token.length).not.toBe(second.data.token.length);
      expect(Math.abs(Date.parse(first.data.expires_at) - (Date.now() + 3600_000))).toBeLessThan(5_000);
      expect(first.data.repository_selection).toBe('selected');
    });

    it('answers 404 for an unknown installation and 403 for a suspended one', async () => {
      const unknown = await failure(asApp().rest.apps.createInstallationAccessToken({ installation_id: 987654 }));
      expect(unknown.status).toBe(404);
      expect(unknown.response.data.status).toBe('404');
      const suspended = github.addInstallation({ account: { login: 'frozen' }, suspended: true });
      const refused = await failure(asApp().rest.apps.createInstallationAccessToken({ installation_id: suspended.id }));
      expect(refused.status).toBe(403);
      expect(refused.response.data.message).toBe('This installation has been suspended');
    });

    it('reads the installation with the JWT, suspension included', async () => {
      const installation = installationWith(0, 'readable');
      github.suspendInstallation(installation.id);
      const { data } = await asApp().rest.apps.getInstallation({ installation_id: installation.id });
      expect(data).toMatchObject({ id: installation.id, account: { login: 'readable', type: 'Organization' }, repository_selection: 'selected' });
      expect(data.suspended_at).toEqual(expect.any(String));
    });

    it('accepts the token as `token` or `Bearer` on repository endpoints, refuses a JWT there and an expired token', async () => {
      const installation = installationWith(1);
      const token = await mintToken(installation.id);
      const raw = new Octokit({ baseUrl: github.url, log: quiet });
      for (const authorization of [`token ${token}`, `Bearer ${token}`]) {
        const { data } = await raw.request('GET /installation/repositories', { headers: { authorization } });
        expect(data.total_count).toBe(1);
      }
      const iat = Math.floor(Date.now() / 1000) - 30;
      const jwt = await failure(raw.request('GET /installation/repositories', { headers: { authorization: `Bearer ${signJwt({ iat, exp: iat + 600, iss: github.appId })}` } }));
      expect(jwt.status).toBe(401);
      expect(jwt.response.data.message).toBe('Bad credentials');

      offsetMs = 3601 * 1000;
      const expired = await failure(new Octokit({ baseUrl: github.url, auth: token, log: quiet }).rest.apps.listReposAccessibleToInstallation());
      expect(expired.status).toBe(401);
      expect(expired.response.data).toMatchObject({ message: 'Bad credentials', status: '401' });
    });
  });

  describe('GET /installation/repositories', () => {
    it.each([
      { repos: 0, pages: 1 },
      { repos: 1, pages: 1 },
      { repos: 100, pages: 1 },
      { repos: 250, pages: 3 },
    ])('pages $repos repositories in $pages request(s) of 100', async ({ repos, pages }) => {
      const installation = installationWith(repos);
      const octokit = asInstallation(installation.id);
      const before = github.server.count('listInstallationRepos');
      const all = await octokit.paginate(octokit.rest.apps.listReposAccessibleToInstallation, { per_page: 100 });
      expect(all.map((r) => r.full_name)).toEqual(Array.from({ length: repos }, (_, i) => `${installation.account.login}/repo-${i}`));
      expect(github.server.count('listInstallationRepos') - before).toBe(pages);

      const first = await octokit.rest.apps.listReposAccessibleToInstallation({ per_page: 100 });
      expect(first.data).toMatchObject({ total_count: repos, repository_selection: 'selected' });
      if (pages === 1) expect(first.headers.link).toBeUndefined();
      else {
        expect(first.headers.link).toContain(`<${github.url}/installation/repositories?per_page=100&page=2>; rel="next"`);
        expect(first.headers.link).toContain(`<${github.url}/installation/repositories?per_page=100&page=3>; rel="last"`);
      }
    });

    it('defaults to 30 per page and clamps per_page to 100', async () => {
      const installation = installationWith(150);
      const octokit = asInstallation(installation.id);
      expect((await octokit.rest.apps.listReposAccessibleToInstallation()).data.repositories).toHaveLength(30);
      expect((await octokit.rest.apps.listReposAccessibleToInstallation({ per_page: 500 })).data.repositories).toHaveLength(100);
    });

    it('answers a matching If-None-Match with an empty 304 that costs no rate limit, and a changed page with a new ETag', async () => {
      const installation = installationWith(3);
      const octokit = asInstallation(installation.id);
      const first = await octokit.rest.apps.listReposAccessibleToInstallation();
      const etag = first.headers.etag!;
      expect(etag).toMatch(/^W\/".+"$/);
      const notModified = await failure(octokit.rest.apps.listReposAccessibleToInstallation({ headers: { 'if-none-match': etag } }));
      expect(notModified.status).toBe(304);
      expect(notModified.response.data).toBe('');
      expect(notModified.response.headers['x-ratelimit-remaining']).toBe(first.headers['x-ratelimit-remaining']);
      expect(notModified.response.headers.etag).toBe(etag);

      github.addRepository(installation.id, { fullName: `${installation.account.login}/late` });
      const changed = await octokit.rest.apps.listReposAccessibleToInstallation({ headers: { 'if-none-match': etag } });
      expect(changed.status).toBe(200);
      expect(changed.headers.etag).not.toBe(etag);
    });
  });

  describe('GET /repos/{owner}/{repo}', () => {
    it('shows visible repositories case-insensitively, 404s invisible ones, and redirects a renamed one', async () => {
      const mine = installationWith(1, 'mine');
      installationWith(1, 'theirs');
      const octokit = asInstallation(mine.id);
      const { data } = await octokit.rest.repos.get({ owner: 'MINE', repo: 'Repo-0' });
      expect(data).toMatchObject({ full_name: 'mine/repo-0', default_branch: 'main', private: true, html_url: 'https://github.com/mine/repo-0' });

      const hidden = await failure(octokit.rest.repos.get({ owner: 'theirs', repo: 'repo-0' }));
      expect(hidden.status).toBe(404);
      expect(hidden.response.data).toMatchObject({ message: 'Not Found', status: '404' });

      github.renameRepository(data.id, 'mine/renamed');
      const moved = await octokit.rest.repos.get({ owner: 'mine', repo: 'repo-0' });
      expect(moved.data).toMatchObject({ id: data.id, full_name: 'mine/renamed' });
      expect(github.server.calls.slice(-2).map((c) => c.status)).toEqual([301, 200]);
    });
  });

  describe('rate limits', () => {
    it('puts x-ratelimit-* headers on successes and failures alike', async () => {
      const installation = installationWith(0);
      const octokit = asInstallation(installation.id);
      const ok = await octokit.rest.apps.listReposAccessibleToInstallation();
      const notFound = await failure(octokit.rest.repos.get({ owner: 'nobody', repo: 'nothing' }));
      const unauthenticated = await failure(new Octokit({ baseUrl: github.url, log: quiet }).rest.apps.listReposAccessibleToInstallation());
      expect(unauthenticated.status).toBe(401);
      for (const headers of [ok.headers as Record<string, string>, notFound.response.headers, unauthenticated.response.headers]) {
        for (const name of ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-used', 'x-ratelimit-reset', 'x-ratelimit-resource']) {
          expect(headers[name], name).toBeDefined();
        }
      }
      expect(Number(notFound.response.headers['x-ratelimit-remaining'])).toBe(Number(ok.headers['x-ratelimit-remaining']) - 1);
    });

    it.each([403, 429] as const)('exhausts the primary budget with %i, remaining 0 and a future reset, until the reset passes', async (status) => {
      const installation = installationWith(0);
      const octokit = asInstallation(installation.id);
      const reset = Math.floor(Date.now() / 1000) + 120;
      github.setRateLimit({ remaining: 1, reset, status });
      const last = await octokit.rest.apps.listReposAccessibleToInstallation();
      expect(last.headers['x-ratelimit-remaining']).toBe('0');
      const limited = await failure(octokit.rest.apps.listReposAccessibleToInstallation());
      expect(limited.status).toBe(status);
      expect(limited.response.data.message).toBe(`API rate limit exceeded for installation ID ${installation.id}.`);
      expect(limited.response.headers['x-ratelimit-remaining']).toBe('0');
      expect(limited.response.headers['x-ratelimit-reset']).toBe(String(reset));

      offsetMs = 121 * 1000;
      await expect(octokit.rest.apps.listReposAccessibleToInstallation()).resolves.toMatchObject({ status: 200 });
    });

    it('answers the secondary limit with 403, the GitHub message and retry-after', async () => {
      const installation = installationWith(0);
      const octokit = asInstallation(installation.id);
      await octokit.auth({ type: 'installation' });
      github.setSecondaryRateLimit({ retryAfterSeconds: 30 });
      const limited = await failure(octokit.rest.apps.listReposAccessibleToInstallation());
      expect(limited.status).toBe(403);
      expect(limited.response.data.message).toMatch(/^You have exceeded a secondary rate limit/);
      expect(limited.response.headers['retry-after']).toBe('30');
      github.setSecondaryRateLimit(null);
      await expect(octokit.rest.apps.listReposAccessibleToInstallation()).resolves.toMatchObject({ status: 200 });
    });
  });

  describe('OAuth code exchange and the user\'s installations (§1.7)', () => {
    const exchange = (body: Record<string, string>, contentType = 'application/json') =>
      fetch(`${github.url}/login/oauth/access_token`, {
        method: 'POST',
        headers: { accept: 'application/json', 'content-type': contentType },
        body: contentType === 'application/json' ? JSON.stringify(body) : new URLSearchParams(body).toString(),
      }).then(async (res) => ({ status: res.status, data: (await res.json()) as Record<string, string> }));
    const credentials = () => ({ client_id: github.clientId, client_secret: github.clientSecret });

    it('exchanges a code once for a user token (JSON or form); a used, unknown or expired code answers 200 with bad_verification_code', async () => {
      const code = github.issueOAuthCode('mona');
      const first = await exchange({ ...credentials(), code });
      expect(first).toEqual({ status: 200, data: { access_token: expect.stringMatching(/^ghu_/), token_type: 'bearer', scope: '' } });
      const badCode = { error: 'bad_verification_code', error_description: 'The code passed is incorrect or expired.', error_uri: expect.stringMatching(/^https:/) };
      expect(await exchange({ ...credentials(), code })).toEqual({ status: 200, data: badCode });
      expect(await exchange({ ...credentials(), code: 'nonsense' })).toEqual({ status: 200, data: badCode });
      expect((await exchange({ ...credentials(), code: github.issueOAuthCode('mona') }, 'application/x-www-form-urlencoded')).data.access_token).toMatch(/^ghu_/);
      const stale = github.issueOAuthCode('mona');
      offsetMs = 11 * 60 * 1000;
      expect(await exchange({ ...credentials(), code: stale })).toEqual({ status: 200, data: badCode });
    });

    it('refuses wrong client credentials, still with 200 and an error', async () => {
      const { data } = await exchange({ client_id: github.clientId, client_secret: 'wrong', code: github.issueOAuthCode('mona') });
      expect(data).toMatchObject({ error: 'incorrect_client_credentials' });
      expect(data).not.toHaveProperty('access_token');
    });

    it("shows the token's user (/user) and that user's membership of an organization (role, state; 404 for none; 403 without Members: read)", async () => {
      const login = `user-${++orgs}`;
      const org = `org-${++orgs}`;
      const installation = github.addInstallation({ account: { login: org } });
      const { data } = await exchange({ ...credentials(), code: github.issueOAuthCode(login) });
      const user = new Octokit({ baseUrl: github.url, auth: data.access_token, log: quiet });

      const me = (await user.rest.users.getAuthenticated()).data;
      expect(me).toMatchObject({ login, id: github.account(login).id, type: 'User' });
      expect(github.addInstallation({ account: { login, type: 'User' } }).account.id).toBe(me.id);

      expect((await failure(user.rest.orgs.getMembershipForAuthenticatedUser({ org }))).response.data).toMatchObject({ message: 'Not Found', status: '404' });
      github.setOrgMembership(org, login, { role: 'admin', state: 'pending' });
      // Logins are case-insensitive.
      const pending = (await user.rest.orgs.getMembershipForAuthenticatedUser({ org: org.toUpperCase() })).data;
      expect(pending).toMatchObject({ state: 'pending', role: 'admin', organization: { login: org, id: installation.account.id }, user: { login, id: me.id } });
      github.setOrgMembership(org, login, { role: 'member' });
      expect((await user.rest.orgs.getMembershipForAuthenticatedUser({ org })).data).toMatchObject({ state: 'active', role: 'member' });
      expect((await failure(user.rest.orgs.getMembershipForAuthenticatedUser({ org: `missing-${orgs}` }))).status).toBe(404);

      github.setMembersPermission(false);
      try {
        const refused = await failure(user.rest.orgs.getMembershipForAuthenticatedUser({ org }));
        expect(refused.status).toBe(403);
        expect(refused.response.data).toMatchObject({ message: 'Resource not accessible by integration' });
      } finally {
        github.setMembersPermission(true);
      }
      // Only a user token: an installation token gets 401.
      const installationToken = await mintToken(installation.id);
      expect((await failure(new Octokit({ baseUrl: github.url, auth: installationToken, log: quiet }).rest.users.getAuthenticated())).status).toBe(401);
    });

    it('refuses a membership of an organization enforcing SAML single sign-on (403, X-GitHub-SSO), and records each call\'s headers but its credentials', async () => {
      const login = `user-${++orgs}`;
      const org = `org-${++orgs}`;
      github.addInstallation({ account: { login: org } });
      github.setOrgMembership(org, login, { role: 'admin' });
      const { data } = await exchange({ ...credentials(), code: github.issueOAuthCode(login) });
      const user = new Octokit({ baseUrl: github.url, auth: data.access_token, log: quiet });
      github.setSamlEnforcement(org.toUpperCase(), true);
      try {
        const refused = await failure(user.rest.orgs.getMembershipForAuthenticatedUser({ org }));
        expect(refused.status).toBe(403);
        expect(refused.response.data).toMatchObject({ message: 'Resource protected by organization SAML enforcement. You must grant your OAuth token access to this organization.', status: '403' });
        expect(refused.response.headers['x-github-sso']).toMatch(new RegExp(`^required; url=${github.url}/orgs/${org}/sso\\?authorization_request=[0-9a-f]+$`));
      } finally {
        github.setSamlEnforcement(org, false);
      }
      expect((await user.rest.orgs.getMembershipForAuthenticatedUser({ org })).data).toMatchObject({ state: 'active', role: 'admin' });

      const calls = github.server.calls.length;
      await user.request('GET /user', { headers: { 'x-github-api-version': '2022-11-28' } });
      const [call] = github.server.calls.slice(calls);
      expect(call!.headers).toMatchObject({ 'x-github-api-version': '2022-11-28', 'user-agent': expect.any(String) });
      expect(call!.headers).not.toHaveProperty('authorization');
      expect(JSON.stringify(github.server.calls)).not.toContain(data.access_token);
    });

    it("lists, page by page, the installations the token's user can reach, with Link headers Octokit follows", async () => {
      const login = `user-${++orgs}`;
      const reachable = Array.from({ length: 5 }, () => github.addInstallation({ account: { login: `acct-${++orgs}` } }).id);
      for (const id of reachable) github.grantInstallation(login, id);
      github.addInstallation({ account: { login: 'someone-else' } });
      const { data } = await exchange({ ...credentials(), code: github.issueOAuthCode(login) });
      const user = new Octokit({ baseUrl: github.url, auth: data.access_token, log: quiet });

      const first = await user.rest.apps.listInstallationsForAuthenticatedUser({ per_page: 2 });
      expect(first.data.total_count).toBe(5);
      expect(first.data.installations.map((i) => i.id)).toEqual(reachable.slice(0, 2));
      expect(first.headers.link).toContain(`<${github.url}/user/installations?per_page=2&page=2>; rel="next"`);
      const all = await user.paginate(user.rest.apps.listInstallationsForAuthenticatedUser, { per_page: 2 });
      expect(all.map((i) => i.id)).toEqual(reachable);

      // Bearer works as well as token; an unknown token and an installation token do not.
      const bearer = await fetch(`${github.url}/user/installations`, { headers: { authorization: `Bearer ${data.access_token}` } });
      expect(bearer.status).toBe(200);
      const unknown = await failure(new Octokit({ baseUrl: github.url, auth: 'ghu_unknown', log: quiet }).rest.apps.listInstallationsForAuthenticatedUser());
      expect(unknown.status).toBe(401);
      expect(unknown.response.data).toMatchObject({ message: 'Bad credentials', status: '401' });
      const installationToken = await mintToken(reachable[0]!);
      expect((await failure(new Octokit({ baseUrl: github.url, auth: installationToken, log: quiet }).rest.apps.listInstallationsForAuthenticatedUser())).status).toBe(401);
    });
  });
});
