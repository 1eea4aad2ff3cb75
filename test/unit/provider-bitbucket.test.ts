import { afterEach, describe, expect, it } from 'vitest';
import { BITBUCKET_HOOK_EVENTS, createBitbucketAdapter } from '../../activities/providers/bitbucket.ts';
import { ListingTooLongError, MAX_HOOK_PAGES, MAX_HOOKS, ProviderHttpError, RepositoryNameTakenError, type HookSpec, type RepositoryRef } from '../../activities/providers/port.ts';
import { toActivityFailure } from '../../activities/errors.ts';
import { bitbucketError, startFakeBitbucket, tooManyRequests, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { testOutbound } from '../support/outbound.ts';

const TOKEN = 'BBDC-NzI4MTk2OTk3ODk2OmQ3'; // shaped like a Bitbucket HTTP access token
const SECRET = 'bitbucket-hook-secret-4be1';
const DELIVERY_URL = 'https://forgelink.example/api/events-handler/v1/events/bitbucket';
const SPEC: HookSpec = { url: DELIVERY_URL, events: [...BITBUCKET_HOOK_EVENTS], secret: SECRET };

let fake: FakeBitbucket | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

/** A Bitbucket served under a context path (as many installs are), with one project and an admin token. */
async function start(options: { maxPageSize?: number; version?: string } = {}): Promise<FakeBitbucket> {
  fake = await startFakeBitbucket({ ...options, contextPath: '/bitbucket' });
  fake.addToken({ token: TOKEN, username: 'ci-bot@example.com' });
  fake.addProject({ key: 'PROJ', name: 'Project' });
  return fake;
}

function adapter(options: { secret?: string; sleep?: (ms: number) => Promise<void> } = {}) {
  // The trailing slash checks that the context path survives URL joining.
  return createBitbucketAdapter({ connectionId: 'c1', provider: 'bitbucket', baseUrl: `${fake!.url}/`, externalKey: null, secret: options.secret ?? TOKEN }, { outbound: testOutbound, sleep: options.sleep });
}

function addRepo(f: FakeBitbucket, slug: string): RepositoryRef {
  const repo = f.addRepository({ projectKey: 'PROJ', slug, defaultBranch: 'main' });
  return { externalId: String(repo.id), fullName: `PROJ/${slug}` };
}

async function rejection(promise: Promise<unknown>): Promise<ProviderHttpError> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ProviderHttpError);
  return error as ProviderHttpError;
}

describe('Bitbucket adapter: validate', () => {
  it('returns the token user from X-AUSERNAME and the server version when it holds PROJECT_READ and REPO_ADMIN', async () => {
    const f = await start({ version: '8.19.1' });
    addRepo(f, 'app');
    expect(await adapter().validate()).toEqual({ ok: true, identity: { account: 'ci-bot@example.com', detail: 'Bitbucket Data Center 8.19.1' } });
  });

  it('names PROJECT_READ when a repository token cannot read projects', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.addToken({ token: 'repo-token', username: 'bot', projectPermission: null, repoPermission: 'REPO_ADMIN' });
    const outcome = await adapter({ secret: 'repo-token' }).validate();
    expect(outcome).toEqual({ ok: false, reason: 'token lacks PROJECT_READ (Bitbucket lists no project it can read)' });
  });

  it('names REPO_ADMIN when the token may only write', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.addToken({ token: 'writer', username: 'writer', repoPermission: 'REPO_WRITE' });
    const outcome = await adapter({ secret: 'writer' }).validate();
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.reason).toMatch(/^token lacks REPO_ADMIN /);
  });

  it('reports a token Bitbucket rejects with 401', async () => {
    await start();
    const outcome = await adapter({ secret: 'revoked' }).validate();
    expect(outcome).toEqual({ ok: false, reason: 'token rejected by Bitbucket (401): Authentication failed. Please check your credentials and try again.' });
  });

  it('refuses an answer without X-AUSERNAME: empty listings from an anonymous call prove nothing', async () => {
    const f = await start();
    addRepo(f, 'app');
    const page = { size: 1, limit: 1, isLastPage: true, start: 0, values: [{ key: 'PROJ' }] };
    f.server.failNext('listProjects', 1, { status: 200, body: page });
    f.server.failNext('listRepos', 1, { status: 200, body: page });
    const outcome = await adapter().validate();
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.reason).toMatch(/no X-AUSERNAME/);
  });

  it('throws ProviderHttpError for 503 and for 429 with its Retry-After, so the activity retries', async () => {
    const f = await start();
    f.server.failNext('listProjects', 1, bitbucketError(503, 'Bitbucket is starting up', null));
    const unavailable = await rejection(adapter().validate());
    expect(unavailable).toMatchObject({ provider: 'bitbucket', status: 503, message: 'Bitbucket is starting up' });

    f.server.failNext('listRepos', 1, tooManyRequests(12));
    const limited = await rejection(adapter().validate());
    expect(limited).toMatchObject({ status: 429, retryAfterSeconds: 12 });
  });
});

describe('Bitbucket adapter: listRepositoriesPage', () => {
  async function walk(a: ReturnType<typeof adapter>) {
    const pages = [];
    let cursor: string | undefined;
    do {
      const page = await a.listRepositoriesPage(cursor === undefined ? {} : { cursor });
      pages.push(page);
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    return pages;
  }

  it('answers an empty instance with one empty last page', async () => {
    await start();
    expect(await adapter().listRepositoriesPage({})).toEqual({ repositories: [], apiCalls: 1 });
  });

  it('maps a repository: numeric id as externalId, PROJECT/slug, project key, default branch, browse URL', async () => {
    const f = await start();
    const { id } = f.addRepository({ projectKey: 'PROJ', slug: 'app', name: 'App', id: 731, defaultBranch: 'refs/heads/develop' });
    const page = await adapter().listRepositoriesPage({});
    expect(page.repositories).toEqual([
      { externalId: String(id), fullName: 'PROJ/app', project: 'PROJ', defaultBranch: 'develop', webUrl: `${f.url}/projects/PROJ/repos/app/browse` },
    ]);
    expect(page.nextCursor).toBeUndefined();
  });

  it('asks for 1000 per page, so the 1001st repository lands on a second page', async () => {
    const f = await start();
    for (let i = 0; i <= 1000; i++) f.addRepository({ projectKey: 'PROJ', slug: `r${String(i).padStart(4, '0')}` });
    const pages = await walk(adapter());
    expect(pages.map((p) => p.repositories.length)).toEqual([1000, 1]);
    expect(pages[0]!.nextCursor).toBe('1000');
  });

  it('stops on isLastPage when a page is exactly full, and follows nextPageStart past a clamped limit', async () => {
    const exact = await start({ maxPageSize: 3 });
    for (const slug of ['a', 'b', 'c']) addRepo(exact, slug);
    const single = await walk(adapter());
    expect(single.map((p) => p.repositories.length)).toEqual([3]);
    await exact.close();

    const clamped = await start({ maxPageSize: 2 });
    for (const slug of ['a', 'b', 'c', 'd', 'e']) addRepo(clamped, slug);
    const pages = await walk(adapter());
    expect(pages.map((p) => p.nextCursor)).toEqual(['2', '4', undefined]);
    expect(pages.flatMap((p) => p.repositories.map((r) => r.fullName))).toEqual(['PROJ/a', 'PROJ/b', 'PROJ/c', 'PROJ/d', 'PROJ/e']);
  });

  it('lists only the repositories the token administers', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.addToken({ token: 'writer', username: 'writer', repoPermission: 'REPO_WRITE' });
    expect((await adapter({ secret: 'writer' }).listRepositoriesPage({})).repositories).toEqual([]);
  });
});

describe('Bitbucket adapter: getRepository', () => {
  it('finds a repository by PROJECT/slug, and answers null when it is gone or its name now belongs to another', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    expect(await adapter().getRepository(ref)).toMatchObject({ externalId: ref.externalId, fullName: 'PROJ/app' });

    f.removeRepository(Number(ref.externalId));
    expect(await adapter().getRepository(ref)).toBeNull();

    addRepo(f, 'app');
    expect(await adapter().getRepository(ref)).toBeNull();
  });
});

describe('Bitbucket adapter: hooks', () => {
  it('creates a hook with the secret in its configuration and never returns the secret', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    const hook = await adapter().createHook(ref, SPEC);
    expect(hook).toEqual({ id: expect.stringMatching(/^\d+$/), url: DELIVERY_URL, events: [...BITBUCKET_HOOK_EVENTS], healthy: true });

    const stored = f.webhooks('PROJ', 'app');
    expect(stored).toHaveLength(1);
    expect(stored[0]).toMatchObject({ id: Number(hook.id), name: 'forgelink', active: true, configuration: { secret: SECRET } });

    const listed = await adapter().listHooks(ref);
    expect(listed).toEqual([hook]);
    expect(JSON.stringify(listed)).not.toContain(SECRET);
  });

  it('lists every page of hooks and reports a deactivated one as unhealthy', async () => {
    const f = await start({ maxPageSize: 2 });
    const ref = addRepo(f, 'app');
    const a = adapter();
    const created = [];
    for (let i = 0; i < 5; i++) created.push(await a.createHook(ref, { ...SPEC, url: `${DELIVERY_URL}?n=${i}` }));
    // Someone switches one off in the Bitbucket UI.
    await fetch(`${f.url}/rest/api/latest/projects/PROJ/repos/app/webhooks/${created[3]!.id}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ active: false }),
    });
    const listed = await a.listHooks(ref);
    expect(listed.map((h) => h.id)).toEqual(created.map((h) => h.id));
    expect(listed.map((h) => h.healthy)).toEqual([true, true, true, false, true]);
    expect(listed[3]!.disabledReason).toBe('active false');
    expect(f.server.count('listWebhooks')).toBe(3);
  });

  it('fails a hook listing that never ends at the caps, fast and for good, whatever the pages hold', async () => {
    // A tenant's server answering isLastPage: false for ever: before, the adapter collected pages until the step's timeout.
    const f = await start({ maxPageSize: 50 });
    const ref = addRepo(f, 'app');
    f.listEndlessly('listWebhooks', 'onward');
    const started = performance.now();
    const error = await adapter().listHooks(ref).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(ListingTooLongError);
    expect((error as Error).message).toBe(`bitbucket listed more than ${MAX_HOOK_PAGES} pages of hooks of one repository: forgelink caps a listing there`);
    expect(f.server.count('listWebhooks')).toBe(MAX_HOOK_PAGES);
    expect(performance.now() - started).toBeLessThan(10_000);
    // The step's failure: not retried (the same server lists as much again), with the reason.
    expect(toActivityFailure(error)).toMatchObject({ type: 'ProviderListingTooLong', nonRetryable: true, message: (error as Error).message });

    // Full pages of 1,000 reach the count cap first, on the third page.
    await f.close();
    const big = await start();
    const bigRef = addRepo(big, 'app');
    big.listEndlessly('listWebhooks', 'onward');
    expect(((await adapter().listHooks(bigRef).then(() => undefined, (e: unknown) => e)) as Error).message).toBe(
      `bitbucket listed more than ${MAX_HOOKS.toLocaleString('en-US')} hooks of one repository: forgelink caps a listing there`,
    );
    expect(big.server.count('listWebhooks')).toBe(3);
  });

  it('fails at once when nextPageStart does not move on (the same page for ever), for hooks and repositories', async () => {
    const f = await start({ maxPageSize: 5 });
    const ref = addRepo(f, 'app');
    f.listEndlessly('listWebhooks', 'same');
    const error = await adapter().listHooks(ref).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(ListingTooLongError);
    expect((error as Error).message).toMatch(/^bitbucket's listing does not move on: nextPageStart 0 after the page at 0/);
    expect(f.server.count('listWebhooks')).toBe(1);
    f.listEndlessly('listRepos', 'same');
    expect(await adapter().listRepositoriesPage({ cursor: '5' }).then(() => undefined, (e: unknown) => e)).toBeInstanceOf(ListingTooLongError);
  });

  it('updates a hook with the full spec, re-activating it and replacing events and secret', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    const a = adapter();
    const hook = await a.createHook(ref, { url: DELIVERY_URL, events: ['repo:refs_changed'], secret: 'old-secret' });
    await fetch(`${f.url}/rest/api/latest/projects/PROJ/repos/app/webhooks/${hook.id}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ active: false }),
    });
    const updated = await a.updateHook(ref, hook.id, SPEC);
    expect(updated).toEqual({ id: hook.id, url: DELIVERY_URL, events: [...BITBUCKET_HOOK_EVENTS], healthy: true });
    expect(f.webhooks('PROJ', 'app')[0]).toMatchObject({ active: true, configuration: { secret: SECRET } });
  });

  it('deletes a hook, and treats one already gone (by us or by hand) as deleted returning false', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    const a = adapter();
    const first = await a.createHook(ref, SPEC);
    expect(await a.deleteHook(ref, first.id)).toBe(true);
    expect(await a.deleteHook(ref, first.id)).toBe(false);

    const second = await a.createHook(ref, SPEC);
    f.deleteWebhookByHand('PROJ', 'app', Number(second.id));
    expect(await a.deleteHook(ref, second.id)).toBe(false);
    expect(f.webhooks('PROJ', 'app')).toEqual([]);
  });

  it('deletes only while the name answers the recorded id: after a delete-and-recreate under the same name it refuses, permanently, without a DELETE', async () => {
    const f = await start();
    const old = addRepo(f, 'app');
    f.removeRepository(Number(old.externalId));
    const current = addRepo(f, 'app');
    const hook = await adapter().createHook(current, SPEC);
    const from = f.server.calls.length;

    const refused = await adapter().deleteHook(old, hook.id).then(() => undefined, (e: unknown) => e);
    expect(refused).toBeInstanceOf(RepositoryNameTakenError);
    expect(refused).toMatchObject({ idAtName: current.externalId });
    const failure = toActivityFailure(refused);
    expect(failure).toMatchObject({ type: 'RepositoryNameTaken', nonRetryable: true });
    expect(failure.message).toContain(`PROJ/app is repository ${current.externalId} now, not ${old.externalId} as recorded`);
    expect(failure.message).not.toContain(TOKEN);
    // A lookup the caller's step made is compared the same, without a call.
    await expect(adapter().deleteHook(old, hook.id, { idAtName: current.externalId })).rejects.toBeInstanceOf(RepositoryNameTakenError);
    expect(f.server.calls.slice(from).map((c) => c.operation)).toEqual(['getRepo']);
    expect(f.webhooks('PROJ', 'app').map((h) => String(h.id))).toEqual([hook.id]);

    // The recorded repository answering its name: one lookup, then the DELETE; handed the lookup, the DELETE alone.
    const second = await adapter().createHook(current, SPEC);
    const before = f.server.calls.length;
    expect(await adapter().deleteHook(current, hook.id)).toBe(true);
    expect(await adapter().deleteHook(current, second.id, { idAtName: current.externalId })).toBe(true);
    expect(f.server.calls.slice(before).map((c) => c.operation)).toEqual(['getRepo', 'deleteWebhook', 'deleteWebhook']);
    expect(f.webhooks('PROJ', 'app')).toEqual([]);
  });

  it('creates and saves a hook only while the name answers the recorded id: another repository at the name is refused, permanently, nothing sent', async () => {
    const f = await start();
    const renamed = addRepo(f, 'app');
    const hook = await adapter().createHook(renamed, SPEC);
    f.renameRepository(Number(renamed.externalId), 'app-renamed');
    const other = addRepo(f, 'app');
    const from = f.server.calls.length;

    await expect(adapter().createHook(renamed, SPEC)).rejects.toMatchObject({ name: 'RepositoryNameTakenError', idAtName: other.externalId });
    await expect(adapter().updateHook(renamed, hook.id, SPEC)).rejects.toBeInstanceOf(RepositoryNameTakenError);
    // A lookup the caller's step made is compared the same, without a call; none at the name answers 404, nothing sent.
    await expect(adapter().createHook(renamed, SPEC, { idAtName: other.externalId })).rejects.toBeInstanceOf(RepositoryNameTakenError);
    expect(await rejection(adapter().createHook(renamed, SPEC, { idAtName: null }))).toMatchObject({ status: 404 });
    expect(f.server.calls.slice(from).map((c) => c.operation)).toEqual(['getRepo', 'getRepo']);
    expect(f.webhooks('PROJ', 'app')).toEqual([]);

    // The recorded repository at its name: the lookup, then the save; handed the lookup, the save alone.
    const before = f.server.calls.length;
    await adapter().createHook(other, SPEC);
    await adapter().updateHook(other, String(f.webhooks('PROJ', 'app')[0]!.id), SPEC, { idAtName: other.externalId });
    expect(f.server.calls.slice(before).map((c) => c.operation)).toEqual(['getRepo', 'createWebhook', 'updateWebhook']);
  });

  it('a name answering nothing (404) deletes nothing and returns false, without a DELETE', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    const hook = await adapter().createHook(ref, SPEC);
    const before = f.server.calls.length;
    expect(await adapter().deleteHook(ref, hook.id, { idAtName: null })).toBe(false);
    f.removeRepository(Number(ref.externalId));
    expect(await adapter().deleteHook(ref, hook.id)).toBe(false);
    expect(f.server.calls.slice(before).map((c) => c.operation)).toEqual(['getRepo']);
  });

  it('surfaces Bitbucket refusals as ProviderHttpError with the first error message', async () => {
    const f = await start();
    const ref = addRepo(f, 'app');
    const cloudKeys = await rejection(adapter().createHook(ref, { ...SPEC, events: ['repo:push'] }));
    expect(cloudKeys).toMatchObject({ status: 400, message: "Unknown event 'repo:push'." });

    f.addToken({ token: 'writer', username: 'writer', repoPermission: 'REPO_WRITE' });
    const denied = await rejection(adapter({ secret: 'writer' }).listHooks(ref));
    expect(denied).toMatchObject({ status: 401, message: 'You are not permitted to access this resource' });

    const missing = await rejection(adapter().updateHook(ref, '999', SPEC));
    expect(missing.status).toBe(404);
  });
});

describe('Bitbucket adapter: rate limits', () => {
  it('spaces calls out when X-RateLimit-Remaining runs low, by the bucket fill rate', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.rateLimit({ tokens: 3, fillRate: 5, intervalSeconds: 1 });
    const waits: number[] = [];
    const a = adapter({ sleep: async (ms) => void waits.push(ms) });

    await a.listRepositoriesPage({});
    expect(waits).toEqual([]);
    // 2 tokens left, 3 short of the low-water mark of 5, at 5 tokens a second.
    await a.listRepositoriesPage({});
    expect(waits).toEqual([600]);

    await a.listRepositoriesPage({});
    expect(waits).toEqual([600, 800]);
    // The bucket is empty: the 429 carries Retry-After for the activity's retry.
    const limited = await rejection(a.listRepositoriesPage({}));
    expect(limited).toMatchObject({ status: 429, retryAfterSeconds: 1 });
  });

  it('fails as throttled, without calling, when the headers ask for a long pause (capped by the retry policy)', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.rateLimit({ tokens: 3, fillRate: 1, intervalSeconds: 400_000 });
    const waits: number[] = [];
    const a = adapter({ sleep: async (ms) => void waits.push(ms) });
    await a.listRepositoriesPage({});
    const calls = f.server.calls.length;
    // 3 tokens short of the low-water mark, one per 400,000 s.
    expect(await rejection(a.listRepositoriesPage({}))).toMatchObject({ status: 429, retryAfterSeconds: 1_200_000 });
    expect(f.server.calls.length).toBe(calls);
    expect(waits).toEqual([]);
  });

  it('does not wait while the bucket is comfortably full', async () => {
    const f = await start();
    addRepo(f, 'app');
    f.rateLimit({ tokens: 60 });
    const waits: number[] = [];
    const a = adapter({ sleep: async (ms) => void waits.push(ms) });
    for (let i = 0; i < 3; i++) await a.listRepositoriesPage({});
    expect(waits).toEqual([]);
  });
});
