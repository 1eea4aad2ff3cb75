import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockExternalKey } from '../../lib/db/repositories/connections.ts';
import type { EventResult } from '../../workflows/contract.ts';
import { githubError, startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedConnection } from '../support/attachments.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

type Org = Awaited<ReturnType<typeof createOrgWithToken>>;

/**
 * Binding a GitHub App installation (api-contract.md, GitHub install rows): only through the
 * install redirect's single-use state and the setup callback's proof (the OAuth code exchanged
 * for the installing user's token, the installation on a page of /user/installations, and the
 * user administering its account: that user, or an active owner of that organization), or by the
 * admin. Real Octokit against the fake GitHub, which serves both the web and the REST side.
 */
describe('GitHub installations are bound only with proof', () => {
  let h: Harness;
  let github: FakeGithub;
  let users = 0;

  beforeAll(async () => {
    github = await startFakeGithub();
    h = await startHarness({
      github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem, appName: 'forgelink-test', clientId: github.clientId, clientSecret: github.clientSecret },
    });
  });
  afterAll(async () => {
    await h?.close();
    await github?.close();
  });

  /** A GitHub user who installed the App on an organization they own (role admin, active). */
  function installer(login = `user-${++users}`) {
    const installation = github.addInstallation({ account: { login: `${login}-org` } });
    github.grantInstallation(login, installation.id);
    github.setOrgMembership(`${login}-org`, login, { role: 'admin' });
    return { login, installation };
  }

  /** The cookie each state's install redirect set in the browser that asked for it. */
  const browsers = new Map<string, string>();

  /** The state of a fresh install redirect for the organization (its browser keeps the cookie that came with it). */
  async function installState(org: Org): Promise<string> {
    const redirect = await h.request('GET', `/api/v1/orgs/${org.org.slug}/connections/github/install`, { token: org.token });
    expect(redirect.status).toBe(302);
    const location = new URL(redirect.headers.get('location')!);
    expect(location.origin + location.pathname).toBe(`${github.url}/apps/forgelink-test/installations/new`);
    const state = location.searchParams.get('state')!;
    const cookie = redirect.headers.get('set-cookie')!;
    expect(cookie).toMatch(/^forgelink_github_install=[\w-]{43}; Max-Age=900; Path=\/api\/github\/setup; HttpOnly; Secure; SameSite=Lax$/);
    browsers.set(state, cookie.split(';')[0]!);
    return state;
  }

  /** GitHub sends the browser back: by default the one that started the install, with its cookie; `cookie` names another (null: none). */
  const setup = (query: { installationId: number | string; state: string; code: string; cookie?: string | null }) => {
    const cookie = query.cookie === undefined ? browsers.get(query.state) : query.cookie;
    return h.request('GET', `/api/github/setup?installation_id=${query.installationId}&setup_action=install&state=${encodeURIComponent(query.state)}&code=${encodeURIComponent(query.code)}`, {
      headers: cookie ? { cookie } : {},
    });
  };

  const bindings = (installationId: number) =>
    h.db.selectFrom('connections').select(['organization_id', 'status']).where('provider', '=', 'github').where('external_key', '=', String(installationId)).execute();

  async function expectProblem(res: Response, status: number): Promise<string> {
    expect(res.status).toBe(status);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    return ((await res.json()) as { detail: string }).detail;
  }

  it('binds an installation the installing user reaches, found on a later page of /user/installations; the secrets stay out', async () => {
    const a = await createOrgWithToken(h);
    const { login } = installer();
    // Over a hundred installations come first: the proof has to walk every page.
    for (let i = 0; i < 100; i++) github.grantInstallation(login, github.addInstallation({ account: { login: `${login}-other-${i}` } }).id);
    const reachable = installer(login).installation;
    const calls = github.server.calls.length;

    const res = await setup({ installationId: reachable.id, state: await installState(a), code: github.issueOAuthCode(login) });
    expect(res.status, await res.clone().text()).toBe(202);
    const { id, workflowId } = (await res.json()) as { id: string; workflowId: string };
    expect(await resultOf<{ status: string }>(h, workflowId)).toMatchObject({ status: 'active' });
    expect(await bindings(reachable.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    const asked = github.server.calls.slice(calls).filter((c) => c.operation === 'exchangeOAuthCode' || c.operation === 'listUserInstallations');
    expect(asked.map((c) => `${c.operation} ${c.status}`)).toEqual(['exchangeOAuthCode 200', 'listUserInstallations 200', 'listUserInstallations 200']);

    // Neither the client secret nor the user token reaches the logs, the run or the database.
    const everything = [h.logs.join('\n'), await historyText(h, workflowId), JSON.stringify(await h.db.selectFrom('connections').selectAll().where('id', '=', id).execute())].join('\n');
    expect(everything).not.toContain(github.clientSecret);
    expect(everything).not.toMatch(/ghu_/);
  });

  it("refuses (403) B's setup callback for A's installation and binds nothing", async () => {
    const a = await createOrgWithToken(h);
    const b = await createOrgWithToken(h);
    const victim = installer();
    const bound = await setup({ installationId: victim.installation.id, state: await installState(a), code: github.issueOAuthCode(victim.login) });
    expect(bound.status).toBe(202);
    await resultOf(h, ((await bound.json()) as { workflowId: string }).workflowId);

    // B installs the App on its own account, then swaps in A's installation id.
    const attacker = installer();
    const detail = await expectProblem(await setup({ installationId: victim.installation.id, state: await installState(b), code: github.issueOAuthCode(attacker.login) }), 403);
    expect(detail).toContain(`cannot reach installation ${victim.installation.id}`);
    expect(await bindings(victim.installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    // Nor does a code GitHub does not accept bind anything.
    expect(await expectProblem(await setup({ installationId: victim.installation.id, state: await installState(b), code: 'not-a-code' }), 403)).toMatch(/bad_verification_code/);
    expect(await bindings(victim.installation.id)).toHaveLength(1);
  });

  it('refuses a state used before, even with a good code, and a forged or unknown one', async () => {
    const a = await createOrgWithToken(h);
    const first = installer();
    const state = await installState(a);
    const ok = await setup({ installationId: first.installation.id, state, code: github.issueOAuthCode(first.login) });
    expect(ok.status).toBe(202);
    await resultOf(h, ((await ok.json()) as { workflowId: string }).workflowId);

    const second = installer();
    expect(await expectProblem(await setup({ installationId: second.installation.id, state, code: github.issueOAuthCode(second.login) }), 403)).toMatch(/already used/);
    expect(await bindings(second.installation.id)).toEqual([]);
    await expectProblem(await setup({ installationId: second.installation.id, state: `${state.slice(0, -2)}xx`, code: github.issueOAuthCode(second.login) }), 400);
    expect(await bindings(second.installation.id)).toEqual([]);
    // Without a code there is nothing to prove with.
    await expectProblem(await h.request('GET', `/api/github/setup?installation_id=${second.installation.id}&state=${encodeURIComponent(await installState(a))}`), 400);
  });

  it('refuses (403) a state followed in a browser other than the one that started the install (login CSRF), and binds nothing', async () => {
    const attacker = await createOrgWithToken(h);
    const victimOrg = await createOrgWithToken(h);
    const victim = installer();
    // The attacker starts an install for its own organization and sends the link on; the victim
    // installs, and GitHub brings the victim's browser back with the attacker's state and the victim's code.
    const lured = await installState(attacker);
    expect(await expectProblem(await setup({ installationId: victim.installation.id, state: lured, code: github.issueOAuthCode(victim.login), cookie: null }), 403)).toMatch(/not started in this browser/);
    // The victim's browser holds a cookie of its own install: not the one of this state.
    const own = browsers.get(await installState(victimOrg))!;
    expect(await expectProblem(await setup({ installationId: victim.installation.id, state: lured, code: github.issueOAuthCode(victim.login), cookie: own }), 403)).toMatch(/not started in this browser/);
    expect(await bindings(victim.installation.id)).toEqual([]);

    // In the browser that started it, the state still binds what that browser's user installed (the refusals did not use it up); the cookie is then cleared.
    const attackers = installer();
    const res = await setup({ installationId: attackers.installation.id, state: lured, code: github.issueOAuthCode(attackers.login) });
    expect(res.status, await res.clone().text()).toBe(202);
    expect(res.headers.get('set-cookie')).toMatch(/^forgelink_github_install=; Max-Age=0; Path=\/api\/github\/setup;/);
    await resultOf(h, ((await res.json()) as { workflowId: string }).workflowId);
    expect(await bindings(attackers.installation.id)).toEqual([{ organization_id: attacker.org.id, status: 'active' }]);
  });

  it('answers 503 and binds nothing when GitHub fails to answer the code exchange', async () => {
    const a = await createOrgWithToken(h);
    const { login, installation } = installer();
    github.server.failNext('exchangeOAuthCode', 1, { status: 502, body: { message: 'Bad Gateway' } });
    await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 503);
    expect(await bindings(installation.id)).toEqual([]);
    expect(h.logs.join('\n')).not.toContain(github.clientSecret);
  });

  const connectionsOf = (org: Org) => h.db.selectFrom('connections').select('id').where('organization_id', '=', org.org.id).execute();

  it("refuses (403) a user who reaches an installation without administering its account, and stores nothing", async () => {
    const a = await createOrgWithToken(h);
    const org = `acme-${++users}`;
    const installation = github.addInstallation({ account: { login: org } });
    const on = `the installation is not bound: installation ${installation.id} is on the organization ${org}`;
    // GitHub lists the installation to each of them (explicit read on one of its repositories is enough).
    const cases = [
      { login: `outside-collaborator-${users}`, membership: null, detail: (l: string) => `${on}, of which the GitHub user ${l} who authorized the App is not a member: only an owner of ${org} can bind it` },
      { login: `member-${users}`, membership: { role: 'member' as const }, detail: (l: string) => `${on}, where the GitHub user ${l} who authorized the App is a member: only an active owner (role admin) of ${org} can bind it` },
      { login: `billing-${users}`, membership: { role: 'billing_manager' as const }, detail: (l: string) => `${on}, where the GitHub user ${l} who authorized the App is a billing_manager: only an active owner (role admin) of ${org} can bind it` },
      { login: `invited-owner-${users}`, membership: { role: 'admin' as const, state: 'pending' as const }, detail: (l: string) => `${on}, where the GitHub user ${l} who authorized the App is a pending owner: only an active owner (role admin) of ${org} can bind it` },
    ];
    for (const { login, membership, detail } of cases) {
      github.grantInstallation(login, installation.id);
      if (membership) github.setOrgMembership(org, login, membership);
      const res = await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) });
      expect(await expectProblem(res, 403), login).toBe(detail(login));
    }
    // Someone else's user installation, reached as a collaborator on one of its repositories.
    const owner = `owner-${++users}`;
    const theirs = github.addInstallation({ account: { login: owner, type: 'User' } });
    const collaborator = `collaborator-${users}`;
    github.grantInstallation(collaborator, theirs.id);
    const refused = await setup({ installationId: theirs.id, state: await installState(a), code: github.issueOAuthCode(collaborator) });
    expect(await expectProblem(refused, 403)).toBe(
      `the installation is not bound: installation ${theirs.id} is on the account ${owner}, not on the GitHub user ${collaborator} who authorized the App: only ${owner} can bind it`,
    );
    expect(await bindings(installation.id)).toEqual([]);
    expect(await bindings(theirs.id)).toEqual([]);
    expect(await connectionsOf(a)).toEqual([]);
    expect(h.logs.join('\n')).not.toMatch(/ghu_/);
  });

  it("binds an organization's installation for an active owner, and a user's installation for that user", async () => {
    const a = await createOrgWithToken(h);
    const { login, installation } = installer();
    const calls = github.server.calls.length;
    const res = await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) });
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await resultOf<{ status: string }>(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'active' });
    expect(await bindings(installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    const proof = ['exchangeOAuthCode', 'listUserInstallations', 'getAuthenticatedUser', 'getOrgMembershipForUser'];
    const asked = github.server.calls.slice(calls).filter((c) => proof.includes(c.operation));
    expect(asked.map((c) => `${c.operation} ${c.status}`)).toEqual(proof.map((operation) => `${operation} 200`));

    const b = await createOrgWithToken(h);
    const mona = `mona-${++users}`;
    const own = github.addInstallation({ account: { login: mona, type: 'User' } });
    github.grantInstallation(mona, own.id);
    const mine = await setup({ installationId: own.id, state: await installState(b), code: github.issueOAuthCode(mona) });
    expect(mine.status, await mine.clone().text()).toBe(202);
    expect(await resultOf<{ status: string }>(h, ((await mine.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'active' });
    expect(await bindings(own.id)).toEqual([{ organization_id: b.org.id, status: 'active' }]);
  });

  it('refuses (403) an owner whose membership GitHub will not show (the App lacks Members: read), saying so', async () => {
    const a = await createOrgWithToken(h);
    const { login, installation } = installer();
    github.setMembersPermission(false);
    try {
      const detail = await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 403);
      expect(detail).toBe(
        `the installation is not bound: installation ${installation.id} is on the organization ${login}-org, and GitHub would not show the GitHub user ${login} who authorized the App's membership of it (Resource not accessible by integration): the App needs the organization permission Members: read, accepted by ${login}-org`,
      );
    } finally {
      github.setMembersPermission(true);
    }
    expect(await bindings(installation.id)).toEqual([]);
  });

  it('refuses (409) an installation another organization binds, even to its owner, until it is disconnected there; the admin token may, with a warning', async () => {
    const a = await createOrgWithToken(h);
    const b = await createOrgWithToken(h);
    const { login, installation } = installer();
    const first = await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) });
    const { id: aConnection, workflowId } = (await first.json()) as { id: string; workflowId: string };
    await resultOf(h, workflowId);

    const detail = await expectProblem(await setup({ installationId: installation.id, state: await installState(b), code: github.issueOAuthCode(login) }), 409);
    expect(detail).toBe(
      `installation ${installation.id} is already bound to another forgelink organization; an installation is bound to one organization: disconnect it there first, or ask the operator`,
    );
    expect(detail).not.toContain(a.org.slug);
    expect(await bindings(installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    // The operator, asked, finds which organizations hold it in the log (the answer does not say).
    const refusal = h.logs.filter((line) => line.includes('the install flow refused a GitHub installation other organizations already bind') && line.includes(b.org.id));
    expect(refusal).toHaveLength(1);
    expect(JSON.parse(refusal[0]!)).toMatchObject({ level: 40 /* warn */, organizationId: b.org.id, installationId: String(installation.id), boundTo: [a.org.id] });
    expect(refusal[0]).not.toMatch(/ghu_|code=/);

    // Disconnected in A, it binds to B.
    const disconnect = await h.request('DELETE', `/api/v1/orgs/${a.org.slug}/connections/${aConnection}`, { token: a.token });
    expect(disconnect.status).toBe(202);
    await resultOf(h, ((await disconnect.json()) as { workflowId: string }).workflowId);
    const second = await setup({ installationId: installation.id, state: await installState(b), code: github.issueOAuthCode(login) });
    expect(second.status, await second.clone().text()).toBe(202);
    await resultOf(h, ((await second.json()) as { workflowId: string }).workflowId);

    // The operator may bind it to a third organization as well: allowed, and logged.
    const c = await createOrgWithToken(h);
    const admin = await h.request('POST', `/api/v1/orgs/${c.org.slug}/connections`, { token: h.adminToken, body: { provider: 'github', installationId: installation.id } });
    expect(admin.status, await admin.clone().text()).toBe(202);
    await resultOf(h, ((await admin.json()) as { workflowId: string }).workflowId);
    const warning = h.logs.find((line) => line.includes('the admin token bound a GitHub installation other organizations already bind') && line.includes(c.org.id));
    expect(warning).toContain(b.org.id);
    expect((await bindings(installation.id)).filter((row) => row.status === 'active').map((row) => row.organization_id).sort()).toEqual([b.org.id, c.org.id].sort());
  });

  it("does not bind an installation to a second organization while a first one's bind holds it (one lock per installation)", async () => {
    const a = await createOrgWithToken(h);
    const b = await createOrgWithToken(h);
    const { login, installation } = installer();
    const state = await installState(b);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const holding = new Promise<void>((resolve) => (locked = resolve));
    // A's bind, in flight: it holds the installation's lock and has inserted its row, not yet committed.
    const aBind = h.db.transaction().execute(async (trx) => {
      await lockExternalKey(trx, 'github', String(installation.id));
      await trx.insertInto('connections').values({ id: randomUUID(), organization_id: a.org.id, provider: 'github', base_url: github.url, external_key: String(installation.id), status: 'active' }).execute();
      locked();
      await released;
    });
    await holding;
    const bBind = setup({ installationId: installation.id, state, code: github.issueOAuthCode(login) });
    // B's bind waits for the lock (seen in pg_locks), or answers without it.
    const waiting = (async () => {
      for (let i = 0; i < 400; i++) {
        const rows = await sql<{ n: number }>`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())`.execute(h.db);
        if (rows.rows[0]!.n > 0) return 'waiting';
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return 'never waited';
    })();
    expect(await Promise.race([waiting, bBind.then(() => 'answered while A held the lock')])).toBe('waiting');
    release();
    await aBind;
    await expectProblem(await bBind, 409);
    expect(await bindings(installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
  });

  it('answers one of two setups of one organization for one installation at once 202 and the other 409, never 500', async () => {
    const a = await createOrgWithToken(h);
    const { login, installation } = installer();
    const states = [await installState(a), await installState(a)];
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const holding = new Promise<void>((resolve) => (locked = resolve));
    // Someone holds the installation's lock, so that both setups are past their proof and wait for it together.
    const holder = h.db.transaction().execute(async (trx) => {
      await lockExternalKey(trx, 'github', String(installation.id));
      locked();
      await released;
    });
    await holding;
    const binds = states.map((state) => setup({ installationId: installation.id, state, code: github.issueOAuthCode(login) }));
    let waiting = 0;
    for (let i = 0; i < 1200 && waiting < 2; i++) {
      const rows = await sql<{ n: number }>`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())`.execute(h.db);
      waiting = rows.rows[0]!.n;
      if (waiting < 2) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    release();
    await holder;
    const answers = await Promise.all(binds);
    expect(answers.map((res) => res.status).sort(), 'both setups waited for the lock').toEqual([202, 409]);
    expect(waiting).toBe(2);
    const accepted = (await answers.find((res) => res.status === 202)!.json()) as { id: string; workflowId: string };
    const conflict = answers.find((res) => res.status === 409)!;
    expect(conflict.headers.get('content-type')).toBe('application/problem+json');
    expect(await conflict.json()).toMatchObject({
      connectionId: accepted.id,
      detail: `connection ${accepted.id} already connects this installation; rotate its credential with PUT .../connections/${accepted.id}/credential`,
    });
    await resultOf(h, accepted.workflowId);
    expect(await bindings(installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    expect(h.logs.join('\n')).not.toContain('unhandled error');
  });

  it("answers 403 with GitHub's words when GitHub refuses the user's token a call (asking again would not help), 503 for a rate limit", async () => {
    const a = await createOrgWithToken(h);
    const { login, installation } = installer();
    const message = 'You must authenticate with an access token authorized to a GitHub App in order to list installations';
    github.server.failNext('listUserInstallations', 1, githubError(403, message));
    expect(await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 403)).toBe(
      `the installation is not bound: GitHub answered 403 to GET /user/installations for the GitHub user who authorized the App (${message})`,
    );
    github.server.failNext('getAuthenticatedUser', 1, githubError(404, 'Not Found'));
    expect(await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 403)).toBe(
      'the installation is not bound: GitHub answered 404 to GET /user for the GitHub user who authorized the App (Not Found)',
    );
    github.setSamlEnforcement(`${login}-org`, true);
    try {
      expect(await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 403)).toMatch(
        /\(Resource protected by organization SAML enforcement\. You must grant your OAuth token access to this organization\.\): .* enforces SAML single sign-on/,
      );
    } finally {
      github.setSamlEnforcement(`${login}-org`, false);
    }
    github.server.failNext('listUserInstallations', 1, { ...githubError(403, 'API rate limit exceeded for user.'), headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(Math.floor(Date.now() / 1000) + 60) } });
    await expectProblem(await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) }), 503);
    expect(await bindings(installation.id)).toEqual([]);
    expect(h.logs.join('\n')).not.toMatch(/ghu_/);
  });

  it('lets only the admin bind an installation directly: an organization token gets 403', async () => {
    const a = await createOrgWithToken(h);
    const { installation } = installer();
    const path = `/api/v1/orgs/${a.org.slug}/connections`;
    const refused = await h.request('POST', path, { token: a.token, body: { provider: 'github', installationId: installation.id } });
    expect(await expectProblem(refused, 403)).toMatch(/admin/);
    expect(await bindings(installation.id)).toEqual([]);

    const res = await h.request('POST', path, { token: h.adminToken, body: { provider: 'github', installationId: installation.id } });
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await resultOf<{ status: string }>(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'active' });
    expect(await bindings(installation.id)).toEqual([{ organization_id: a.org.id, status: 'active' }]);
    // Other providers stay open to the organization.
    expect((await h.request('POST', path, { token: a.token, body: { provider: 'gitlab', token: '' } })).status).toBe(400);
  });

  it("delivers an installation's events only to connections bound to that installation", async () => {
    const a = await createOrgWithToken(h);
    const b = await createOrgWithToken(h);
    const { login, installation } = installer();
    const res = await setup({ installationId: installation.id, state: await installState(a), code: github.issueOAuthCode(login) });
    const { id: connectionId, workflowId } = (await res.json()) as { id: string; workflowId: string };
    await resultOf(h, workflowId);
    const repository = { externalId: uniqueExternalId('github'), fullName: `${login}-org/service` };
    await seedAttachedRepository(h, { organizationId: a.org.id, provider: 'github', connectionId, ...repository });
    // B holds the same repository attached through a connection bound to another installation.
    const elsewhere = await seedConnection(h, { organizationId: b.org.id, provider: 'github', baseUrl: github.url, externalKey: String(installer().installation.id) });
    await seedAttachedRepository(h, { organizationId: b.org.id, provider: 'github', connectionId: elsewhere, ...repository });

    const push = delivery('github', withRepository('github', fixture(PUSH_FIXTURES.github), { ...repository, installationId: String(installation.id) }), {
      deliveryId: randomUUID(),
      secret: TEST_WEBHOOK_SECRETS.github,
    });
    const accepted = await send(h, push);
    expect(accepted.status).toBe(202);
    expect((await resultOf<EventResult>(h, ((await accepted.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);
    expect((await eventsOfDelivery(h.db, 'github', push.deliveryId)).map((e) => e.organization_id)).toEqual([a.org.id]);

    // The same push from an installation nobody bound reaches no one.
    const stray = delivery('github', withRepository('github', fixture(PUSH_FIXTURES.github), { ...repository, installationId: '999999999' }), {
      deliveryId: randomUUID(),
      secret: TEST_WEBHOOK_SECRETS.github,
    });
    const ignored = await send(h, stray);
    expect(ignored.status).toBe(200);
    expect(await ignored.json()).toMatchObject({ status: 'ignored' });
  });
});
