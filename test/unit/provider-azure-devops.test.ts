import http from 'node:http';
import net from 'node:net';
import zlib from 'node:zlib';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RestClient } from 'typed-rest-client/RestClient.js';
import { createAzureDevOpsAdapter } from '../../activities/providers/azure-devops.ts';
import { guardSdkClient } from '../../activities/providers/azure-devops-http.ts';
import { ProviderHttpError, type HookSpec, type RepositoryRef } from '../../activities/providers/port.ts';
import { fillLargeOrganization, startFakeAzureDevOps, tooManyRequests, vssError, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { walkListing } from '../support/listing.ts';
import { listen, TEST_ADDRESS_POLICY, testOutbound, type Listener } from '../support/outbound.ts';
import { createOutbound, OutboundRefusedError, ResponseTooLargeError } from '../../activities/outbound.ts';

const PAT = 'ado-pat-5f1c2e9a7b';
const SECRET = 'basic-auth-pass-93ad';
const DELIVERY_URL = 'https://forgelink.example/api/events-handler/v1/events/azure-devops';

/** The hook set attach creates for one repository (DESIGN.md): three subscriptions. */
const HOOK_SET: HookSpec[] = [
  { url: DELIVERY_URL, events: ['git.push'], basicAuthUser: 'forgelink', secret: SECRET },
  { url: DELIVERY_URL, events: ['git.pullrequest.created'], basicAuthUser: 'forgelink', secret: SECRET },
  { url: DELIVERY_URL, events: ['git.pullrequest.updated'], basicAuthUser: 'forgelink', secret: SECRET, filters: { notificationType: 'PushNotification' } },
];

let fake: FakeAzureDevOps;
let ref: RepositoryRef;

beforeEach(async () => {
  fake = await startFakeAzureDevOps({ organization: 'contoso' });
  fake.addPat({ pat: PAT, displayName: 'Ada Lovelace' });
  const alpha = fake.addProject({ name: 'Alpha' });
  const api = fake.addRepository({ projectName: 'Alpha', name: 'api', defaultBranch: 'refs/heads/main' });
  ref = { externalId: api.id, fullName: 'Alpha/api', projectId: alpha.id };
});

afterEach(async () => {
  await fake.close();
});

const adapter = (secret = PAT, options?: { projectsPerPage?: number }) =>
  createAzureDevOpsAdapter({ connectionId: 'c1', provider: 'azure-devops', baseUrl: `${fake.url}/`, externalKey: fake.url, secret }, { outbound: testOutbound, ...options });

async function rejection(promise: Promise<unknown>): Promise<ProviderHttpError> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ProviderHttpError);
  return error as ProviderHttpError;
}

describe('Azure DevOps adapter: validate', () => {
  it('returns the PAT owner once projects, repositories and subscriptions are all readable', async () => {
    const outcome = await adapter().validate();
    expect(outcome).toEqual({ ok: true, identity: { account: 'Ada Lovelace', accountId: expect.stringMatching(/^[0-9a-f-]{36}$/) } });
    expect(fake.server.count('querySubscriptions')).toBe(1);
  });

  it("proves each permission with a small answer in an organization whose whole lists pass the answer limit", async () => {
    // 9,000 subscriptions (~10 MiB unfiltered) and 12,000 repositories (~8.8 MiB organization-wide):
    // each list alone is more than an answer may hold (8 MiB), and validate runs on every connect and rotation.
    fillLargeOrganization(fake, { projects: 120, repositoriesPerProject: 100, subscriptions: 9_000 });
    const outcome = await adapter().validate();
    expect(outcome).toMatchObject({ ok: true, identity: { account: 'Ada Lovelace' } });
    const repositoryCalls = fake.server.calls.filter((c) => c.operation === 'listRepositories');
    // Alpha is the first project: its repositories, not the organization's.
    expect(repositoryCalls.map((c) => c.path)).toEqual([`/contoso/${ref.projectId}/_apis/git/repositories`]);
    const [query] = fake.server.calls.filter((c) => c.operation === 'querySubscriptions');
    expect(query!.body).toMatchObject({ publisherInputFilters: [{ conditions: [{ inputId: 'repository', operator: 'equals', inputValue: '00000000-0000-0000-0000-000000000000' }] }] });
  });

  it('checks code read on the organization when it has no project', async () => {
    const empty = await startFakeAzureDevOps({ organization: 'empty' });
    try {
      empty.addPat({ pat: PAT, displayName: 'Ada Lovelace' });
      empty.addPat({ pat: 'no-code', displayName: 'No Code', canReadCode: false });
      const on = (secret: string) =>
        createAzureDevOpsAdapter({ connectionId: 'c1', provider: 'azure-devops', baseUrl: empty.url, externalKey: empty.url, secret }, { outbound: testOutbound });
      expect((await on(PAT).validate()).ok).toBe(true);
      expect(empty.server.calls.filter((c) => c.operation === 'listRepositories').map((c) => c.path)).toEqual(['/empty/_apis/git/repositories']);
      const refused = await on('no-code').validate();
      expect(!refused.ok && refused.reason).toMatch(/^PAT cannot read repositories/);
    } finally {
      await empty.close();
    }
  });

  it('reaches the server only through the guarded HTTP layer, the SDK included', async () => {
    // An outbound layer that may not reach the fake's loopback address: neither the SDK nor the hooks call gets through.
    const strict = createOutbound({ allowHttpHosts: [], allowPrivateNetworks: [] });
    const guarded = createAzureDevOpsAdapter({ connectionId: 'c1', provider: 'azure-devops', baseUrl: fake.url, externalKey: fake.url, secret: PAT }, { outbound: strict });
    await expect(guarded.validate()).rejects.toBeInstanceOf(OutboundRefusedError);
    await expect(guarded.listHooks(ref)).rejects.toBeInstanceOf(OutboundRefusedError);
    expect(fake.server.calls).toEqual([]);
  });

  it('refuses a PAT Azure DevOps rejects', async () => {
    const outcome = await adapter('not-a-pat').validate();
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.reason).toMatch(/PAT rejected by Azure DevOps \(401\): TF400813/);
  });

  it('names the missing hook permission', async () => {
    fake.addPat({ pat: 'reader', displayName: 'Reader', canManageHooks: false });
    const outcome = await adapter('reader').validate();
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.reason).toContain(
      'PAT cannot manage service hook subscriptions: the owner must be Project Administrator or hold Edit subscriptions',
    );
  });

  it('names the missing code read', async () => {
    fake.addPat({ pat: 'no-code', displayName: 'No Code', canReadCode: false });
    const outcome = await adapter('no-code').validate();
    expect(!outcome.ok && outcome.reason).toMatch(/^PAT cannot read repositories/);
  });

  it('throws on a server failure instead of calling the PAT bad', async () => {
    fake.server.failNext('connectionData', 1, vssError(500, 'VS402375: internal error', 'InternalServerErrorException'));
    expect((await rejection(adapter().validate())).status).toBe(500);
    fake.server.failNext('querySubscriptions', 1, tooManyRequests(30));
    const throttled = await rejection(adapter().validate());
    expect(throttled).toMatchObject({ status: 429, retryAfterSeconds: 30 });
  });
});

describe('Azure DevOps adapter: repositories', () => {
  it("pages every project's repositories, including an empty project", async () => {
    fake.addProject({ name: 'Empty' });
    fake.addProject({ name: 'Gamma' });
    fake.addRepository({ projectName: 'Alpha', name: 'web' });
    const tool = fake.addRepository({ projectName: 'Gamma', name: 'tool', defaultBranch: 'refs/heads/develop' });
    const ado = adapter(PAT, { projectsPerPage: 2 });

    const pages = await walkListing(ado);
    // A page of projects fans out to each project's repositories; the next page of projects follows.
    expect(pages[0]).toMatchObject({ repositories: [], nextCursor: 'projects:2', apiCalls: 1 });
    expect(pages[0]!.fanOut).toHaveLength(2);
    expect(pages[0]!.fanOut!.every((c) => c.startsWith('repos:'))).toBe(true);
    const repositories = pages.flatMap((p) => p.repositories);
    expect(repositories.map((r) => r.fullName).sort()).toEqual(['Alpha/api', 'Alpha/web', 'Gamma/tool']);
    expect(repositories.find((r) => r.fullName === 'Alpha/api')).toEqual({
      externalId: ref.externalId,
      fullName: 'Alpha/api',
      project: 'Alpha',
      projectId: ref.projectId,
      defaultBranch: 'main',
      webUrl: `${fake.url}/Alpha/_git/api`,
    });
    // An empty repository has no default branch yet.
    expect(repositories.find((r) => r.fullName === 'Alpha/web')?.defaultBranch).toBeUndefined();
    expect(repositories.find((r) => r.fullName === 'Gamma/tool')).toEqual(expect.objectContaining({ externalId: tool.id, project: 'Gamma', defaultBranch: 'develop' }));
    // Three projects: two pages of projects and one page per project, the empty one included.
    expect(pages).toHaveLength(5);
    expect(pages.every((p) => p.apiCalls === 1)).toBe(true);
  });

  it('ends without an empty extra page when the projects fill the last page exactly', async () => {
    fake.addProject({ name: 'Beta' });
    const page = await adapter(PAT, { projectsPerPage: 2 }).listRepositoriesPage({});
    expect(page.nextCursor).toBeUndefined();
    expect(fake.server.count('listProjects')).toBe(1);
  });

  it("asks for the git routes once when the projects' repositories are fetched in parallel", async () => {
    fake.addProject({ name: 'Beta' });
    fake.addProject({ name: 'Gamma' });
    fake.addRepository({ projectName: 'Gamma', name: 'tool' });
    fake.server.latencyMs = 20;
    const ado = adapter();
    const { fanOut } = await ado.listRepositoriesPage({});
    expect(fanOut).toHaveLength(3);
    const pages = await Promise.all(fanOut!.map((cursor) => ado.listRepositoriesPage({ cursor })));
    expect(pages.flatMap((p) => p.repositories.map((r) => r.fullName)).sort()).toEqual(['Alpha/api', 'Gamma/tool']);
    // The SDK caches an area's routes only once they arrive: three first calls would each ask.
    expect(fake.server.count('discoverGit')).toBe(1);
  });

  it('keeps connections alive: calls share connections, within an adapter and across adapters', async () => {
    fake.addProject({ name: 'Beta' });
    fake.addProject({ name: 'Gamma' });
    await walkListing(adapter());
    const calls = fake.server.calls.length;
    // The core routes, the projects page, the git routes, three projects' repositories: one at a time.
    // No resource-area discovery: the clients are made at the organization's URL.
    expect(fake.server.calls.map((c) => c.operation)).toEqual(['discoverCore', 'listProjects', 'discoverGit', 'listRepositories', 'listRepositories', 'listRepositories']);
    expect(calls).toBe(6);
    expect(fake.server.connectionsAccepted).toBe(1);
    // The next activity's adapter for the same organization reuses the idle connection.
    await adapter().listRepositoriesPage({});
    expect(fake.server.calls.length).toBeGreaterThan(calls);
    expect(fake.server.connectionsAccepted).toBe(1);
  });

  it("fails a project whose repositories' answer passes the limit, instead of listing it empty as a deleted one", async () => {
    // 12,000 repositories in one project, ~9 MiB: the SDK used to answer a cut read with null, as for a 404.
    fillLargeOrganization(fake, { projects: 1, repositoriesPerProject: 12_000, subscriptions: 0 });
    const large = fake.server.calls.length;
    const { fanOut } = await adapter().listRepositoriesPage({});
    expect(fanOut).toHaveLength(2);
    await expect(adapter().listRepositoriesPage({ cursor: fanOut![1] })).rejects.toBeInstanceOf(ResponseTooLargeError);
    expect(fake.server.calls.length).toBeGreaterThan(large);
    // A project deleted since its page was listed (404) still lists no repository.
    expect((await adapter().listRepositoriesPage({ cursor: 'repos:6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c' })).repositories).toEqual([]);
  });

  it('maps a throttled project listing to ProviderHttpError with Retry-After', async () => {
    fake.server.failNext('listProjects', 1, tooManyRequests(12));
    expect(await rejection(adapter().listRepositoriesPage({}))).toMatchObject({ status: 429, retryAfterSeconds: 12 });
  });

  it('gets a repository by id, following renames, and null once it is gone', async () => {
    const ado = adapter();
    expect(await ado.getRepository(ref)).toMatchObject({ externalId: ref.externalId, fullName: 'Alpha/api' });
    fake.renameRepository(ref.externalId, 'api-v2');
    expect((await ado.getRepository(ref))?.fullName).toBe('Alpha/api-v2');
    fake.removeRepository(ref.externalId);
    expect(await ado.getRepository(ref)).toBeNull();
  });
});

describe('Azure DevOps adapter: service hook subscriptions', () => {
  it('creates one subscription per event type, scoped to the repository, with basic auth', async () => {
    const ado = adapter();
    const hooks = [];
    for (const spec of HOOK_SET) hooks.push(await ado.createHook(ref, spec));
    expect(hooks.map((h) => h.events)).toEqual([['git.push'], ['git.pullrequest.created'], ['git.pullrequest.updated']]);
    expect(hooks.every((h) => h.healthy && h.url === DELIVERY_URL)).toBe(true);
    expect(hooks[2]!.filters).toEqual({ notificationType: 'PushNotification' });
    expect(hooks[0]!.filters).toBeUndefined();

    const stored = fake.subscriptions();
    expect(stored).toHaveLength(3);
    for (const subscription of stored) {
      expect(subscription).toMatchObject({
        publisherId: 'tfs',
        consumerId: 'webHooks',
        consumerActionId: 'httpRequest',
        publisherInputs: { projectId: ref.projectId, repository: ref.externalId },
        consumerInputs: { url: DELIVERY_URL, basicAuthUsername: 'forgelink', basicAuthPassword: SECRET },
      });
    }
    expect(stored.map((s) => s.publisherInputs.notificationType)).toEqual([undefined, undefined, 'PushNotification']);
  });

  it("lists only this repository's subscriptions, unhealthy when on probation or disabled, without secrets", async () => {
    const ado = adapter();
    const created = [];
    for (const spec of HOOK_SET) created.push(await ado.createHook(ref, spec));
    const other = fake.addRepository({ projectName: 'Alpha', name: 'web' });
    await ado.createHook({ externalId: other.id, fullName: 'Alpha/web', projectId: ref.projectId }, HOOK_SET[0]!);
    fake.setSubscriptionStatus(created[0]!.id, 'onProbation');
    fake.setSubscriptionStatus(created[1]!.id, 'disabledBySystem');

    const hooks = await ado.listHooks(ref);
    expect(hooks.map((h) => h.id).sort()).toEqual(created.map((h) => h.id).sort());
    expect(Object.fromEntries(hooks.map((h) => [h.events[0], h.healthy]))).toEqual({
      'git.push': false,
      'git.pullrequest.created': false,
      'git.pullrequest.updated': true,
    });
    expect(Object.fromEntries(hooks.map((h) => [h.events[0], h.disabledReason]))).toEqual({
      'git.push': 'status onProbation',
      'git.pullrequest.created': 'status disabledBySystem',
      'git.pullrequest.updated': undefined,
    });
    const serialized = JSON.stringify(hooks);
    expect(serialized).not.toContain(PAT);
    expect(serialized).not.toContain(SECRET);
  });

  it('re-enables and reconciles a subscription with updateHook', async () => {
    const ado = adapter();
    const hook = await ado.createHook(ref, HOOK_SET[2]!);
    fake.setSubscriptionStatus(hook.id, 'disabledBySystem');
    const updated = await ado.updateHook(ref, hook.id, { ...HOOK_SET[2]!, secret: 'rotated-pass' });
    expect(updated).toMatchObject({ id: hook.id, healthy: true, events: ['git.pullrequest.updated'], filters: { notificationType: 'PushNotification' } });
    expect(fake.subscriptions()[0]).toMatchObject({ status: 'enabled', consumerInputs: { basicAuthPassword: 'rotated-pass' } });
    expect((await rejection(ado.updateHook(ref, '00000000-0000-0000-0000-000000000000', HOOK_SET[0]!))).status).toBe(404);
  });

  it('deletes a subscription and treats an already-gone one as deleted', async () => {
    const ado = adapter();
    const first = await ado.createHook(ref, HOOK_SET[0]!);
    const second = await ado.createHook(ref, HOOK_SET[1]!);
    expect(await ado.deleteHook(ref, first.id)).toBe(true);
    expect(await ado.deleteHook(ref, first.id)).toBe(false);
    fake.deleteSubscriptionByHand(second.id);
    expect(await ado.deleteHook(ref, second.id)).toBe(false);
    expect(fake.subscriptions()).toEqual([]);
  });

  it('surfaces refusals and throttling as ProviderHttpError', async () => {
    const ado = adapter();
    fake.server.failNext('createSubscription', 1, tooManyRequests(45));
    expect(await rejection(ado.createHook(ref, HOOK_SET[0]!))).toMatchObject({ status: 429, retryAfterSeconds: 45 });
    fake.addPat({ pat: 'reader', displayName: 'Reader', canManageHooks: false });
    expect((await rejection(adapter('reader').listHooks(ref))).status).toBe(403);
    expect((await rejection(adapter('reader').deleteHook(ref, 'any'))).status).toBe(403);
  });
});

describe("Azure DevOps adapter: the SDK's discovery of its areas", () => {
  const failure = (promise: Promise<unknown>) => promise.then((value) => ({ value }), (error: unknown) => error);

  it("makes one request for a discovery answered 503 or cut: the activity's retry policy is the only one", async () => {
    // The SDK's own locations client retried reads 5 times, each within a request's limits (120 s): one step held its worker slot ~12 minutes.
    fake.server.failNext('connectionData', 10, vssError(503, 'Service Unavailable', 'VssServiceException'));
    expect((await rejection(adapter().validate())).status).toBe(503);
    expect(fake.server.count('connectionData')).toBe(1);
    fake.server.clearFaults();
    fake.server.failNext('discoverCore', 10, vssError(503, 'Service Unavailable', 'VssServiceException'));
    expect((await rejection(adapter().listRepositoriesPage({}))).status).toBe(503);
    expect(fake.server.count('discoverCore')).toBe(1);
    fake.server.clearFaults();
    // A connection reset was retried as well.
    fake.server.dropNext('discoverCore', 10);
    expect(await failure(adapter().listRepositoriesPage({}))).toBeInstanceOf(Error);
    expect(fake.server.count('discoverCore')).toBe(2);
    fake.server.clearFaults();
    // The areas' own clients retry nothing either.
    fake.server.failNext('discoverGit', 10, vssError(503, 'Service Unavailable', 'VssServiceException'));
    expect((await rejection(adapter().getRepository(ref))).status).toBe(503);
    expect(fake.server.count('discoverGit')).toBe(1);
  });

  it("makes its core and git clients at the organization's URL whatever the resource areas name: that host gets no request, hence no PAT", async () => {
    const requests: string[] = [];
    const other = await listen('127.0.0.1', (req, res) => {
      requests.push(`${req.method} ${req.url} ${req.headers.authorization ?? '(no credential)'}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"count":0,"value":[]}');
    });
    try {
      // Another host name (the SDK's PAT handler sent the PAT to any), and the organization's host on
      // another port; real Azure DevOps names the organization's primary URL, which may be its other one.
      for (const elsewhere of [other.url.replace('127.0.0.1', 'localhost'), other.url]) {
        fake.locateArea('core', `${elsewhere}/contoso/`);
        fake.locateArea('git', `${elsewhere}/contoso/`);
        const ado = adapter();
        expect(await ado.validate()).toMatchObject({ ok: true });
        expect(await ado.getRepository(ref)).toMatchObject({ externalId: ref.externalId });
      }
      expect(requests).toEqual([]);
      expect(other.connections).toBe(0);
      expect(fake.server.count('resourceAreas')).toBe(0);
    } finally {
      await other.close();
    }
  });
});

describe("Azure DevOps adapter: the SDK's HTTP client is bounded like every outbound call", () => {
  const listeners: Listener[] = [];
  afterEach(async () => {
    vi.useRealTimers();
    await Promise.all(listeners.splice(0).map((l) => l.close()));
  });
  const on = (url: string, outbound = testOutbound) =>
    createAzureDevOpsAdapter({ connectionId: 'c1', provider: 'azure-devops', baseUrl: `${url}/org`, externalKey: `${url}/org`, secret: PAT }, { outbound });
  const failure = (promise: Promise<unknown>) => promise.then((value) => ({ value }), (error: unknown) => error);

  /** A server that answers its first request's headers and one byte of the body, then nothing; `closed` resolves when that request's connection goes. */
  async function stalling() {
    let arrived!: () => void;
    let gone!: () => void;
    const requested = new Promise<void>((resolve) => (arrived = resolve));
    const closed = new Promise<void>((resolve) => (gone = resolve));
    const listener = await listen('127.0.0.1', (_, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 1_000_000 }).write(' ');
      res.once('close', gone);
      arrived();
    });
    listeners.push(listener);
    return { url: listener.url, requested, closed };
  }

  it('asks for uncompressed answers and refuses a compressed one before inflating it (64 MiB from 64 KiB on the wire)', async () => {
    const bomb = zlib.gzipSync(Buffer.concat([Buffer.alloc(64 * 1024 * 1024, ' '), Buffer.from('{}')]), { level: 9 });
    const asked: (string | undefined)[] = [];
    const server = await listen('127.0.0.1', (req, res) => {
      asked.push(req.headers['accept-encoding']);
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(bomb);
    });
    listeners.push(server);
    const error = await failure(on(server.url).validate());
    expect(error).toBeInstanceOf(OutboundRefusedError);
    expect((error as Error).message).toBe(
      `${server.url} answered with Content-Encoding gzip, though asked for none: not decoded (a proxy in front of the server compresses despite Accept-Encoding: identity; configure it to honour that)`,
    );
    expect(asked).toEqual(['identity']);
    // The fake's answers are identity, as Azure DevOps' are when asked: the adapter works as before.
    expect(fake.server.calls.length).toBe(0);
    expect((await adapter().validate()).ok).toBe(true);
    // The SDK's calls; the hooks calls go through Outbound.fetch, which never decodes an answer.
    const sdkCalls = fake.server.calls.filter((c) => c.operation !== 'querySubscriptions');
    expect(sdkCalls.length).toBeGreaterThan(0);
    expect(sdkCalls.map((c) => c.headers['accept-encoding'])).toEqual(sdkCalls.map(() => 'identity'));
  });

  it('ends a call whose answer falls silent for 30 s, and closes its connection', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    // A call's deadline ends with its answer's read.
    expect((await adapter().validate()).ok).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
    const server = await stalling();
    const outcome = failure(on(server.url).validate());
    await server.requested;
    // The SDK's socket timeout counts only silence: a byte every few seconds kept a call open for ever.
    vi.advanceTimersByTime(30_000);
    expect(((await outcome) as Error).name).toBe('TimeoutError');
    await server.closed;
  }, 5_000);

  /** A server whose answer's body comes a piece every 50 ms, `pieces` of them (for ever without); `closed` resolves when a request's connection goes. */
  async function steady(pieces = Number.POSITIVE_INFINITY) {
    let gone!: () => void;
    const closed = new Promise<void>((resolve) => (gone = resolve));
    const listener = await listen('127.0.0.1', (_, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).write('[');
      let sent = 0;
      const piece = setInterval(() => {
        if (++sent < pieces) res.write('"abcdefgh",');
        else res.end('"z"]');
      }, 50);
      res.once('close', () => (clearInterval(piece), gone()));
    });
    listeners.push(listener);
    return { url: listener.url, closed };
  }
  /** An SDK read through the guard, with its limits scaled down from 30 s and 120 s. */
  const sdkRead = (url: string, path = '/x') => {
    const rest = new RestClient('forgelink-test', undefined, [], { socketTimeout: 60_000, keepAlive: true, allowRedirects: false });
    guardSdkClient({ rest }, url, testOutbound.agents, { answerMs: 300, completeMs: 1_500 });
    return rest.get<string[]>(`${url}${path}`);
  };

  it('reads a body that comes steadily for longer than the wait for its headers (a large unpaged listing from a slow server)', async () => {
    const server = await steady(16);
    const started = performance.now();
    const answer = await sdkRead(server.url);
    expect(performance.now() - started).toBeGreaterThan(600);
    expect(answer.result).toHaveLength(16);
  });

  it('ends a call whose steady body is not complete within its total deadline, and closes its connection', async () => {
    const server = await steady();
    const error = await failure(sdkRead(server.url));
    expect(error).toMatchObject({ name: 'TimeoutError', message: 'answer not complete within 1500 ms' });
    await server.closed;
  });

  it('closes the connection of a call whose activity is cancelled', async () => {
    const server = await stalling();
    const env = new MockActivityEnvironment();
    const outcome = failure(env.run(() => on(server.url).validate()));
    await server.requested;
    env.cancel('CANCELLED');
    expect(await outcome).toBeInstanceOf(Error);
    await server.closed;
  }, 5_000);

  it("ends an SDK call that waits for a connection (every socket to its host held) at its deadline or cancellation, and takes it out of the agent's queue", async () => {
    // On Node 20 a destroyed request still queued in the agent emits nothing until a socket to its
    // host frees: the SDK waited for its 'error' until the longest deadline of the calls holding them.
    const held: http.ServerResponse[] = [];
    let allHeld!: () => void;
    const full = new Promise<void>((resolve) => (allHeld = resolve));
    const server = await listen('127.0.0.1', (_, res) => {
      if (held.push(res) === 128) allHeld();
    });
    listeners.push(server);
    const outbound = createOutbound(TEST_ADDRESS_POLICY);
    const queued = () => Object.values(outbound.agents.http.requests).flat().length;
    const inQueue = () =>
      new Promise<void>((resolve) => {
        const wait = () => (queued() === 1 ? resolve() : setImmediate(wait));
        wait();
      });
    const read = (limits: { answerMs: number; completeMs: number }) => {
      const rest = new RestClient('forgelink-test', undefined, [], { keepAlive: true, allowRedirects: false });
      guardSdkClient({ rest }, server.url, outbound.agents, limits);
      return failure(rest.get(`${server.url}/x`));
    };
    const holding = Array.from({ length: 128 }, () => outbound.fetch(`${server.url}/`, { timeoutMs: 60_000 }));
    await full;

    const unanswered = read({ answerMs: 200, completeMs: 60_000 });
    await inQueue();
    expect(await unanswered).toMatchObject({ name: 'TimeoutError', message: 'no answer within 200 ms' });
    expect(queued()).toBe(0);
    const incomplete = read({ answerMs: 60_000, completeMs: 200 });
    await inQueue();
    expect(await incomplete).toMatchObject({ name: 'TimeoutError', message: 'answer not complete within 200 ms' });
    expect(queued()).toBe(0);
    const env = new MockActivityEnvironment();
    const cancelled = env.run(() => read({ answerMs: 60_000, completeMs: 60_000 }));
    await inQueue();
    env.cancel('CANCELLED');
    expect(await cancelled).toBeInstanceOf(Error);
    expect(queued()).toBe(0);

    // The held calls answered, their connections go back to the pool; none was opened for the ended calls.
    for (const res of held) res.end('{}');
    for (const response of await Promise.all(holding)) expect(await response.text()).toBe('{}');
    expect(server.connections).toBe(128);
  }, 10_000);

  it("drops an error's or a bodiless answer's compressed body, keeping its status and Retry-After; an empty Content-Encoding is identity", async () => {
    const gzipped = zlib.gzipSync('{"message":"busy"}');
    const server = await listen('127.0.0.1', (req, res) => {
      if (req.url === '/empty') res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': '' }).end('["a"]');
      else if (req.url === '/busy') res.writeHead(503, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'retry-after': '5' }).end(gzipped);
      else if (req.url === '/none') res.writeHead(204, { 'content-encoding': 'gzip' }).end();
      else res.writeHead(304, { 'content-encoding': 'gzip' }).end();
    });
    listeners.push(server);
    expect((await sdkRead(server.url, '/empty')).result).toEqual(['a']);
    const busy = await failure(sdkRead(server.url, '/busy'));
    expect(busy).not.toBeInstanceOf(OutboundRefusedError);
    expect(busy).toMatchObject({ statusCode: 503, responseHeaders: { 'retry-after': '5' } });
    expect(await sdkRead(server.url, '/none')).toMatchObject({ statusCode: 204, result: null });
    expect(await failure(sdkRead(server.url, '/unchanged'))).toMatchObject({ statusCode: 304 });
  });

  it("sends an SDK request to the organization's origin only", async () => {
    const other = await listen('127.0.0.1');
    listeners.push(other);
    const rest = new RestClient('forgelink-test', undefined, [], { keepAlive: true, allowRedirects: false });
    guardSdkClient({ rest }, fake.url, testOutbound.agents, { answerMs: 300, completeMs: 1_500 });
    const error = await failure(rest.get(`${other.url}/x`));
    expect(error).toBeInstanceOf(OutboundRefusedError);
    expect((error as Error).message).toBe(`an Azure DevOps SDK request to ${other.url} refused: the PAT goes to the organization's origin ${new URL(fake.url).origin} only`);
    expect(other.connections).toBe(0);
  });

  it('never goes through a proxy from the environment: the guarded agent still checks every address', async () => {
    const asked: string[] = [];
    const proxy = net.createServer((socket) => socket.once('data', (chunk) => (asked.push(chunk.toString().split('\r\n')[0]!), socket.destroy())));
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, HTTP_PROXY: process.env.HTTP_PROXY, NO_PROXY: process.env.NO_PROXY };
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    Object.assign(process.env, { HTTPS_PROXY: proxyUrl, HTTP_PROXY: proxyUrl });
    delete process.env.NO_PROXY;
    try {
      const metadata = await failure(on('https://169.254.169.254', createOutbound({ allowHttpHosts: [] })).validate());
      expect(metadata).toBeInstanceOf(OutboundRefusedError);
      expect(await adapter().validate()).toMatchObject({ ok: true });
      expect(asked).toEqual([]);
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
      await new Promise((resolve) => proxy.close(resolve));
    }
  });
});
