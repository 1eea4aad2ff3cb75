import { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open } from '../../lib/crypto.ts';
import { MAX_CONNECTIONS_PER_ORGANIZATION } from '../../api/routes/connections.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { manualHold, startFlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

const ALL_SCOPES = ['api', 'read_user', 'read_repository'];

describe('connect GitLab (real Temporal, real PostgreSQL, fake GitLab over HTTP)', () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  let org: { id: string; slug: string };
  let orgToken: string;
  let n = 0;

  beforeAll(async () => {
    [h, gitlab] = await Promise.all([startHarness(), startFakeGitlab()]);
    ({ org, token: orgToken } = await createOrgWithToken(h));
  });
  afterAll(async () => {
    await h?.close();
    await gitlab?.close();
  });

  /** A token unique to the test, so no assertion can pass on another test's data. */
  function newToken(options: { scopes?: string[]; revoked?: boolean; expiresAt?: string } = {}) {
    const token = `glpat-${++n}-${Math.random().toString(36).slice(2)}SECRET`;
    gitlab.addToken({ token, username: `user${n}`, scopes: options.scopes ?? ALL_SCOPES, revoked: options.revoked, expiresAt: options.expiresAt });
    return token;
  }

  async function connect(token: string) {
    const res = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, {
      token: orgToken,
      body: { provider: 'gitlab', baseUrl: gitlab.url, token },
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { id: string; status: string; workflowId: string };
    expect(body.status).toBe('pending');
    const result = await resultOf<{ status: string; reason?: string }>(h, body.workflowId);
    return { ...body, result };
  }

  async function getConnection(id: string) {
    const res = await h.request('GET', `/api/v1/orgs/${org.slug}/connections/${id}`, { token: orgToken });
    expect(res.status).toBe(200);
    return (await res.json()) as Record<string, unknown>;
  }

  it('becomes active, stores the token sealed, and never leaks it', async () => {
    const token = newToken();
    const { id, workflowId, result } = await connect(token);
    expect(result.status).toBe('active');
    const connection = await getConnection(id);
    expect(connection).toMatchObject({ id, provider: 'gitlab', baseUrl: gitlab.url, status: 'active' });
    expect(connection).not.toHaveProperty('reason');

    // Sealed in the database: not plaintext, but it opens to the token with the connection as context.
    const row = await h.db.selectFrom('connections').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    expect(row.pending_credential).toBeNull();
    expect(row.credential).not.toContain(token);
    expect(open(h.keys, row.credential!, id)).toBe(token);
    const dump = JSON.stringify(await h.db.selectFrom('connections').selectAll().execute());
    expect(dump).not.toContain(token);

    // Not in the run's full history, not in any log line, not in any API answer.
    expect(await historyText(h, workflowId)).not.toContain(token);
    expect(h.logs.join('\n')).not.toContain(token);
    const list = await h.request('GET', `/api/v1/orgs/${org.slug}/connections`, { token: orgToken });
    expect(await list.text()).not.toContain(token);

    // The run, with its Temporal UI link.
    const run = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token: orgToken });
    expect(run.status).toBe(200);
    const runBody = (await run.json()) as { status: string; result: { status: string }; uiUrl: string };
    expect(runBody.status).toBe('COMPLETED');
    expect(runBody.result.status).toBe('active');
    expect(runBody.uiUrl).toMatch(new RegExp(`/namespaces/default/workflows/${encodeURIComponent(workflowId)}/[0-9a-f-]+/history$`));
    expect(JSON.stringify(runBody)).not.toContain(token);
    await recordHistory(h.client, workflowId, 'connect-active');
  });

  it('disconnects: the credential is deleted and the status is disconnected', async () => {
    const { id } = await connect(newToken());
    const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${id}`, { token: orgToken });
    expect(res.status).toBe(202);
    await resultOf(h, ((await res.json()) as { workflowId: string }).workflowId);
    expect((await getConnection(id)).status).toBe('disconnected');
    const row = await h.db.selectFrom('connections').select(['credential', 'pending_credential']).where('id', '=', id).executeTakeFirstOrThrow();
    expect(row).toEqual({ credential: null, pending_credential: null });
  });

  it('fails naming the missing scope', async () => {
    const { id, result } = await connect(newToken({ scopes: ['api', 'read_repository'] }));
    expect(result.status).toBe('failed');
    const connection = await getConnection(id);
    expect(connection.status).toBe('failed');
    expect(connection.reason).toContain('read_user');
    expect(connection.reason).not.toContain('read_repository');
  });

  it('fails on a revoked token (401) without retrying', async () => {
    const before = gitlab.server.count('tokenSelf');
    const token = newToken();
    gitlab.revokeToken(token);
    const { id, result } = await connect(token);
    expect(result.status).toBe('failed');
    expect((await getConnection(id)).reason).toMatch(/revoked/);
    expect(gitlab.server.count('tokenSelf') - before).toBe(1);
  });

  it('keeps a token its server echoes back out of the reason, the run and its history', async () => {
    const token = newToken();
    const basic = Buffer.from(`PAT:${token}`).toString('base64');
    // A server (or a proxy before it) that repeats what it was sent in its error body.
    gitlab.server.failNext('tokenSelf', 1, { status: 403, body: { message: `token ${token} may not read_user (Authorization: Basic ${basic})` } });
    const { id, workflowId, result } = await connect(token);
    expect(result.status).toBe('failed');
    const connection = await getConnection(id);
    expect(connection.reason).toContain('may not read_user');
    expect(connection.reason).toContain('[redacted]');
    for (const text of [String(connection.reason), JSON.stringify(result), await historyText(h, workflowId)]) {
      expect(text).not.toContain(token);
      expect(text).not.toContain(basic);
    }
  });

  it('fails on an unknown token with a 401 reason', async () => {
    const { id } = await connect('glpat-never-issued');
    const connection = await getConnection(id);
    expect(connection.status).toBe('failed');
    expect(connection.reason).toMatch(/rejected by GitLab \(401\)/);
  });

  it('fails on an expired token', async () => {
    const { id, result } = await connect(newToken({ expiresAt: '2020-01-31' }));
    expect(result.status).toBe('failed');
    expect((await getConnection(id)).reason).toMatch(/expired/);
  });

  it('retries 5xx until GitLab answers', async () => {
    const before = gitlab.server.count('tokenSelf');
    gitlab.server.failNext('tokenSelf', 2, { status: 502, text: 'Bad Gateway' });
    const { id, result } = await connect(newToken());
    expect(result.status).toBe('active');
    expect((await getConnection(id)).status).toBe('active');
    expect(gitlab.server.count('tokenSelf') - before).toBe(3);
  });

  it('waits for Retry-After on 429 and then succeeds', async () => {
    const before = gitlab.server.count('tokenSelf');
    gitlab.server.failNext('tokenSelf', 1, {
      status: 429,
      text: 'Retry later',
      headers: { 'retry-after': '3', 'ratelimit-resettime': new Date(Date.now() + 3000).toUTCString() },
    });
    const { workflowId, result } = await connect(newToken());
    expect(result.status).toBe('active');
    expect(gitlab.server.count('tokenSelf') - before).toBe(2);
    const description = await h.client.workflow.getHandle(workflowId).describe();
    const elapsed = description.closeTime!.getTime() - description.startTime.getTime();
    // gitbeaker alone would retry within ~0.3 s; the activity honours the 3 s Retry-After instead.
    expect(elapsed).toBeGreaterThanOrEqual(3000);
  });

  it.each(['0.0000001', '0.5'])('takes a Retry-After of %s s (not whole seconds) as the next whole second: the worker goes on and the connect succeeds', async (retryAfter) => {
    const before = gitlab.server.count('tokenSelf');
    // A tenant's server chooses this header. Passed on as "1e-7s", Temporal refused the failure's retry delay and the whole worker failed.
    gitlab.server.failNext('tokenSelf', 1, { status: 429, text: 'Retry later', headers: { 'retry-after': retryAfter } });
    const { workflowId, result } = await connect(newToken());
    expect(result.status).toBe('active');
    expect(gitlab.server.count('tokenSelf') - before).toBe(2);
    const description = await h.client.workflow.getHandle(workflowId).describe();
    expect(description.closeTime!.getTime() - description.startTime.getTime()).toBeGreaterThanOrEqual(1000);
  });

  it("hides one organization's connections and runs from another", async () => {
    const { id, workflowId } = await connect(newToken());
    const other = await createOrgWithToken(h);
    const asOther = (path: string) => h.request('GET', path, { token: other.token });
    expect((await asOther(`/api/v1/orgs/${org.slug}/connections/${id}`)).status).toBe(404);
    expect((await asOther(`/api/v1/orgs/${org.slug}/connections`)).status).toBe(404);
    expect((await asOther(`/api/v1/orgs/${other.org.slug}/connections/${id}`)).status).toBe(404);
    expect((await asOther(`/api/v1/workflows/${encodeURIComponent(workflowId)}`)).status).toBe(404);
    // The admin (break glass) sees everything.
    expect((await h.request('GET', `/api/v1/orgs/${org.slug}/connections/${id}`, { token: h.adminToken })).status).toBe(200);
  });

  it(`refuses an organization's connection beyond ${MAX_CONNECTIONS_PER_ORGANIZATION} (409 naming the limit), counted one connect after another; a disconnected one does not count`, async () => {
    const o = await createOrgWithToken(h);
    const seeded: string[] = [];
    for (let i = 0; i < MAX_CONNECTIONS_PER_ORGANIZATION; i++) seeded.push(await seedConnection(h, { organizationId: o.org.id, provider: 'gitlab', baseUrl: gitlab.url }));
    await h.db.updateTable('connections').set({ status: 'disconnected' }).where('id', '=', seeded[0]!).execute();
    const post = () => h.request('POST', `/api/v1/orgs/${o.org.slug}/connections`, { token: o.token, body: { provider: 'gitlab', baseUrl: gitlab.url, token: newToken() } });
    // One place left, three asking at once: one takes it.
    const answers = await Promise.all([post(), post(), post()]);
    expect(answers.map((a) => a.status).sort()).toEqual([202, 409, 409]);
    const refused = answers.find((a) => a.status === 409)!;
    expect(refused.headers.get('content-type')).toBe('application/problem+json');
    expect(await refused.json()).toMatchObject({ status: 409, limit: MAX_CONNECTIONS_PER_ORGANIZATION, detail: expect.stringContaining(`already has ${MAX_CONNECTIONS_PER_ORGANIZATION} connections`) });
    const live = await h.db.selectFrom('connections').select('id').where('organization_id', '=', o.org.id).where('status', '<>', 'disconnected').execute();
    expect(live).toHaveLength(MAX_CONNECTIONS_PER_ORGANIZATION);
    // Disconnecting one gives its place back; another organization's count is its own.
    await h.db.updateTable('connections').set({ status: 'disconnected' }).where('id', '=', seeded[1]!).execute();
    expect((await post()).status).toBe(202);
    expect((await post()).status).toBe(409);
    const other = await createOrgWithToken(h);
    expect((await h.request('POST', `/api/v1/orgs/${other.org.slug}/connections`, { token: other.token, body: { provider: 'gitlab', baseUrl: gitlab.url, token: newToken() } })).status).toBe(202);
  });

  it('rejects bad input with problem+json and stores nothing', async () => {
    // This organization's connections: other test files write connections of their own meanwhile.
    const count = async () =>
      Number((await h.db.selectFrom('connections').select((eb) => eb.fn.countAll().as('n')).where('organization_id', '=', org.id).executeTakeFirstOrThrow()).n);
    const before = await count();
    const cases: [unknown, RegExp][] = [
      [{ provider: 'gitlab', baseUrl: 'ftp://gitlab.example.com', token: 'x' }, /ftp: URLs are not allowed/],
      [{ provider: 'gitlab', baseUrl: 'http://gitlab.example.com', token: 'x' }, /plain http/],
      [{ provider: 'gitlab', baseUrl: 'https://169.254.169.254', token: 'x' }, /link-local or metadata/],
      [{ provider: 'gitlab', baseUrl: gitlab.url }, /token/],
      [{ provider: 'gitea', token: 'x' }, /provider/],
    ];
    for (const [body, detail] of cases) {
      const res = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: orgToken, body });
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      const problem = (await res.json()) as { status: number; title: string; detail: string };
      expect(problem.status).toBe(400);
      expect(problem.detail).toMatch(detail);
    }
    const notJson = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: orgToken, body: '{"provider":' });
    expect(notJson.status).toBe(400);
    expect(notJson.headers.get('content-type')).toBe('application/problem+json');
    expect(await count()).toBe(before);
  });

  describe('credential rotation (PUT …/credential)', () => {
    async function rotate(id: string, token: string, app = h.app) {
      return app.request(`/api/v1/orgs/${org.slug}/connections/${id}/credential`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${orgToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ token }),
      });
    }
    const storedCredential = async (id: string) => {
      const row = await h.db.selectFrom('connections').select(['credential', 'pending_credential']).where('id', '=', id).executeTakeFirstOrThrow();
      return { credential: open(h.keys, row.credential!, id), pending: row.pending_credential };
    };

    it('a bad new token leaves the connection active on its old credential; the rotation records its own failure', async () => {
      const old = newToken();
      const { id } = await connect(old);
      const res = await rotate(id, 'glpat-never-issued');
      expect(res.status).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      expect(await resultOf(h, workflowId)).toMatchObject({ status: 'failed' });

      const connection = await getConnection(id);
      expect(connection).toMatchObject({ status: 'active', account: expect.any(String), credentialRotation: { status: 'failed', reason: expect.stringMatching(/401/), requestedAt: expect.any(String) } });
      expect(connection).not.toHaveProperty('reason');
      expect(await storedCredential(id)).toEqual({ credential: old, pending: null });
    });

    it('the connection stays active while a rotation is validated, a second rotation meanwhile is refused, and exactly the validated token is promoted', async () => {
      const proxy = await startFlakyProxy(gitlab.url);
      try {
        const old = newToken();
        const res = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: orgToken, body: { provider: 'gitlab', baseUrl: proxy.url, token: old } });
        const { id, workflowId: connectRun } = (await res.json()) as { id: string; workflowId: string };
        expect(await resultOf(h, connectRun)).toMatchObject({ status: 'active' });

        const hold = manualHold();
        proxy.fault = (request) => (request.url.includes('/personal_access_tokens/self') ? hold.fault : undefined);
        const first = newToken();
        const started = await rotate(id, first);
        expect(started.status).toBe(202);
        const { workflowId } = (await started.json()) as { workflowId: string };
        await hold.held;

        expect(await getConnection(id)).toMatchObject({ status: 'active', credentialRotation: { status: 'validating' } });
        expect((await storedCredential(id)).credential).toBe(old);
        const second = await rotate(id, newToken());
        expect(second.status).toBe(409);
        expect(((await second.json()) as { detail: string }).detail).toMatch(/being validated/);

        hold.release('answer');
        expect(await resultOf(h, workflowId)).toMatchObject({ status: 'active' });
        expect(await storedCredential(id)).toEqual({ credential: first, pending: null });
        expect(await getConnection(id)).toMatchObject({ status: 'active', credentialRotation: { status: 'succeeded' } });
        expect(JSON.stringify(await getConnection(id))).not.toContain(first);
      } finally {
        await proxy.close();
      }
    });

    it('a rotation whose run Temporal refuses to start answers 503 and ends failed, the connection untouched', async () => {
      const old = newToken();
      const { id } = await connect(old);
      const refusing = h.appWith({ temporal: new Client({ connection: h.client.connection, namespace: 'forgelink-no-such-namespace' }) });
      const res = await rotate(id, newToken(), refusing);
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');

      expect(await getConnection(id)).toMatchObject({ status: 'active', credentialRotation: { status: 'failed', reason: expect.stringMatching(/did not start/) } });
      expect(await storedCredential(id)).toEqual({ credential: old, pending: null });
      // Not stuck: the next rotation goes ahead.
      const again = newToken();
      const retried = await rotate(id, again);
      expect(retried.status).toBe(202);
      await resultOf(h, ((await retried.json()) as { workflowId: string }).workflowId);
      expect((await storedCredential(id)).credential).toBe(again);
    });
  });

  it('DELETE connection and POST refresh answer 503 when Temporal refuses the start, and change nothing', async () => {
    const { id } = await connect(newToken());
    const refusing = h.appWith({ temporal: new Client({ connection: h.client.connection, namespace: 'forgelink-no-such-namespace' }) });
    const headers = { authorization: `Bearer ${orgToken}` };
    for (const [method, path] of [['DELETE', `/api/v1/orgs/${org.slug}/connections/${id}`], ['POST', `/api/v1/orgs/${org.slug}/repositories/refresh`]] as const) {
      const res = await refusing.request(path, { method, headers });
      expect(res.status, `${method} ${path}`).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
    }
    expect(await getConnection(id)).toMatchObject({ status: 'active' });
  });

  it('answers 401 without a valid token', async () => {
    expect((await h.request('GET', `/api/v1/orgs/${org.slug}/connections`)).status).toBe(401);
    const bad = await h.request('GET', `/api/v1/orgs/${org.slug}/connections`, { token: 'fl_not-a-token' });
    expect(bad.status).toBe(401);
    expect(bad.headers.get('content-type')).toBe('application/problem+json');
    // Organization tokens cannot create organizations.
    expect((await h.request('POST', '/api/v1/orgs', { token: orgToken, body: { slug: 'x', name: 'x' } })).status).toBe(403);
  });
});
