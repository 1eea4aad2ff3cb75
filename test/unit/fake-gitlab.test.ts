import { Gitlab, GitbeakerRequestError, GitbeakerRetryError } from '@gitbeaker/rest';
import { afterEach, describe, expect, it } from 'vitest';
import { retryLater, startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';

/**
 * The fake's own contract, driven through the real @gitbeaker/rest client (with its stock requester)
 * and, where the wire shape matters, through plain fetch.
 */

const ALL_SCOPES = ['api', 'read_user', 'read_repository'];
const KEYSET = { pagination: 'keyset', orderBy: 'id', sort: 'asc', perPage: 100 } as const;

const started: FakeGitlab[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((g) => g.close()));
});

async function fake(options?: { now?: () => number }): Promise<FakeGitlab> {
  const gitlab = await startFakeGitlab(options);
  started.push(gitlab);
  return gitlab;
}

let n = 0;
function token(gitlab: FakeGitlab, options: { scopes?: string[]; expiresAt?: string; username?: string } = {}): string {
  const value = `glpat-${++n}-fake`;
  gitlab.addToken({ token: value, username: options.username ?? `user${n}`, scopes: options.scopes ?? ALL_SCOPES, expiresAt: options.expiresAt });
  return value;
}

const client = (gitlab: FakeGitlab, value: string) => new Gitlab({ host: gitlab.url, token: value });

/** Status and body of a call gitbeaker refused. */
async function refusal(call: Promise<unknown>): Promise<{ status: number; description: string }> {
  const error = await call.then(
    () => {
      throw new Error('expected GitLab to refuse the call');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(GitbeakerRequestError);
  const cause = (error as GitbeakerRequestError).cause as { description: string; response: Response };
  return { status: cause.response.status, description: cause.description };
}

function raw(gitlab: FakeGitlab, path: string, init: { token?: string; method?: string; body?: unknown; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { ...(init.token ? { 'private-token': init.token } : {}), ...(init.headers ?? {}) };
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  return fetch(`${gitlab.url}/api/v4${path}`, { method: init.method ?? 'GET', headers, body: init.body === undefined ? undefined : JSON.stringify(init.body), redirect: 'manual' });
}

describe('fake GitLab: authentication', () => {
  it('accepts PRIVATE-TOKEN in any case and Bearer, and refuses the rest with GitLab bodies', async () => {
    const gitlab = await fake();
    const t = token(gitlab, { username: 'alice' });
    expect((await raw(gitlab, '/user', { headers: { 'PRIVATE-TOKEN': t } })).status).toBe(200);
    expect((await raw(gitlab, '/user', { headers: { 'Private-Token': t } })).status).toBe(200);
    expect(await new Gitlab({ host: gitlab.url, oauthToken: t }).Users.showCurrentUser()).toMatchObject({ username: 'alice' });

    const unknown = await raw(gitlab, '/user', { token: 'glpat-never-issued' });
    expect(unknown.status).toBe(401);
    expect(await unknown.json()).toEqual({ message: '401 Unauthorized' });
    expect((await raw(gitlab, '/user')).status).toBe(401);
    expect(await refusal(client(gitlab, 'glpat-never-issued').PersonalAccessTokens.show())).toEqual({ status: 401, description: '401 Unauthorized' });
  });

  it('answers invalid_token with a description for expired and revoked tokens', async () => {
    const gitlab = await fake();
    const expired = token(gitlab, { expiresAt: '2020-01-31' });
    const revoked = token(gitlab);
    gitlab.revokeToken(revoked);

    const expiredAnswer = await raw(gitlab, '/personal_access_tokens/self', { token: expired });
    expect(expiredAnswer.status).toBe(401);
    expect(await expiredAnswer.json()).toEqual({ error: 'invalid_token', error_description: 'Token is expired. You can either do re-authorization or token refresh.' });
    const revokedAnswer = await raw(gitlab, '/projects', { token: revoked });
    expect(revokedAnswer.status).toBe(401);
    expect(await revokedAnswer.json()).toMatchObject({ error: 'invalid_token', error_description: expect.stringMatching(/^Token was revoked/) });
  });

  it('describes the presenting token on /personal_access_tokens/self, whatever its scopes', async () => {
    const gitlab = await fake();
    const t = token(gitlab, { scopes: ['read_repository'], expiresAt: '2999-12-31' });
    const self = await client(gitlab, t).PersonalAccessTokens.show();
    expect(self).toMatchObject({ scopes: ['read_repository'], active: true, revoked: false, expires_at: '2999-12-31' });
    expect(typeof self.user_id).toBe('number');
    const never = token(gitlab);
    expect((await client(gitlab, never).PersonalAccessTokens.show()).expires_at).toBeNull();
  });

  it('enforces scopes: read_user reaches /user only, read_api reads but cannot write', async () => {
    const gitlab = await fake();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const userOnly = token(gitlab, { scopes: ['read_user'] });
    expect((await raw(gitlab, '/user', { token: userOnly })).status).toBe(200);
    const denied = await raw(gitlab, '/projects', { token: userOnly });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toMatchObject({ error: 'insufficient_scope', error_description: 'The request requires higher privileges than provided by the access token.' });

    const readApi = token(gitlab, { scopes: ['read_api'] });
    expect((await raw(gitlab, `/projects/${project.id}/hooks`, { token: readApi })).status).toBe(200);
    expect((await raw(gitlab, `/projects/${project.id}/hooks`, { token: readApi, method: 'POST', body: { url: 'https://ci.example/hook' } })).status).toBe(403);
    expect(gitlab.hooks(project.id)).toEqual([]);
  });
});

describe('fake GitLab: projects', () => {
  it.each([0, 1, 100, 250])('walks %i projects with keyset paging, ending on an empty page', async (count) => {
    const gitlab = await fake();
    for (let i = 0; i < count; i++) gitlab.addProject({ pathWithNamespace: `acme/p${i}` });
    const projects = await client(gitlab, token(gitlab)).Projects.all({ membership: true, minAccessLevel: 40, simple: true, ...KEYSET });
    expect(projects.map((p) => p.id)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
    expect(gitlab.server.count('listProjects')).toBe(count === 0 ? 1 : Math.ceil(count / 100) + 1);
  });

  it('links keyset pages only through Link rel=next, clamps per_page and requires order_by=id', async () => {
    const gitlab = await fake();
    const t = token(gitlab);
    for (let i = 0; i < 120; i++) gitlab.addProject({ pathWithNamespace: `acme/p${i}` });

    const first = await raw(gitlab, '/projects?pagination=keyset&order_by=id&sort=asc&per_page=500', { token: t });
    expect(((await first.json()) as unknown[]).length).toBe(100);
    const next = /<([^>]+)>; rel="next"/.exec(first.headers.get('link') ?? '')?.[1];
    expect(new URL(next!).searchParams.get('id_after')).toBe('100');
    expect(first.headers.get('x-total')).toBeNull();
    expect(first.headers.get('x-next-page')).toBeNull();

    const second = await fetch(next!, { headers: { 'private-token': t } });
    const secondIds = ((await second.json()) as { id: number }[]).map((p) => p.id);
    expect(secondIds).toEqual(Array.from({ length: 20 }, (_, i) => 101 + i));
    const end = await fetch(/<([^>]+)>; rel="next"/.exec(second.headers.get('link') ?? '')![1]!, { headers: { 'private-token': t } });
    expect(await end.json()).toEqual([]);
    expect(end.headers.get('link')).toBeNull();

    const descending = await raw(gitlab, '/projects?pagination=keyset&order_by=id&per_page=5', { token: t });
    expect(((await descending.json()) as { id: number }[]).map((p) => p.id)).toEqual([120, 119, 118, 117, 116]);
    expect(descending.headers.get('link')).toContain('id_before=116');

    const unordered = await raw(gitlab, '/projects?pagination=keyset', { token: t });
    expect(unordered.status).toBe(405);
  });

  it('filters by membership and min_access_level, and strips permissions when simple', async () => {
    const gitlab = await fake();
    const t = token(gitlab);
    gitlab.addProject({ id: 1, pathWithNamespace: 'acme/owned', accessLevel: 50 });
    gitlab.addProject({ id: 2, pathWithNamespace: 'acme/maintained', accessLevel: 40 });
    gitlab.addProject({ id: 3, pathWithNamespace: 'acme/developed', accessLevel: 30 });
    gitlab.addProject({ id: 4, pathWithNamespace: 'other/secret', accessLevel: 0 });
    gitlab.addProject({ id: 5, pathWithNamespace: 'other/open', accessLevel: 0, visibility: 'public' });
    const api = client(gitlab, t);
    const ids = async (options: Record<string, unknown>) => (await api.Projects.all({ ...KEYSET, ...options })).map((p) => p.id);

    expect(await ids({ minAccessLevel: 40 })).toEqual([1, 2]);
    expect(await ids({ membership: true })).toEqual([1, 2, 3]);
    expect(await ids({})).toEqual([1, 2, 3, 5]);

    const [simple] = await api.Projects.all({ ...KEYSET, simple: true, minAccessLevel: 50 });
    expect(simple).toMatchObject({ id: 1, path_with_namespace: 'acme/owned', default_branch: 'main', web_url: `${gitlab.url}/acme/owned` });
    expect(simple).not.toHaveProperty('permissions');
    const [full] = await api.Projects.all({ ...KEYSET, minAccessLevel: 50 });
    expect(full).toMatchObject({ permissions: { project_access: { access_level: 50 } }, visibility: 'private' });

    // Anonymous callers see public projects only.
    expect(((await (await raw(gitlab, '/projects')).json()) as { id: number }[]).map((p) => p.id)).toEqual([5]);
  });

  it('pages /projects by offset when keyset is not asked for', async () => {
    const gitlab = await fake();
    for (let i = 0; i < 45; i++) gitlab.addProject({ pathWithNamespace: `acme/p${i}` });
    const page = await raw(gitlab, '/projects?page=3', { token: token(gitlab) });
    expect(page.headers.get('x-total')).toBe('45');
    expect(page.headers.get('x-per-page')).toBe('20');
    expect(page.headers.get('x-next-page')).toBe('');
    expect(((await page.json()) as { id: number }[]).map((p) => p.id)).toEqual([5, 4, 3, 2, 1]);
  });

  it('finds a project by id or encoded path, hides invisible and removed ones, and redirects former paths', async () => {
    const gitlab = await fake();
    const api = client(gitlab, token(gitlab));
    const nested = gitlab.addProject({ pathWithNamespace: 'acme/platform/api' });
    const hidden = gitlab.addProject({ pathWithNamespace: 'other/secret', accessLevel: 0 });
    const doomed = gitlab.addProject({ pathWithNamespace: 'acme/doomed' });

    expect(await api.Projects.show(nested.id)).toMatchObject({ path_with_namespace: 'acme/platform/api' });
    expect(await api.Projects.show('acme/platform/api')).toMatchObject({ id: nested.id });
    expect(await refusal(api.Projects.show(hidden.id))).toEqual({ status: 404, description: '404 Project Not Found' });
    gitlab.removeProject(doomed.id);
    expect((await refusal(api.Projects.show(doomed.id))).status).toBe(404);

    gitlab.renameProject(nested.id, 'acme/platform/gateway');
    const moved = await raw(gitlab, `/projects/${encodeURIComponent('acme/platform/api')}`, { token: token(gitlab) });
    expect(moved.status).toBe(301);
    expect(moved.headers.get('location')).toBe(`${gitlab.url}/api/v4/projects/${nested.id}`);
    expect(await api.Projects.show('acme/platform/api')).toMatchObject({ id: nested.id, path_with_namespace: 'acme/platform/gateway' });
  });
});

describe('fake GitLab: project hooks', () => {
  it('creates (201), updates (200) and deletes (204) hooks, keeping the token write-only', async () => {
    const gitlab = await fake();
    const api = client(gitlab, token(gitlab));
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });

    const created = await api.ProjectHooks.add(project.id, 'https://ci.example/hooks/gitlab', { token: 'hook-secret', mergeRequestsEvents: true, showExpanded: true });
    expect(created.status).toBe(201);
    expect(created.data).toMatchObject({ url: 'https://ci.example/hooks/gitlab', push_events: true, merge_requests_events: true, tag_push_events: false, issues_events: false, enable_ssl_verification: true, alert_status: 'executable', disabled_until: null });
    expect(JSON.stringify(created.data)).not.toContain('hook-secret');
    const hookId = created.data.id;
    expect(gitlab.hooks(project.id)[0]!.token).toBe('hook-secret');

    const listed = await api.ProjectHooks.all(project.id);
    expect(listed.map((h) => h.id)).toEqual([hookId]);
    expect(JSON.stringify(listed)).not.toContain('hook-secret');

    // Same URL without a token keeps it; a new URL without a token clears it.
    const kept = await api.ProjectHooks.edit(project.id, hookId, 'https://ci.example/hooks/gitlab', { pushEvents: false, showExpanded: true });
    expect(kept.status).toBe(200);
    expect(kept.data.push_events).toBe(false);
    expect(gitlab.hooks(project.id)[0]!.token).toBe('hook-secret');
    await api.ProjectHooks.edit(project.id, hookId, 'https://ci.example/hooks/moved');
    expect(gitlab.hooks(project.id)[0]!.token).toBeUndefined();
    await api.ProjectHooks.edit(project.id, hookId, 'https://ci.example/hooks/moved', { token: 'second-secret' });
    expect(gitlab.hooks(project.id)[0]!.token).toBe('second-secret');

    const removed = await api.ProjectHooks.remove(project.id, hookId, { showExpanded: true });
    expect(removed.status).toBe(204);
    expect(await refusal(api.ProjectHooks.show(project.id, hookId))).toEqual({ status: 404, description: '404 Not found' });
    expect((await refusal(api.ProjectHooks.remove(project.id, hookId))).status).toBe(404);
  });

  it('rejects bad hook requests with GitLab statuses', async () => {
    const gitlab = await fake();
    const t = token(gitlab);
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const other = gitlab.addProject({ pathWithNamespace: 'acme/other' });
    const hooks = `/projects/${project.id}/hooks`;
    const post = (body: unknown) => raw(gitlab, hooks, { token: t, method: 'POST', body });

    const missingUrl = await post({ push_events: true });
    expect(missingUrl.status).toBe(400);
    expect(await missingUrl.json()).toEqual({ error: 'url is missing' });
    expect((await post({ url: 'ftp://ci.example/hook' })).status).toBe(422);
    expect((await post({ url: 'https://ci.example/hook', token: 'foo\nbar' })).status).toBe(422);
    expect((await post({ url: 'https://ci.example/hook', push_events: 'sometimes' })).status).toBe(400);
    expect(gitlab.hooks(project.id)).toEqual([]);

    const created = (await (await post({ url: 'https://ci.example/hook' })).json()) as { id: number };
    const emptyUpdate = await raw(gitlab, `${hooks}/${created.id}`, { token: t, method: 'PUT', body: {} });
    expect(emptyUpdate.status).toBe(400);
    expect(await emptyUpdate.json()).toEqual({ error: 'No parameters provided' });
    expect((await raw(gitlab, `${hooks}/${created.id}`, { token: t, method: 'PUT', body: { url: 'not a url' } })).status).toBe(422);
    expect((await raw(gitlab, `/projects/${other.id}/hooks/${created.id}`, { token: t })).status).toBe(404);
    expect((await raw(gitlab, `${hooks}/abc`, { token: t })).status).toBe(400);
    expect(gitlab.hooks(project.id)[0]!.url).toBe('https://ci.example/hook');
  });

  it('needs Maintainer for hooks and hides projects the user cannot see', async () => {
    const gitlab = await fake();
    const api = client(gitlab, token(gitlab));
    const developer = gitlab.addProject({ pathWithNamespace: 'acme/dev', accessLevel: 30 });
    const hidden = gitlab.addProject({ pathWithNamespace: 'other/secret', accessLevel: 0 });
    expect(await refusal(api.ProjectHooks.all(developer.id))).toEqual({ status: 403, description: '403 Forbidden' });
    expect(await refusal(api.ProjectHooks.add(developer.id, 'https://ci.example/hook'))).toEqual({ status: 403, description: '403 Forbidden' });
    expect(await refusal(api.ProjectHooks.add(hidden.id, 'https://ci.example/hook'))).toEqual({ status: 404, description: '404 Project Not Found' });
    expect(gitlab.hooks(developer.id)).toEqual([]);
  });

  it('pages hook lists by offset with X-* headers and Link', async () => {
    const gitlab = await fake();
    const t = token(gitlab);
    const api = client(gitlab, t);
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    for (let i = 0; i < 25; i++) await api.ProjectHooks.add(project.id, `https://ci.example/hook/${i}`);

    const middle = await raw(gitlab, `/projects/${project.id}/hooks?per_page=10&page=2`, { token: t });
    expect(Object.fromEntries(['x-page', 'x-per-page', 'x-next-page', 'x-prev-page', 'x-total', 'x-total-pages'].map((h) => [h, middle.headers.get(h)]))).toEqual({
      'x-page': '2',
      'x-per-page': '10',
      'x-next-page': '3',
      'x-prev-page': '1',
      'x-total': '25',
      'x-total-pages': '3',
    });
    for (const rel of ['prev', 'next', 'first', 'last']) expect(middle.headers.get('link')).toContain(`rel="${rel}"`);

    const before = gitlab.server.count('listHooks');
    const all = await api.ProjectHooks.all(project.id, { perPage: 10 });
    expect(all.map((h) => h.url)).toEqual(Array.from({ length: 25 }, (_, i) => `https://ci.example/hook/${i}`));
    expect(gitlab.server.count('listHooks') - before).toBe(3);
  });

  it('reports alert_status and disabled_until, and re-enables a hook when it is saved', async () => {
    let clock = Date.UTC(2030, 0, 1, 12, 0, 0);
    const gitlab = await fake({ now: () => clock });
    const api = client(gitlab, token(gitlab));
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const hook = await api.ProjectHooks.add(project.id, 'https://ci.example/hook');

    gitlab.setHookAlertStatus(project.id, hook.id, 'temporarily_disabled');
    expect(await api.ProjectHooks.show(project.id, hook.id)).toMatchObject({ alert_status: 'temporarily_disabled', disabled_until: '2030-01-01T12:01:00.000Z' });
    clock += 60_000;
    expect(await api.ProjectHooks.show(project.id, hook.id)).toMatchObject({ alert_status: 'executable', disabled_until: '2030-01-01T12:01:00.000Z' });
    gitlab.setHookAlertStatus(project.id, hook.id, 'disabled');
    expect(await api.ProjectHooks.show(project.id, hook.id)).toMatchObject({ alert_status: 'disabled', disabled_until: null });
    clock += 1000;
    expect(await api.ProjectHooks.edit(project.id, hook.id, 'https://ci.example/hook')).toMatchObject({ alert_status: 'executable', disabled_until: null });

    gitlab.deleteHookByHand(project.id, hook.id);
    expect((await refusal(api.ProjectHooks.show(project.id, hook.id))).status).toBe(404);
  });
});

describe('fake GitLab: rate limits', () => {
  it('sends RateLimit-* headers and throttles with a plain-text 429 until the window resets', async () => {
    let clock = Date.UTC(2030, 0, 1, 12, 0, 15);
    const gitlab = await fake({ now: () => clock });
    const t = token(gitlab);
    gitlab.setRateLimit(2);

    const first = await raw(gitlab, '/user', { token: t });
    expect(Object.fromEntries(['ratelimit-name', 'ratelimit-limit', 'ratelimit-observed', 'ratelimit-remaining', 'ratelimit-reset'].map((h) => [h, first.headers.get(h)]))).toEqual({
      'ratelimit-name': 'throttle_authenticated_api',
      'ratelimit-limit': '2',
      'ratelimit-observed': '1',
      'ratelimit-remaining': '1',
      'ratelimit-reset': String(Date.UTC(2030, 0, 1, 12, 1, 0) / 1000),
    });
    expect((await raw(gitlab, '/user', { token: t })).headers.get('ratelimit-remaining')).toBe('0');

    const throttled = await raw(gitlab, '/user', { token: t });
    expect(throttled.status).toBe(429);
    expect(throttled.headers.get('content-type')).toBe('text/plain');
    expect(await throttled.text()).toBe('Retry later');
    expect(throttled.headers.get('retry-after')).toBe('45');
    expect(throttled.headers.get('ratelimit-resettime')).toBe(new Date(Date.UTC(2030, 0, 1, 12, 1, 0)).toUTCString());

    clock += 45_000;
    expect((await raw(gitlab, '/user', { token: t })).status).toBe(200);
  });

  it('serves injected 429s, which stock gitbeaker retries ten times regardless of Retry-After', async () => {
    const gitlab = await fake();
    const t = token(gitlab);
    gitlab.server.failNext('currentUser', 1, retryLater(30));
    const injected = await raw(gitlab, '/user', { token: t });
    expect(injected.status).toBe(429);
    expect(injected.headers.get('content-type')).toBe('text/plain');
    expect(injected.headers.get('retry-after')).toBe('30');
    expect(injected.headers.get('ratelimit-resettime')).toMatch(/GMT$/);
    expect(await injected.text()).toBe('Retry later');

    const before = gitlab.server.count('currentUser');
    gitlab.server.failNext('currentUser', 10, retryLater(30));
    await expect(client(gitlab, t).Users.showCurrentUser()).rejects.toBeInstanceOf(GitbeakerRetryError);
    expect(gitlab.server.count('currentUser') - before).toBe(10);
  });
});
