import { afterEach, describe, expect, it } from 'vitest';
import { createGitlabAdapter } from '../../activities/providers/gitlab.ts';
import { createBitbucketAdapter } from '../../activities/providers/bitbucket.ts';
import { createAzureDevOpsAdapter } from '../../activities/providers/azure-devops.ts';
import { createGithubAdapter } from '../../activities/providers/github.ts';
import { AnswerTooCostlyError, MAX_ANSWER_PARSE_COST } from '../../activities/providers/answer.ts';
import { MAX_HOOK_LISTING_PARSE_COST, type RepositoryRef } from '../../activities/providers/port.ts';
import { toActivityFailure } from '../../activities/errors.ts';
import { parseCost } from '../../lib/parse-cost.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { fillLargeOrganization, startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeGithub } from '../fakes/github.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * A tenant's provider server chooses what its answers hold, and JSON.parse runs on the shared
 * worker's main thread: each answer is counted (lib/parse-cost.ts) before it is parsed and refused
 * past MAX_ANSWER_PARSE_COST, and a hook listing's pages together past MAX_HOOK_LISTING_PARSE_COST
 * (activities/providers/answer.ts). Real adapters over HTTP against the fake providers, which answer
 * the costly JSON in place of a page (failNext).
 */

const MiB = 1024 * 1024;
/** `[[[…]]]`: 29 bytes of heap a byte once parsed (232 MiB for 8 MiB). */
const nested = (bytes: number) => `[${'['.repeat(bytes / 2 - 1)}${']'.repeat(bytes / 2 - 1)}]`;
const json = { 'content-type': 'application/json' };

/** A 3 MiB answer that counts ~87 MiB: past the answer bound on its own. */
const COSTLY = nested(3 * MiB);
/** A page of one value, 256 KiB of `[[[…]]]` (~7.3 MiB counted): under either bound, three of them past the hook listing's. */
const PAGE = `[${nested(256 * 1024)}]`;

/**
 * The most the heap grew above where it was while `fn` ran (sampled every millisecond, between the
 * calls' reads, and at its end), and what `fn` threw.
 */
async function heapGrowth(fn: () => Promise<unknown>): Promise<{ error: unknown; growth: number }> {
  const base = process.memoryUsage().heapUsed;
  let peak = base;
  const sample = () => (peak = Math.max(peak, process.memoryUsage().heapUsed));
  const timer = setInterval(sample, 1);
  try {
    const error = await fn().then(() => undefined, (e: unknown) => e);
    sample();
    return { error, growth: peak - base };
  } finally {
    clearInterval(timer);
  }
}

function expectRefused(thrown: unknown, origin: string, listing: boolean) {
  // Octokit wraps what its fetch throws (GitHub); the other clients throw it as it is.
  let error = thrown;
  while (error instanceof Error && !(error instanceof AnswerTooCostlyError) && error.cause !== undefined) error = error.cause;
  expect(error).toBeInstanceOf(AnswerTooCostlyError);
  const bound = Math.round((listing ? MAX_HOOK_LISTING_PARSE_COST : MAX_ANSWER_PARSE_COST) / MiB);
  expect((error as Error).message).toContain(`${origin} (`);
  expect((error as Error).message).toContain(`${listing ? 'a listing whose pages' : 'JSON that'} would take more than ${bound} MiB of memory once parsed: refused unparsed`);
  // Never retried: the same server answers the same.
  expect(toActivityFailure(thrown)).toMatchObject({ type: 'ProviderAnswerTooLarge', nonRetryable: true, message: (error as Error).message });
}

let close: () => Promise<void> = async () => {};
afterEach(() => close());

describe('GitLab: answers too costly to parse', () => {
  let gitlab: FakeGitlab;
  const TOKEN = 'glpat-answer-cost';
  async function start(): Promise<RepositoryRef> {
    gitlab = await startFakeGitlab();
    close = () => gitlab.close();
    gitlab.addToken({ token: TOKEN, username: 'ada', scopes: ['api', 'read_user', 'read_repository'] });
    const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
    return { externalId: String(project.id), fullName: project.pathWithNamespace };
  }
  const adapter = () => createGitlabAdapter({ connectionId: 'c1', provider: 'gitlab', baseUrl: gitlab.url, externalKey: null, secret: TOKEN }, { outbound: testOutbound });
  const link = (ref: RepositoryRef, page: number) => ({ link: `<${gitlab.url}/api/v4/projects/${ref.externalId}/hooks?page=${page}&per_page=100>; rel="next"` });

  it('refuses an answer that would take more than the answer bound, unparsed: a hook page at its first page, a project', async () => {
    const ref = await start();
    expect(parseCost(Buffer.from(COSTLY))).toBeGreaterThan(2 * MAX_ANSWER_PARSE_COST);
    gitlab.server.failNext('listHooks', 1, { status: 200, headers: { ...json, ...link(ref, 2) }, text: COSTLY });
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    // A hook listing's bound is the lower: its first page is refused by it.
    expectRefused(error, new URL(gitlab.url).origin, true);
    expect(gitlab.server.count('listHooks')).toBe(1);
    // Parsed, it would have held ~87 MiB while the next page was asked for.
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST);

    gitlab.server.failNext('getProject', 1, { status: 200, headers: json, text: COSTLY });
    const single = await heapGrowth(() => adapter().getRepository(ref));
    expectRefused(single.error, new URL(gitlab.url).origin, false);
    expect(single.growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
  });

  it("refuses a listing whose pages, each under the answer bound, would hold more than the listing's bound together", async () => {
    const ref = await start();
    const page = PAGE;
    const perPage = parseCost(Buffer.from(page));
    expect(perPage).toBeLessThan(MAX_ANSWER_PARSE_COST);
    expect(2 * perPage).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST);
    expect(3 * perPage).toBeGreaterThan(MAX_HOOK_LISTING_PARSE_COST);
    for (let n = 1; n <= 3; n++) gitlab.server.failNext('listHooks', 1, { status: 200, headers: { ...json, ...link(ref, n + 1) }, text: page });
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    expectRefused(error, new URL(gitlab.url).origin, true);
    // The third page was read, not parsed.
    expect(gitlab.server.count('listHooks')).toBe(3);
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST + 8 * MiB);
  });

  it('leaves a costly 429 or 503 answer unparsed: the status decides, throttled or unavailable, retried', async () => {
    const ref = await start();
    gitlab.server.failNext('getProject', 1, { status: 429, headers: { ...json, 'retry-after': '9' }, text: COSTLY });
    const throttled = await heapGrowth(() => adapter().getRepository(ref));
    expect(toActivityFailure(throttled.error)).toMatchObject({ type: 'ProviderThrottled', nonRetryable: false, message: 'gitlab answered 429: HTTP 429' });
    expect(throttled.growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
    gitlab.server.failNext('getProject', 1, { status: 503, headers: json, text: COSTLY });
    const unavailable = await adapter().getRepository(ref).then(() => undefined, (e: unknown) => e);
    expect(toActivityFailure(unavailable)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: 'gitlab answered 503: HTTP 503' });
    expect((await adapter().getRepository(ref))?.fullName).toBe('acme/app');
  });

  it("keeps a 400's message deep past the stack a permanent refusal, shown shallowly, not a retried RangeError; an object message as before", async () => {
    const ref = await start();
    const deep = `{"message":${nested(1_400_000)}}`;
    expect(parseCost(Buffer.from(deep))).toBeLessThan(MAX_ANSWER_PARSE_COST);
    gitlab.server.failNext('getProject', 1, { status: 400, headers: json, text: deep });
    const error = await adapter().getRepository(ref).then(() => undefined, (e: unknown) => e);
    expect(toActivityFailure(error)).toMatchObject({ nonRetryable: true, message: 'gitlab answered 400: [[[[…]]]]' });
    gitlab.server.failNext('getProject', 1, { status: 400, headers: json, text: JSON.stringify({ message: { url: ['is blocked: Requests to localhost are not allowed'] } }) });
    const validation = await adapter().getRepository(ref).then(() => undefined, (e: unknown) => e);
    expect((validation as Error).message).toBe('{"url":["is blocked: Requests to localhost are not allowed"]}');
  });

  it('still lists a large legitimate page, and every other answer as before', async () => {
    const ref = await start();
    gitlab.listEndlessly('listHooks', 'onward');
    // 20 full pages of 100 hooks (the page cap) fit the listing's bound: the listing ends at the page cap, not the cost's.
    const error = await adapter().listHooks(ref).then(() => undefined, (e: unknown) => e);
    expect((error as Error).name).toBe('ListingTooLongError');
    gitlab.listEndlessly(null);
    expect(await adapter().listHooks(ref)).toEqual([]);
    expect((await adapter().getRepository(ref))?.fullName).toBe('acme/app');
  });
});

describe('Bitbucket Data Center: answers too costly to parse', () => {
  let bitbucket: FakeBitbucket;
  const TOKEN = 'BBDC-answer-cost';
  async function start(): Promise<RepositoryRef> {
    bitbucket = await startFakeBitbucket();
    close = () => bitbucket.close();
    bitbucket.addToken({ token: TOKEN, username: 'ada' });
    bitbucket.addProject({ key: 'PROJ', name: 'Project' });
    const repo = bitbucket.addRepository({ projectKey: 'PROJ', slug: 'app', defaultBranch: 'main' });
    return { externalId: String(repo.id), fullName: 'PROJ/app' };
  }
  const adapter = () => createBitbucketAdapter({ connectionId: 'c1', provider: 'bitbucket', baseUrl: bitbucket.url, externalKey: null, secret: TOKEN }, { outbound: testOutbound });

  it('refuses an answer that would take more than the answer bound, unparsed: a webhook page at its first page, a repository', async () => {
    const ref = await start();
    const page = `{"size":1,"limit":1000,"isLastPage":false,"start":0,"nextPageStart":1,"values":${COSTLY}}`;
    bitbucket.server.failNext('listWebhooks', 1, { status: 200, headers: json, text: page });
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    expectRefused(error, new URL(bitbucket.url).origin, true);
    expect(bitbucket.server.count('listWebhooks')).toBe(1);
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST);

    bitbucket.server.failNext('getRepo', 1, { status: 200, headers: json, text: COSTLY });
    const single = await heapGrowth(() => adapter().getRepository(ref));
    expectRefused(single.error, new URL(bitbucket.url).origin, false);
    expect(single.growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
  });

  it("refuses a listing whose pages would hold more than the listing's bound together", async () => {
    const ref = await start();
    for (let n = 0; n < 3; n++) {
      const page = `{"size":1,"limit":1000,"isLastPage":false,"start":${n},"nextPageStart":${n + 1},"values":${PAGE}}`;
      bitbucket.server.failNext('listWebhooks', 1, { status: 200, headers: json, text: page });
    }
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    expectRefused(error, new URL(bitbucket.url).origin, true);
    expect(bitbucket.server.count('listWebhooks')).toBe(3);
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST + 8 * MiB);
  });

  it('leaves a costly error answer unparsed and lets its status decide (a 503 is retried), and still reads a full page of 1,000 repositories', async () => {
    const ref = await start();
    bitbucket.server.failNext('getRepo', 1, { status: 503, headers: { ...json, 'retry-after': '7' }, text: COSTLY });
    const { error, growth } = await heapGrowth(() => adapter().getRepository(ref));
    expect(toActivityFailure(error)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: 'bitbucket answered 503: HTTP 503' });
    expect(growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
    for (let i = 0; i < 999; i++) bitbucket.addRepository({ projectKey: 'PROJ', slug: `service-${i}-with-a-longer-name`, defaultBranch: 'main' });
    const page = await adapter().listRepositoriesPage({});
    expect(page.repositories).toHaveLength(1000);
  });
});

describe('Azure DevOps: answers too costly to parse, the SDK\'s included', () => {
  let fake: FakeAzureDevOps;
  const PAT = 'ado-answer-cost';
  let ref: RepositoryRef;
  async function start(): Promise<void> {
    fake = await startFakeAzureDevOps({ organization: 'contoso' });
    close = () => fake.close();
    fake.addPat({ pat: PAT, displayName: 'Ada' });
    const alpha = fake.addProject({ name: 'Alpha' });
    const api = fake.addRepository({ projectName: 'Alpha', name: 'api', defaultBranch: 'refs/heads/main' });
    ref = { externalId: api.id, fullName: 'Alpha/api', projectId: alpha.id };
  }
  const adapter = () => createAzureDevOpsAdapter({ connectionId: 'c1', provider: 'azure-devops', baseUrl: fake.url, externalKey: fake.url, secret: PAT }, { outbound: testOutbound });

  it("refuses a project's repositories (the SDK's read) that would take more than the answer bound, instead of parsing them", async () => {
    await start();
    fake.server.failNext('listRepositories', 1, { status: 200, headers: json, text: `{"count":1,"value":${COSTLY}}` });
    const { error, growth } = await heapGrowth(() => adapter().listRepositoriesPage({ cursor: `repos:${ref.projectId}` }));
    expectRefused(error, new URL(fake.url).origin, false);
    expect(growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
    // The next read parses as before.
    expect((await adapter().listRepositoriesPage({ cursor: `repos:${ref.projectId}` })).repositories.map((r) => r.fullName)).toEqual(['Alpha/api']);
  });

  it('refuses a subscriptions query (the hooks REST calls) that would take more than the answer bound', async () => {
    await start();
    fake.server.failNext('querySubscriptions', 1, { status: 200, headers: json, text: `{"count":1,"results":${COSTLY}}` });
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    // The query's answer is the whole hook listing: refused at the hook listing's bound.
    expectRefused(error, new URL(fake.url).origin, true);
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST);
  });

  it("refuses a hook listing whose one subscription's publisherInputs is costly at the hook listing's bound, not the answer's", async () => {
    await start();
    // ~1 MiB of `[[[…]]]` in a filter value: counts ~29 MiB, under one answer's bound (40 MiB) and over a hook listing's (16 MiB).
    const inputs = `{"a":${nested(1024 * 1024)}}`;
    const text = `{"count":1,"results":[{"id":"s1","eventType":"git.push","publisherInputs":${inputs},"consumerInputs":{"url":"https://x.invalid/hook"}}]}`;
    expect(parseCost(Buffer.from(text))).toBeGreaterThan(MAX_HOOK_LISTING_PARSE_COST);
    expect(parseCost(Buffer.from(text))).toBeLessThan(MAX_ANSWER_PARSE_COST);
    fake.server.failNext('querySubscriptions', 1, { status: 200, headers: json, text });
    const { error, growth } = await heapGrowth(() => adapter().listHooks(ref));
    expectRefused(error, new URL(fake.url).origin, true);
    expect(growth).toBeLessThan(MAX_HOOK_LISTING_PARSE_COST);
  });

  it('keeps only strings of a listed subscription: a filter that is not a string is dropped, not held', async () => {
    await start();
    const text = JSON.stringify({
      count: 1,
      results: [{ id: 's1', eventType: 'git.push', status: ['x'], publisherInputs: { branch: 'main', a: [[[1]]], b: { c: 'd' }, repository: ref.externalId }, consumerInputs: { url: 'https://x.invalid/hook' } }],
    });
    fake.server.failNext('querySubscriptions', 1, { status: 200, headers: json, text });
    const [hook] = await adapter().listHooks(ref);
    expect(hook).toEqual({ id: 's1', url: 'https://x.invalid/hook', events: ['git.push'], healthy: false, disabledReason: 'status unknown', filters: { branch: 'main' } });
  });

  it("lets an error status win over its body, the SDK's calls and the hooks REST calls alike: a deep message is shown shallowly, a costly body left unparsed", async () => {
    await start();
    const deep = `{"message":${nested(1_400_000)}}`;
    fake.server.failNext('listRepositories', 1, { status: 400, headers: json, text: deep });
    const sdkError = await adapter().listRepositoriesPage({ cursor: `repos:${ref.projectId}` }).then(() => undefined, (e: unknown) => e);
    expect(toActivityFailure(sdkError)).toMatchObject({ nonRetryable: true, message: 'azure-devops answered 400: [[[[…]]]]' });
    fake.server.failNext('listRepositories', 1, { status: 503, headers: json, text: COSTLY });
    const sdkUnavailable = await adapter().listRepositoriesPage({ cursor: `repos:${ref.projectId}` }).then(() => undefined, (e: unknown) => e);
    expect(toActivityFailure(sdkUnavailable)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false });
    fake.server.failNext('querySubscriptions', 1, { status: 503, headers: json, text: `{"count":1,"results":${COSTLY}}` });
    const restUnavailable = await adapter().listHooks(ref).then(() => undefined, (e: unknown) => e);
    expect(toActivityFailure(restUnavailable)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: 'azure-devops answered 503: HTTP 503' });
  });

  it("still reads one project's 10,000 repositories, unpaged (~8 MB, near the byte cap)", async () => {
    await start();
    fillLargeOrganization(fake, { projects: 1, repositoriesPerProject: 10_000, subscriptions: 0 });
    const { fanOut } = await adapter().listRepositoriesPage({});
    const page = await adapter().listRepositoriesPage({ cursor: fanOut![1] });
    expect(page.repositories).toHaveLength(10_000);
  });
});

describe("GitHub (the operator's server, counted all the same): answers too costly to parse", () => {
  it('refuses a repository page that would take more than the answer bound, and still reads a full page of 100', async () => {
    const github = await startFakeGithub();
    close = () => github.close();
    const installation = github.addInstallation({ account: { login: 'acme' } });
    for (let i = 0; i < 100; i++) github.addRepository(installation.id, { fullName: `acme/service-${i}` });
    const adapter = createGithubAdapter(
      { connectionId: 'c1', provider: 'github', baseUrl: github.url, externalKey: String(installation.id) },
      { appId: github.appId, privateKey: github.privateKeyPem, baseUrl: github.url },
      { outbound: testOutbound },
    );
    github.server.failNext('listInstallationRepos', 1, { status: 200, headers: json, text: `{"total_count":1,"repositories":${COSTLY}}` });
    const { error, growth } = await heapGrowth(() => adapter.listRepositoriesPage({}));
    expectRefused(error, new URL(github.url).origin, false);
    expect(growth).toBeLessThan(MAX_ANSWER_PARSE_COST);
    expect((await adapter.listRepositoriesPage({})).repositories).toHaveLength(100);
  });
});
