import { afterEach, describe, expect, it } from 'vitest';
import { startFakeBitbucket, tooManyRequests, type FakeBitbucket } from '../fakes/bitbucket.ts';

let fake: FakeBitbucket | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function start(options?: Parameters<typeof startFakeBitbucket>[0]): Promise<FakeBitbucket> {
  fake = await startFakeBitbucket(options);
  return fake;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const json = { 'content-type': 'application/json' };

async function call(path: string, init: { method?: string; token?: string; headers?: Record<string, string>; body?: unknown } = {}) {
  const response = await fetch(`${fake!.url}${path}`, {
    method: init.method ?? 'GET',
    headers: { ...(init.token ? bearer(init.token) : {}), ...(init.body === undefined ? {} : json), ...init.headers },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : undefined };
}

/** Adds `count` repositories r00, r01, … to project PROJ. */
function seedRepositories(f: FakeBitbucket, count: number) {
  f.addProject({ key: 'PROJ', name: 'Project' });
  for (let i = 0; i < count; i++) f.addRepository({ projectKey: 'PROJ', slug: `r${String(i).padStart(2, '0')}` });
}

const hookBody = { name: 'forgelink', url: 'https://svc.example/hooks/bitbucket', events: ['repo:refs_changed', 'pr:opened'], configuration: { secret: 's3cret' } };

describe('fake Bitbucket Data Center: auth and identity', () => {
  it('accepts Bearer tokens only, names the user in X-AUSERNAME, and answers anonymous callers', async () => {
    const f = await start();
    f.addToken({ token: 'good', username: 'jane.doe@example.com' });
    seedRepositories(f, 1);

    const ok = await call('/rest/api/latest/repos', { token: 'good' });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-ausername')).toBe('jane.doe%40example.com');
    expect(ok.body.values).toHaveLength(1);

    const bad = await call('/rest/api/latest/repos', { token: 'wrong' });
    expect(bad.status).toBe(401);
    expect(bad.body.errors[0]).toMatchObject({ exceptionName: 'com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException' });
    expect(bad.headers.get('x-ausername')).toBeNull();

    const basic = await call('/rest/api/latest/repos', { headers: { authorization: `Basic ${Buffer.from('jane.doe@example.com:good').toString('base64')}` } });
    expect(basic.status).toBe(401);

    const anonymous = await call('/rest/api/latest/repos');
    expect(anonymous.status).toBe(200);
    expect(anonymous.body.values).toEqual([]);
    expect(anonymous.headers.get('x-ausername')).toBeNull();

    const legacyPath = await call('/rest/api/1.0/repos', { token: 'good' });
    expect(legacyPath.body.values).toHaveLength(1);
  });

  it('serves application-properties to anyone, naming the user only for a valid token', async () => {
    const f = await start({ version: '7.21.4', contextPath: '/bitbucket' });
    f.addToken({ token: 'good', username: 'jane' });
    expect(f.url).toMatch(/\/bitbucket$/);

    for (const token of [undefined, 'wrong']) {
      const res = await call('/rest/api/latest/application-properties', { token });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ version: '7.21.4', buildNumber: '7021004', displayName: 'Bitbucket' });
      expect(res.headers.get('x-ausername')).toBeNull();
    }
    const authenticated = await call('/rest/api/latest/application-properties', { token: 'good' });
    expect(authenticated.headers.get('x-ausername')).toBe('jane');
    expect(f.server.count('applicationProperties')).toBe(3);
  });
});

describe('fake Bitbucket Data Center: paging', () => {
  it('answers an empty list as one last page without nextPageStart', async () => {
    const f = await start();
    f.addToken({ token: 't', username: 'u' });
    const res = await call('/rest/api/latest/repos', { token: 't' });
    expect(res.body).toEqual({ size: 0, limit: 25, isLastPage: true, start: 0, values: [] });
  });

  it('answers a single repository with the full RestRepository shape', async () => {
    const f = await start();
    f.addToken({ token: 't', username: 'u' });
    f.addProject({ key: 'PROJ', name: 'Project' });
    f.addRepository({ projectKey: 'PROJ', slug: 'app', name: 'App', id: 42, defaultBranch: 'main' });
    const res = await call('/rest/api/latest/repos?limit=10', { token: 't' });
    expect(res.body).toMatchObject({ size: 1, limit: 10, isLastPage: true, start: 0 });
    expect(res.body).not.toHaveProperty('nextPageStart');
    expect(res.body.values[0]).toMatchObject({
      id: 42,
      slug: 'app',
      name: 'App',
      scmId: 'git',
      defaultBranch: 'main',
      project: { key: 'PROJ', name: 'Project', type: 'NORMAL' },
      links: { self: [{ href: `${f.url}/projects/PROJ/repos/app/browse` }] },
    });
  });

  it('marks exactly one full page as the last, and a 26th item as a second default-size page', async () => {
    const f = await start();
    f.addToken({ token: 't', username: 'u' });
    seedRepositories(f, 25);
    const full = await call('/rest/api/latest/repos', { token: 't' });
    expect(full.body).toMatchObject({ size: 25, limit: 25, isLastPage: true });
    expect(full.body).not.toHaveProperty('nextPageStart');

    f.addRepository({ projectKey: 'PROJ', slug: 'r25' });
    const first = await call('/rest/api/latest/repos', { token: 't' });
    expect(first.body).toMatchObject({ size: 25, isLastPage: false, nextPageStart: 25 });
    const second = await call('/rest/api/latest/repos?start=25', { token: 't' });
    expect(second.body).toMatchObject({ size: 1, start: 25, isLastPage: true });
    expect(second.body.values[0].slug).toBe('r25');
  });

  it('clamps limit to the maximum page size, echoes it, and pages through everything in order', async () => {
    const f = await start({ maxPageSize: 3 });
    f.addToken({ token: 't', username: 'u' });
    seedRepositories(f, 7);
    const seen: string[] = [];
    const starts: number[] = [];
    let pageStart: number | undefined = 0;
    while (pageStart !== undefined) {
      const res = await call(`/rest/api/latest/repos?limit=1000&start=${pageStart}`, { token: 't' });
      expect(res.body.limit).toBe(3);
      starts.push(res.body.start);
      seen.push(...res.body.values.map((r: { slug: string }) => r.slug));
      pageStart = res.body.isLastPage ? undefined : res.body.nextPageStart;
    }
    expect(starts).toEqual([0, 3, 6]);
    expect(seen).toEqual(['r00', 'r01', 'r02', 'r03', 'r04', 'r05', 'r06']);
  });
});

describe('fake Bitbucket Data Center: permission filters', () => {
  it('lists only what the token may do, and refuses unknown permission names with 400', async () => {
    const f = await start();
    f.addToken({ token: 'admin', username: 'admin' });
    f.addToken({ token: 'writer', username: 'writer', repoPermission: 'REPO_WRITE' });
    f.addToken({ token: 'repo-token', username: 'bot', projectPermission: null, repoPermission: 'REPO_ADMIN' });
    f.addToken({ token: 'project-admin', username: 'padmin', projectPermission: 'PROJECT_ADMIN', repoPermission: 'REPO_READ' });
    seedRepositories(f, 2);

    const sizes = async (path: string, token: string) => (await call(path, { token })).body.values.length;
    expect(await sizes('/rest/api/latest/repos?permission=REPO_ADMIN', 'admin')).toBe(2);
    expect(await sizes('/rest/api/latest/repos?permission=REPO_ADMIN', 'writer')).toBe(0);
    expect(await sizes('/rest/api/latest/repos?permission=REPO_WRITE', 'writer')).toBe(2);
    // A project permission implies the same repository level.
    expect(await sizes('/rest/api/latest/repos?permission=REPO_ADMIN', 'project-admin')).toBe(2);

    expect(await sizes('/rest/api/latest/projects?permission=PROJECT_READ', 'admin')).toBe(1);
    expect(await sizes('/rest/api/latest/projects?permission=PROJECT_READ', 'repo-token')).toBe(0);
    expect(await sizes('/rest/api/latest/projects', 'repo-token')).toBe(1);
    expect(await sizes('/rest/api/latest/projects?permission=PROJECT_ADMIN', 'admin')).toBe(0);

    for (const path of ['/rest/api/latest/repos?permission=REPO_SUPERUSER', '/rest/api/latest/repos?permission=PROJECT_READ', '/rest/api/latest/projects?permission=REPO_ADMIN']) {
      const res = await call(path, { token: 'admin' });
      expect(res.status).toBe(400);
      expect(res.body.errors[0].message).toMatch(/not a valid (project|repository) permission/);
    }
  });

  it('answers 401 AuthorisationException below REPO_ADMIN on webhooks and 404 for unknown repositories', async () => {
    const f = await start();
    f.addToken({ token: 'writer', username: 'writer', repoPermission: 'REPO_WRITE' });
    f.addToken({ token: 'admin', username: 'admin' });
    seedRepositories(f, 1);

    const denied = await call('/rest/api/latest/projects/PROJ/repos/r00/webhooks', { token: 'writer' });
    expect(denied.status).toBe(401);
    expect(denied.body.errors[0]).toEqual({ context: null, message: 'You are not permitted to access this resource', exceptionName: 'com.atlassian.bitbucket.AuthorisationException' });
    expect((await call('/rest/api/latest/projects/PROJ/repos/r00', { token: 'writer' })).status).toBe(200);

    const noRepo = await call('/rest/api/latest/projects/PROJ/repos/nope/webhooks', { token: 'admin' });
    expect(noRepo.status).toBe(404);
    expect(noRepo.body.errors[0].exceptionName).toBe('com.atlassian.bitbucket.repository.NoSuchRepositoryException');
    const noProject = await call('/rest/api/latest/projects/NOPE/repos/r00', { token: 'admin' });
    expect(noProject.body.errors[0].exceptionName).toBe('com.atlassian.bitbucket.project.NoSuchProjectException');
  });
});

describe('fake Bitbucket Data Center: webhooks', () => {
  it('creates, reads, lists, updates and deletes a repository webhook with the documented statuses', async () => {
    const f = await start();
    f.addToken({ token: 'admin', username: 'admin' });
    seedRepositories(f, 1);
    const hooks = '/rest/api/latest/projects/PROJ/repos/r00/webhooks';

    const created = await call(hooks, { method: 'POST', token: 'admin', body: hookBody });
    expect(created.status).toBe(200);
    expect(created.body).toMatchObject({ id: expect.any(Number), name: 'forgelink', url: hookBody.url, active: true, events: hookBody.events, scopeType: 'repository', sslVerificationRequired: true });
    expect(Number.isInteger(created.body.id)).toBe(true);
    expect(created.body.createdDate).toBeTypeOf('number');
    expect(created.body.updatedDate).toBe(created.body.createdDate);
    const id = created.body.id as number;
    expect(f.webhooks('PROJ', 'r00')[0]!.configuration).toEqual({ secret: 's3cret' });

    // Names need not be unique.
    expect((await call(hooks, { method: 'POST', token: 'admin', body: hookBody })).status).toBe(200);
    const listed = await call(`${hooks}?limit=1`, { token: 'admin' });
    expect(listed.body).toMatchObject({ size: 1, limit: 1, isLastPage: false, nextPageStart: 1 });
    expect(listed.body.values[0].id).toBe(id);

    expect((await call(`${hooks}/${id}`, { token: 'admin' })).body.id).toBe(id);

    const updated = await call(`${hooks}/${id}`, { method: 'PUT', token: 'admin', body: { ...hookBody, active: false, events: ['pr:merged'] } });
    expect(updated.status).toBe(200);
    expect(updated.body).toMatchObject({ id, active: false, events: ['pr:merged'] });
    expect(updated.body.updatedDate).toBeGreaterThan(created.body.updatedDate);
    f.setWebhookActiveByHand('PROJ', 'r00', id, true);
    expect((await call(`${hooks}/${id}`, { token: 'admin' })).body).toMatchObject({ active: true, events: ['pr:merged'] });
    f.setWebhookActiveByHand('PROJ', 'r00', id, false);
    expect((await call(hooks, { token: 'admin' })).body.values.find((h: { id: number }) => h.id === id)).toMatchObject({ active: false });

    const deleted = await fetch(`${f.url}${hooks}/${id}`, { method: 'DELETE', headers: bearer('admin') });
    expect(deleted.status).toBe(204);
    expect(await deleted.text()).toBe('');
    const gone = await call(`${hooks}/${id}`, { token: 'admin' });
    expect(gone.status).toBe(404);
    expect(gone.body.errors[0].exceptionName).toBe('com.atlassian.bitbucket.webhook.NoSuchWebhookException');
    expect((await call(`${hooks}/${id}`, { method: 'DELETE', token: 'admin' })).status).toBe(404);
    expect((await call(`${hooks}/${id}`, { method: 'PUT', token: 'admin', body: hookBody })).status).toBe(404);
    expect(f.server.count('deleteWebhook')).toBe(2);
  });

  it('refuses a missing url, duplicate events, Cloud-style and unknown event keys with 400', async () => {
    const f = await start();
    f.addToken({ token: 'admin', username: 'admin' });
    seedRepositories(f, 1);
    const hooks = '/rest/api/latest/projects/PROJ/repos/r00/webhooks';
    const cases: Array<[unknown, RegExp]> = [
      [{ ...hookBody, url: undefined }, /URL is required/],
      [{ ...hookBody, url: 'ftp://svc.example/x' }, /not a valid http/],
      [{ ...hookBody, events: ['repo:refs_changed', 'repo:refs_changed'] }, /Duplicate event 'repo:refs_changed'/],
      [{ ...hookBody, events: ['repo:push'] }, /Unknown event 'repo:push'/],
      [{ ...hookBody, events: ['pullrequest:created'] }, /Unknown event 'pullrequest:created'/],
      [{ ...hookBody, events: [] }, /At least one event/],
    ];
    for (const [body, message] of cases) {
      const res = await call(hooks, { method: 'POST', token: 'admin', body });
      expect(res.status).toBe(400);
      expect(res.body.errors[0].message).toMatch(message);
    }
    expect(f.webhooks('PROJ', 'r00')).toEqual([]);
  });

  it('moves hooks with a renamed repository and drops them with a removed one', async () => {
    const f = await start();
    f.addToken({ token: 'admin', username: 'admin' });
    seedRepositories(f, 1);
    const created = await call('/rest/api/latest/projects/PROJ/repos/r00/webhooks', { method: 'POST', token: 'admin', body: hookBody });
    const { id } = (await call('/rest/api/latest/projects/PROJ/repos/r00', { token: 'admin' })).body;

    f.renameRepository(id, 'renamed');
    expect((await call('/rest/api/latest/projects/PROJ/repos/r00/webhooks', { token: 'admin' })).status).toBe(404);
    expect((await call('/rest/api/latest/projects/PROJ/repos/renamed/webhooks', { token: 'admin' })).body.values[0].id).toBe(created.body.id);

    f.deleteWebhookByHand('PROJ', 'renamed', created.body.id);
    expect(f.webhooks('PROJ', 'renamed')).toEqual([]);

    f.removeRepository(id);
    expect((await call('/rest/api/latest/projects/PROJ/repos/renamed', { token: 'admin' })).status).toBe(404);
  });
});

describe('fake Bitbucket Data Center: rate limiting', () => {
  it('injects a 429 with Retry-After and X-RateLimit-* headers through failNext', async () => {
    const f = await start();
    f.addToken({ token: 't', username: 'u' });
    f.server.failNext('listRepos', 1, tooManyRequests(7));
    const limited = await call('/rest/api/latest/repos', { token: 't' });
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('7');
    expect(limited.headers.get('x-ratelimit-remaining')).toBe('0');
    expect(limited.headers.get('x-ratelimit-limit')).toBe('60');
    expect(limited.body.errors[0].message).toMatch(/rate limited/);
    expect((await call('/rest/api/latest/repos', { token: 't' })).status).toBe(200);
  });

  it('drains the token bucket one authenticated call at a time, then answers 429', async () => {
    const f = await start();
    f.addToken({ token: 't', username: 'u' });
    f.rateLimit({ tokens: 2, capacity: 10, fillRate: 4, intervalSeconds: 2 });
    const remaining: Array<string | null> = [];
    for (let i = 0; i < 2; i++) remaining.push((await call('/rest/api/latest/repos', { token: 't' })).headers.get('x-ratelimit-remaining'));
    expect(remaining).toEqual(['1', '0']);
    const limited = await call('/rest/api/latest/repos', { token: 't' });
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('1');
    expect(limited.headers.get('x-ratelimit-fillrate')).toBe('4');
    expect(limited.headers.get('x-ratelimit-interval-seconds')).toBe('2');
    // Anonymous calls are not counted against a user's bucket.
    expect((await call('/rest/api/latest/application-properties')).status).toBe(200);
    f.rateLimit(null);
    expect((await call('/rest/api/latest/repos', { token: 't' })).status).toBe(200);
  });
});
