import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createGitlabAdapter, type GitlabClientOptions } from '../../activities/providers/gitlab.ts';
import { createBitbucketAdapter } from '../../activities/providers/bitbucket.ts';
import { ListingTooLongError, MAX_HOOK_PAGES, ProviderHttpError, type HookSpec, type RepositoryRef } from '../../activities/providers/port.ts';
import { retryLater, startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { walkListing } from '../support/listing.ts';
import { listen, testOutbound } from '../support/outbound.ts';
import { toActivityFailure } from '../../activities/errors.ts';
import { DEFAULT_MAX_BODY_BYTES } from '../../activities/outbound.ts';

const ALL_SCOPES = ['api', 'read_user', 'read_repository'];
const SPEC: HookSpec = { url: 'https://ci.example/hooks/gitlab', events: ['push_events', 'tag_push_events', 'merge_requests_events'], secret: 'hook-secret-1' };

let gitlab: FakeGitlab;
let n = 0;

beforeEach(async () => {
  gitlab = await startFakeGitlab();
});
afterEach(async () => {
  await gitlab.close();
});

function adapterFor(options: { scopes?: string[]; expiresAt?: string; revoked?: boolean; secret?: string } = {}, client: Partial<GitlabClientOptions> = {}) {
  const secret = options.secret ?? `glpat-${++n}-adapter`;
  if (!options.secret) gitlab.addToken({ token: secret, username: `user${n}`, userId: 500 + n, scopes: options.scopes ?? ALL_SCOPES, expiresAt: options.expiresAt });
  if (options.revoked) gitlab.revokeToken(secret);
  return createGitlabAdapter({ connectionId: 'c1', provider: 'gitlab', baseUrl: gitlab.url, externalKey: null, secret }, { outbound: testOutbound, ...client });
}

const refOf = (project: { id: number; pathWithNamespace: string }): RepositoryRef => ({ externalId: String(project.id), fullName: project.pathWithNamespace });

describe('GitLab adapter: validate', () => {
  it('returns the identity of a token with every scope', async () => {
    const adapter = adapterFor();
    expect(await adapter.validate()).toEqual({ ok: true, identity: { account: `user${n}`, accountId: String(500 + n) } });
  });

  it('names the missing scope', async () => {
    const outcome = await adapterFor({ scopes: ['api', 'read_repository'] }).validate();
    expect(outcome).toEqual({ ok: false, reason: 'token is missing scope `read_user`' });
    // It stops at the token check: no identity lookup with a token it already refused.
    expect(gitlab.server.count('currentUser')).toBe(0);
  });

  it('refuses expired, revoked and unknown tokens with distinct reasons', async () => {
    const expired = await adapterFor({ expiresAt: '2020-01-31' }).validate();
    expect(expired.ok).toBe(false);
    expect(!expired.ok && expired.reason).toMatch(/^token expired: GitLab says "Token is expired/);
    const revoked = await adapterFor({ revoked: true }).validate();
    expect(!revoked.ok && revoked.reason).toMatch(/^token revoked: GitLab says "Token was revoked/);
    const unknown = await adapterFor({ secret: 'glpat-never-issued' }).validate();
    expect(unknown).toEqual({ ok: false, reason: 'token rejected by GitLab (401): 401 Unauthorized' });
  });

  it('throws ProviderHttpError on 5xx and on 429 (with Retry-After), after a single attempt', async () => {
    const adapter = adapterFor();
    gitlab.server.failNext('tokenSelf', 1, { status: 500, body: { message: '500 Internal Server Error' } });
    await expect(adapter.validate()).rejects.toMatchObject({ name: 'ProviderHttpError', provider: 'gitlab', status: 500, message: '500 Internal Server Error' });

    gitlab.server.failNext('tokenSelf', 1, retryLater(7));
    const error = await adapter.validate().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProviderHttpError);
    expect(error).toMatchObject({ status: 429, retryAfterSeconds: 7, message: 'Retry later' });
    // gitbeaker's stock requester would have tried ten times.
    expect(gitlab.server.count('tokenSelf')).toBe(2);
  });
});

describe('GitLab adapter: repositories', () => {
  async function walk(adapter: ReturnType<typeof adapterFor>) {
    const walked = await walkListing(adapter);
    for (const page of walked) expect(page.apiCalls).toBe(1);
    return {
      pages: walked.map((page) => ({
        size: page.repositories.length,
        ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}),
        ...(page.fanOut ? { fanOut: page.fanOut } : {}),
      })),
      ids: walked.flatMap((page) => page.repositories.map((r) => r.externalId)),
    };
  }

  it('ends at once when the token administers no project', async () => {
    gitlab.addProject({ pathWithNamespace: 'acme/dev-only', accessLevel: 30 });
    expect(await walk(adapterFor())).toEqual({ pages: [{ size: 0 }], ids: [] });
  });

  it.each([
    [1, [{ size: 1, nextCursor: 'ids:1-' }, { size: 0 }]],
    // A full first page asks for the highest id beyond it: there is none.
    [100, [{ size: 100, nextCursor: 'split:1-100' }, { size: 0 }]],
    // The rest splits into id ranges walked in parallel; the last is open-ended, so it ends on an empty page.
    [250, [{ size: 100, nextCursor: 'split:1-100' }, { size: 0, fanOut: ['ids:100-176', 'ids:175-'] }, { size: 75 }, { size: 75, nextCursor: 'ids:250-' }, { size: 0 }]],
  ])('pages %i projects 100 at a time by keyset cursor', async (count, pages) => {
    for (let i = 0; i < count; i++) gitlab.addProject({ pathWithNamespace: `acme/p${i}` });
    const walked = await walk(adapterFor());
    expect(walked.pages).toEqual(pages);
    expect(walked.ids).toEqual(Array.from({ length: count }, (_, i) => String(i + 1)));
  });

  it('splits a sparse id space into ranges and still lists every project once', async () => {
    for (let i = 0; i < 130; i++) gitlab.addProject({ id: 1 + i, pathWithNamespace: `acme/low${i}` });
    for (let i = 0; i < 500; i++) gitlab.addProject({ id: 90_000 + i * 7, pathWithNamespace: `acme/high${i}` });
    const walked = await walk(adapterFor());
    expect(walked.pages[1]!.fanOut).toHaveLength(8);
    expect(walked.ids.map(Number).sort((a, b) => a - b)).toEqual([
      ...Array.from({ length: 130 }, (_, i) => 1 + i),
      ...Array.from({ length: 500 }, (_, i) => 90_000 + i * 7),
    ]);
  });

  it('accepts the first version\'s plain id_after cursor', async () => {
    for (let i = 0; i < 3; i++) gitlab.addProject({ pathWithNamespace: `acme/p${i}` });
    const page = await adapterFor().listRepositoriesPage({ cursor: '1' });
    expect(page.repositories.map((r) => r.externalId)).toEqual(['2', '3']);
    await expect(adapterFor().listRepositoriesPage({ cursor: 'ids:x' })).rejects.toThrow(/invalid GitLab repository cursor/);
  });

  it('lists only projects the token may add hooks to, mapped to the cache shape', async () => {
    gitlab.addProject({ id: 7, pathWithNamespace: 'acme/maintained', defaultBranch: 'trunk', accessLevel: 40 });
    gitlab.addProject({ id: 8, pathWithNamespace: 'acme/owned', accessLevel: 50 });
    gitlab.addProject({ id: 9, pathWithNamespace: 'acme/developed', accessLevel: 30 });
    gitlab.addProject({ id: 10, pathWithNamespace: 'public/stranger', accessLevel: 0, visibility: 'public' });
    const page = await adapterFor().listRepositoriesPage({});
    expect(page.repositories).toEqual([
      { externalId: '7', fullName: 'acme/maintained', defaultBranch: 'trunk', webUrl: `${gitlab.url}/acme/maintained` },
      { externalId: '8', fullName: 'acme/owned', defaultBranch: 'main', webUrl: `${gitlab.url}/acme/owned` },
    ]);
  });

  it('gets one repository by id, and null once it is gone or hidden', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const hidden = gitlab.addProject({ pathWithNamespace: 'other/secret', accessLevel: 0 });
    gitlab.renameProject(project.id, 'acme/renamed');
    expect(await adapter.getRepository(refOf(project))).toEqual({ externalId: String(project.id), fullName: 'acme/renamed', defaultBranch: 'main', webUrl: `${gitlab.url}/acme/renamed` });
    expect(await adapter.getRepository(refOf(hidden))).toBeNull();
    gitlab.removeProject(project.id);
    expect(await adapter.getRepository(refOf(project))).toBeNull();
  });

  it('surfaces other failures as ProviderHttpError', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    gitlab.server.failNext('getProject', 1, { status: 502, text: 'Bad Gateway' });
    await expect(adapter.getRepository(refOf(project))).rejects.toMatchObject({ name: 'ProviderHttpError', status: 502 });
    gitlab.server.failNext('listProjects', 1, retryLater(12));
    await expect(adapter.listRepositoriesPage({})).rejects.toMatchObject({ status: 429, retryAfterSeconds: 12 });
  });
});

describe('GitLab adapter: hooks', () => {
  it('creates a hook with exactly the requested events and the secret as its token', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const hook = await adapter.createHook(refOf(project), SPEC);
    expect(hook).toEqual({ id: expect.stringMatching(/^\d+$/), url: SPEC.url, events: ['push_events', 'tag_push_events', 'merge_requests_events'], healthy: true });

    const [stored] = gitlab.hooks(project.id);
    expect(stored).toMatchObject({ id: Number(hook.id), url: SPEC.url, token: 'hook-secret-1', enable_ssl_verification: true, push_events: true, tag_push_events: true, merge_requests_events: true });
    expect(Object.entries(stored!).filter(([key, value]) => key.endsWith('_events') && value === true).map(([key]) => key).sort()).toEqual(['merge_requests_events', 'push_events', 'tag_push_events']);
  });

  it('refuses event names GitLab does not know instead of dropping them', async () => {
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    await expect(adapterFor().createHook(refOf(project), { ...SPEC, events: ['push_events', 'repo:push'] })).rejects.toThrow(/repo:push/);
    expect(gitlab.hooks(project.id)).toEqual([]);
  });

  it('lists every hook across pages, with health, and never the token', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const created = [];
    for (let i = 0; i < 101; i++) created.push(await adapter.createHook(refOf(project), { ...SPEC, url: `https://ci.example/hooks/${i}` }));
    gitlab.setHookAlertStatus(project.id, Number(created[3]!.id), 'temporarily_disabled');
    gitlab.setHookAlertStatus(project.id, Number(created[4]!.id), 'disabled');

    const before = gitlab.server.count('listHooks');
    const hooks = await adapter.listHooks(refOf(project));
    expect(gitlab.server.count('listHooks') - before).toBe(2);
    expect(hooks.map((h) => h.id)).toEqual(created.map((h) => h.id));
    expect(hooks.filter((h) => !h.healthy).map((h) => h.url)).toEqual(['https://ci.example/hooks/3', 'https://ci.example/hooks/4']);
    expect(hooks[3]!.disabledReason).toMatch(/^alert_status temporarily_disabled until \d{4}-\d\d-\d\dT/);
    expect(hooks[4]!.disabledReason).toBe('alert_status disabled');
    expect(hooks[0]).toEqual({ id: created[0]!.id, url: 'https://ci.example/hooks/0', events: SPEC.events, healthy: true });
    expect(JSON.stringify(hooks)).not.toContain('hook-secret-1');
  });

  it('fails a hook listing that links onward for ever at the page cap, and one that links to itself at once', async () => {
    // gitbeaker's ProjectHooks.all followed such a server until the step's timeout, copying its list at every page.
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/endless' });
    gitlab.listEndlessly('listHooks', 'onward');
    const started = performance.now();
    const error = await adapter.listHooks(refOf(project)).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(ListingTooLongError);
    expect((error as Error).message).toBe(`gitlab listed more than ${MAX_HOOK_PAGES} pages of hooks of one repository: forgelink caps a listing there`);
    expect(gitlab.server.count('listHooks')).toBe(MAX_HOOK_PAGES);
    expect(performance.now() - started).toBeLessThan(10_000);

    gitlab.listEndlessly('listHooks', 'same');
    const again = await adapter.listHooks(refOf(project)).then(() => undefined, (e: unknown) => e);
    expect((again as Error).message).toMatch(/^gitlab's listing does not move on: the page after page 1 links to page 1/);
    expect(gitlab.server.count('listHooks')).toBe(MAX_HOOK_PAGES + 1);
  });

  it('an answer longer than 8 MiB fails the step for good (ProviderAnswerTooLarge), through gitbeaker and the Bitbucket client alike', async () => {
    // A JSON list that never ends, written as fast as it is read.
    const server = await listen('127.0.0.1', (_, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('[');
      const chunk = Buffer.from('{"id":1,"url":"https://x"},'.repeat(1000));
      const write = () => {
        if (!res.destroyed && res.write(chunk)) setImmediate(write);
      };
      res.on('drain', write);
      write();
    });
    try {
      expect(DEFAULT_MAX_BODY_BYTES).toBe(8 * 1024 * 1024);
      const gitlabAdapter = createGitlabAdapter({ connectionId: 'c1', provider: 'gitlab', baseUrl: server.url, externalKey: null, secret: 'glpat-x' }, { outbound: testOutbound });
      const bitbucketAdapter = createBitbucketAdapter({ connectionId: 'c1', provider: 'bitbucket', baseUrl: server.url, externalKey: null, secret: 't' }, { outbound: testOutbound });
      for (const listing of [() => gitlabAdapter.listHooks({ externalId: '1', fullName: 'a/b' }), () => bitbucketAdapter.listHooks({ externalId: '1', fullName: 'P/r' })]) {
        const failure = toActivityFailure(await listing().then(() => undefined, (e: unknown) => e));
        expect(failure).toMatchObject({ type: 'ProviderAnswerTooLarge', nonRetryable: true, message: `${server.url} answered with more than ${8 * 1024 * 1024} bytes` });
      }
    } finally {
      await server.close();
    }
  });

  it('updates a disabled hook to the spec: new URL and events, token kept, enabled again', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const hook = await adapter.createHook(refOf(project), SPEC);
    gitlab.setHookAlertStatus(project.id, Number(hook.id), 'disabled');

    const updated = await adapter.updateHook(refOf(project), hook.id, { ...SPEC, url: 'https://ci.example/hooks/v2', events: ['push_events'] });
    expect(updated).toEqual({ id: hook.id, url: 'https://ci.example/hooks/v2', events: ['push_events'], healthy: true });
    // The URL changed, which clears a token unless it is sent along.
    expect(gitlab.hooks(project.id)[0]).toMatchObject({ url: 'https://ci.example/hooks/v2', token: 'hook-secret-1', tag_push_events: false, merge_requests_events: false, alert_status: 'executable' });
    expect(JSON.stringify(updated)).not.toContain('hook-secret-1');
  });

  it('deletes a hook once; an already-deleted hook is false, other refusals throw', async () => {
    const adapter = adapterFor();
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    const first = await adapter.createHook(refOf(project), SPEC);
    const second = await adapter.createHook(refOf(project), SPEC);

    expect(await adapter.deleteHook(refOf(project), first.id)).toBe(true);
    expect(await adapter.deleteHook(refOf(project), first.id)).toBe(false);
    gitlab.deleteHookByHand(project.id, Number(second.id));
    expect(await adapter.deleteHook(refOf(project), second.id)).toBe(false);
    expect(gitlab.hooks(project.id)).toEqual([]);

    const developer = gitlab.addProject({ pathWithNamespace: 'acme/dev', accessLevel: 30 });
    await expect(adapter.deleteHook(refOf(developer), '1')).rejects.toMatchObject({ name: 'ProviderHttpError', status: 403 });
    await expect(adapter.createHook(refOf(developer), SPEC)).rejects.toMatchObject({ status: 403, message: '403 Forbidden' });
  });
});

describe('GitLab adapter: rate limits', () => {
  it('waits for RateLimit-Reset once under 5% of the window remains: a few seconds in place, longer as a throttled failure', async () => {
    await gitlab.close();
    let clock = Date.UTC(2030, 0, 1, 12, 0, 30);
    gitlab = await startFakeGitlab({ now: () => clock });
    gitlab.setRateLimit(20);
    const sleeps: number[] = [];
    const adapter = adapterFor({}, { now: () => clock, sleep: async (ms) => { sleeps.push(ms); clock += ms; } });
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });

    for (let i = 0; i < 20; i++) await adapter.getRepository(refOf(project));
    // One request (5% of 20) was left before the 20th: still no reason to wait.
    expect(sleeps).toEqual([]);
    // The 20th answer said 0 remaining, the window ends in 30 s: too long to hold the call (and the
    // worker's listing limiter), so it fails as throttled without a request, retried after the reset.
    const calls = gitlab.server.calls.length;
    await expect(adapter.getRepository(refOf(project))).rejects.toMatchObject({ status: 429, retryAfterSeconds: 30 });
    expect(gitlab.server.calls.length).toBe(calls);
    // 3 s before the reset, the call waits them out in place.
    clock += 27_000;
    for (let i = 0; i < 5; i++) expect(await adapter.getRepository(refOf(project))).not.toBeNull();
    expect(sleeps).toEqual([3_000]);
    expect(gitlab.server.calls.filter((c) => c.status === 429)).toEqual([]);
  });
});
