import { MockActivityEnvironment } from '@temporalio/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { AnswerBudgetFullError, AnswerTooCostlyError, MAX_ANSWER_PARSE_COST } from '../../activities/providers/answer.ts';
import { answerBudgetLimits, createAnswerBudget, type AnswerBudget } from '../../activities/providers/answer-budget.ts';
import type { ProviderAdapter, ProviderTarget, RepositoryRef } from '../../activities/providers/port.ts';
import { holdingAdmission } from '../../activities/activity-admission.ts';
import { toActivityFailure } from '../../activities/errors.ts';
import { parseCost } from '../../lib/parse-cost.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { fillLargeOrganization, startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { ACTIVITY_NOT_ADMITTED, INLINE_NOT_ADMITTED } from '../../workflows/contract.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * The worker's budget for parsed provider answers (activities/providers/answer-budget.ts): every
 * answer a call counts (activities/providers/answer.ts) is reserved before it is parsed and given
 * back when what holds it ends (here the steps, wrapped as the activities are, by holdingAdmission).
 * Real adapters through the provider factory, over HTTP, against the fake providers; the costly
 * answers are each under the one-answer bound, and refused only because the worker (or the
 * organization's share) already holds others.
 */

const MiB = 1024 * 1024;
const json = { 'content-type': 'application/json' };
/** `[[[…]]]`: 29 bytes of heap a byte once parsed. */
const nested = (bytes: number) => `[${'['.repeat(bytes / 2 - 1)}${']'.repeat(bytes / 2 - 1)}]`;
/** ~1.2 MiB of `[[[…]]]`, ~35 MiB counted: under the answer bound alone. */
const PAD = nested(1.2 * MiB);

/** Steps as the worker wraps its activities: each gives back what it held when it ends. */
const steps = holdingAdmission({ run: async (fn: () => Promise<unknown>) => fn() });

interface HeldStep {
  /** What the step's call ended with (its value or its error), as soon as it did. */
  outcome: Promise<{ value?: unknown; error?: unknown }>;
  /** Ends the step: what it held is given back. */
  end(): Promise<unknown>;
}
/** A step that makes `call` and keeps what it parsed until `end`. */
function heldStep(call: () => Promise<unknown>): HeldStep {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let answered!: (outcome: { value?: unknown; error?: unknown }) => void;
  const outcome = new Promise<{ value?: unknown; error?: unknown }>((resolve) => (answered = resolve));
  const step = steps.run(async () => {
    answered(await call().then((value) => ({ value }), (error: unknown) => ({ error })));
    await gate;
  });
  return { outcome, end: () => (open(), step) };
}

/** The most the heap grew above where it was while `fn` ran (sampled every millisecond and at its end), and what `fn` threw. */
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

function expectBusy(error: unknown, why: 'worker' | 'organization') {
  let cause = error;
  while (cause instanceof Error && !(cause instanceof AnswerBudgetFullError) && cause.cause !== undefined) cause = cause.cause;
  expect(cause).toBeInstanceOf(AnswerBudgetFullError);
  expect((cause as Error).message).toMatch(why === 'worker' ? /all it admits/ : /its share/);
  // Retried: the worker is busy, the tenant not wrong.
  expect(toActivityFailure(error)).toMatchObject({ type: 'WorkerBusy', nonRetryable: false });
}

let closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.map((close) => close()));
  closers = [];
});

interface Providers {
  gitlab: FakeGitlab;
  azure: FakeAzureDevOps;
  github: FakeGithub;
  bitbucket: FakeBitbucket;
  /** The adapter of organization `org`'s connection to `provider`. */
  adapter(provider: 'gitlab' | 'azure-devops' | 'github' | 'bitbucket', org: string): ProviderAdapter;
  gitlabRef: RepositoryRef;
  bitbucketRef: RepositoryRef;
  azureProjectId: string;
}
async function providers(budget: AnswerBudget): Promise<Providers> {
  const [gitlab, azure, github, bitbucket] = await Promise.all([startFakeGitlab(), startFakeAzureDevOps({ organization: 'contoso' }), startFakeGithub(), startFakeBitbucket()]);
  closers.push(() => gitlab.close(), () => azure.close(), () => github.close(), () => bitbucket.close());
  bitbucket.addToken({ token: 'BBDC-budget', username: 'ada' });
  bitbucket.addProject({ key: 'PROJ', name: 'Project' });
  const repo = bitbucket.addRepository({ projectKey: 'PROJ', slug: 'app', defaultBranch: 'main' });
  gitlab.addToken({ token: 'glpat-budget', username: 'ada', scopes: ['api', 'read_user', 'read_repository'] });
  const project = gitlab.addProject({ pathWithNamespace: 'acme/app' });
  azure.addPat({ pat: 'ado-budget', displayName: 'Ada' });
  const alpha = azure.addProject({ name: 'Alpha' });
  const installation = github.addInstallation({ account: { login: 'acme' } });
  const factory = createProviderFactory({ outbound: testOutbound, github: { appId: github.appId, privateKey: github.privateKeyPem }, answerBudget: budget });
  const targets: Record<string, Omit<ProviderTarget, 'organizationId'>> = {
    gitlab: { connectionId: 'gitlab', provider: 'gitlab', baseUrl: gitlab.url, externalKey: null, secret: 'glpat-budget' },
    'azure-devops': { connectionId: 'azure', provider: 'azure-devops', baseUrl: azure.url, externalKey: azure.url, secret: 'ado-budget' },
    github: { connectionId: 'github', provider: 'github', baseUrl: github.url, externalKey: String(installation.id) },
    bitbucket: { connectionId: 'bitbucket', provider: 'bitbucket', baseUrl: bitbucket.url, externalKey: null, secret: 'BBDC-budget' },
  };
  return {
    gitlab,
    azure,
    github,
    bitbucket,
    adapter: (provider, org) => factory({ ...targets[provider]!, organizationId: org }),
    gitlabRef: { externalId: String(project.id), fullName: project.pathWithNamespace },
    bitbucketRef: { externalId: String(repo.id), fullName: 'PROJ/app' },
    azureProjectId: alpha.id,
  };
}

describe("the worker's answer budget", () => {
  it('refuses, unparsed and retryably, the answers past the worker budget or an organization share when several organizations hold costly answers at once; all given back after', async () => {
    const gitlabAnswer = (id: string) => `{"id":${id},"path_with_namespace":"acme/app","default_branch":"main","web_url":"http://gitlab.example/acme/app","pad":${PAD}}`;
    const cost = parseCost(Buffer.from(gitlabAnswer('1')));
    expect(cost).toBeLessThan(MAX_ANSWER_PARSE_COST);
    expect(cost).toBeGreaterThan(30 * MiB);
    // Three such answers at once, one organization's one and a half.
    const budget = createAnswerBudget({ limit: Math.floor(3.5 * cost), perOrganization: Math.floor(1.5 * cost) });
    const p = await providers(budget);
    const costly = (provider: 'gitlab' | 'azure-devops' | 'github') => {
      if (provider === 'gitlab') p.gitlab.server.failNext('getProject', 1, { status: 200, headers: json, text: gitlabAnswer(p.gitlabRef.externalId) });
      if (provider === 'azure-devops') p.azure.server.failNext('listRepositories', 1, { status: 200, headers: json, text: `{"count":0,"value":[],"pad":${PAD}}` });
      if (provider === 'github') p.github.server.failNext('listInstallationRepos', 1, { status: 200, headers: json, text: `{"total_count":0,"repositories":[],"pad":${PAD}}` });
    };
    const call = (provider: 'gitlab' | 'azure-devops' | 'github', org: string) => {
      costly(provider);
      const adapter = p.adapter(provider, org);
      if (provider === 'gitlab') return () => adapter.getRepository(p.gitlabRef);
      if (provider === 'azure-devops') return () => adapter.listRepositoriesPage({ cursor: `repos:${p.azureProjectId}` });
      return () => adapter.listRepositoriesPage({});
    };

    // Organization a holds one (its GitLab project, kept by its step).
    const a1 = heldStep(call('gitlab', 'org-a'));
    expect((await a1.outcome).value).toMatchObject({ fullName: 'acme/app' });
    expect(budget.held()).toBe(cost);
    expect(budget.held('org-a')).toBe(cost);

    // Then at once: a's second (past its share), b's GitLab, c's Azure DevOps, d's GitHub (one of them past the worker's budget).
    let a2!: HeldStep;
    let others!: HeldStep[];
    let outcomes!: { value?: unknown; error?: unknown }[];
    const concurrent = await heapGrowth(async () => {
      a2 = heldStep(call('gitlab', 'org-a'));
      others = [heldStep(call('gitlab', 'org-b')), heldStep(call('azure-devops', 'org-c')), heldStep(call('github', 'org-d'))];
      outcomes = await Promise.all([a2, ...others].map((step) => step.outcome)).then((all) => all.slice(1));
    });
    expect(concurrent.error).toBeUndefined();
    // The heap grew by what the budget took at most (three parsed at ~1 byte of heap a counted byte), not by the two refused.
    expect(concurrent.growth).toBeLessThan(budget.limit - cost + 16 * MiB);
    expectBusy((await a2.outcome).error, 'organization');
    const refused = outcomes.filter((outcome) => outcome.error !== undefined);
    expect(refused).toHaveLength(1);
    expectBusy(refused[0]!.error, 'worker');
    for (const outcome of outcomes.filter((o) => o.error === undefined)) expect(outcome.value).toBeDefined();
    expect(budget.held()).toBeGreaterThan(3 * cost - MiB);
    expect(budget.held()).toBeLessThanOrEqual(budget.limit);
    expect(budget.held('org-a')).toBe(cost);

    // Refused unparsed: while the budget is full, another organization's costly answer leaves the heap as it was.
    const e = await heapGrowth(call('gitlab', 'org-e'));
    expectBusy(e.error, 'worker');
    expect(e.growth).toBeLessThan(cost / 3);
    // So with every client: Bitbucket's reads, Azure DevOps' hooks REST calls, and with an error status the status decides, the body unparsed.
    p.bitbucket.server.failNext('getRepo', 1, { status: 200, headers: json, text: `{"id":1,"slug":"app","pad":${PAD}}` });
    expectBusy(await p.adapter('bitbucket', 'org-e').getRepository(p.bitbucketRef).then(() => undefined, (error: unknown) => error), 'worker');
    p.azure.server.failNext('createSubscription', 1, { status: 200, headers: json, text: `{"id":"s1","pad":${PAD}}` });
    const hook = { url: 'https://forgelink.example/hooks', events: ['git.push'] };
    const azureRef = { externalId: 'r1', fullName: 'Alpha/r1', projectId: p.azureProjectId };
    expectBusy(await p.adapter('azure-devops', 'org-e').createHook(azureRef, hook).then(() => undefined, (error: unknown) => error), 'worker');
    p.gitlab.server.failNext('getProject', 1, { status: 503, headers: json, text: `{"message":${PAD}}` });
    const unavailable = await p.adapter('gitlab', 'org-e').getRepository(p.gitlabRef).then(() => undefined, (error: unknown) => error);
    expect(toActivityFailure(unavailable)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: 'gitlab answered 503: HTTP 503' });
    p.azure.server.failNext('createSubscription', 1, { status: 400, headers: json, text: `{"message":${PAD}}` });
    const rejected = await p.adapter('azure-devops', 'org-e').createHook(azureRef, hook).then(() => undefined, (error: unknown) => error);
    expect(toActivityFailure(rejected)).toMatchObject({ type: 'ProviderRejectedRequest', nonRetryable: true });

    // The steps end: everything is given back, and the refused calls' retries are taken.
    await Promise.all([a1, a2, ...others].map((step) => step.end()));
    expect(budget.held()).toBe(0);
    expect(budget.held('org-a')).toBe(0);
    const retried = [heldStep(call('gitlab', 'org-a')), heldStep(call('gitlab', 'org-e'))];
    for (const step of retried) expect((await step.outcome).error).toBeUndefined();
    expect(budget.held()).toBe(2 * cost);
    await Promise.all(retried.map((step) => step.end()));
    expect(budget.held()).toBe(0);
  });

  it('gives every reservation back however the calls end: answered, failed, dropped, refused, too costly, a step that throws, a call without a step', async () => {
    const budget = createAnswerBudget({ limit: 200 * MiB, perOrganization: 80 * MiB });
    const p = await providers(budget);
    const padded = (id: string) => `{"id":${id},"path_with_namespace":"acme/app","pad":${nested(256 * 1024)}}`;
    for (let round = 0; round < 4; round++) {
      const org = `org-${round % 2}`;
      const gitlab = p.adapter('gitlab', org);
      const azure = p.adapter('azure-devops', org);
      const github = p.adapter('github', org);
      p.gitlab.server.failNext('getProject', 1, { status: 200, headers: json, text: padded(p.gitlabRef.externalId) });
      p.gitlab.server.failNext('getProject', 1, { status: 500, headers: json, text: `{"message":${nested(256 * 1024)}}` });
      p.gitlab.server.failNext('getProject', 1, { status: 200, headers: json, text: nested(3 * MiB) });
      const calls: Promise<unknown>[] = [
        // Answered, failed (500), too costly on its own, held by steps.
        steps.run(() => gitlab.getRepository(p.gitlabRef)),
        steps.run(() => gitlab.getRepository(p.gitlabRef)),
        steps.run(() => gitlab.getRepository(p.gitlabRef)),
        // A step that throws after its call parsed, and one that lists hooks and repositories.
        steps.run(async () => {
          await gitlab.getRepository(p.gitlabRef);
          throw new Error('the step failed after its call');
        }),
        steps.run(() => Promise.all([gitlab.listHooks(p.gitlabRef), azure.listRepositoriesPage({}), github.listRepositoriesPage({}), github.validate()])),
        // Calls outside any step: each holds its own answers until it ends.
        gitlab.getRepository(p.gitlabRef),
        azure.validate(),
      ];
      // Dropped without an answer.
      p.azure.server.dropNext('listRepositories', 1);
      calls.push(steps.run(() => azure.listRepositoriesPage({ cursor: `repos:${p.azureProjectId}` })));
      // Refused by the organization's share: one step holding answers of ~7 MiB each, past 80 MiB by the 11th.
      p.gitlab.server.failNext('getProject', 20, { status: 200, headers: json, text: padded(p.gitlabRef.externalId) });
      calls.push(steps.run(async () => {
        for (let i = 0; i < 12; i++) await gitlab.getRepository(p.gitlabRef);
      }));
      const settled = await Promise.allSettled(calls);
      const reasons = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as unknown] : []));
      expect(reasons.some((r) => r instanceof AnswerTooCostlyError)).toBe(true);
      expect(reasons.some((r) => r instanceof AnswerBudgetFullError)).toBe(true);
      expect(reasons.some((r) => r instanceof Error && r.message === 'the step failed after its call')).toBe(true);
      expect(budget.held()).toBe(0);
      expect(budget.held(org)).toBe(0);
      p.gitlab.server.clearFaults();
      p.azure.server.clearFaults();
    }
  });

  it("sizes the budget from the heap limit, and takes the largest legitimate answers (an Azure DevOps project's 10,000 repositories) several at once", async () => {
    // The chart's worker: --max-old-space-size=1024 --max-semi-space-size=4 (heap_size_limit 1,036 MiB).
    // Its container's limit (1,280 MiB) allows more: the heap sizes it (test/unit/answer-budget-sizing.test.ts has the rest).
    const limits = answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit: 1036 * MiB, containerLimit: 1280 * MiB });
    expect(limits).toMatchObject({ limit: 652 * MiB, perOrganization: 163 * MiB, sizedBy: 'heap' });
    // A small heap still admits an answer at its bound, and an organization one.
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit: 256 * MiB })).toMatchObject({ limit: 2 * MAX_ANSWER_PARSE_COST, perOrganization: MAX_ANSWER_PARSE_COST });

    const budget = createAnswerBudget(limits);
    const p = await providers(budget);
    fillLargeOrganization(p.azure, { projects: 1, repositoriesPerProject: 10_000, subscriptions: 0 });
    const { fanOut } = await p.adapter('azure-devops', 'org-a').listRepositoriesPage({});
    const cursor = fanOut!.find((c) => c !== `repos:${p.azureProjectId}`)!;
    // One organization's four listings of it at once, each held by its step.
    const held = Array.from({ length: 4 }, () => heldStep(() => p.adapter('azure-devops', 'org-a').listRepositoriesPage({ cursor })));
    for (const step of held) expect(((await step.outcome).value as { repositories: unknown[] }).repositories).toHaveLength(10_000);
    expect(budget.held('org-a')).toBeGreaterThan(4 * 15 * MiB);
    expect(budget.held('org-a')).toBeLessThan(budget.perOrganization);
    await Promise.all(held.map((step) => step.end()));
    expect(budget.held()).toBe(0);
  });

  describe('a refusal of a step that asked admission', () => {
    const padded = (id: string) => `{"id":${id},"path_with_namespace":"acme/app","default_branch":"main","web_url":"http://gitlab.example/acme/app","pad":${nested(256 * 1024)}}`;
    /** Steps as the worker wraps its provider steps (activities/hooks.ts): input first, the call after. */
    const asking = holdingAdmission({ step: async (_input: { organizationId: string; askAdmission?: boolean }, call: () => Promise<unknown>) => call() });
    const listing = holdingAdmission({ step: async (_input: { organizationId: string; askAdmission?: boolean }, call: () => Promise<unknown>) => call() }, { budgetRefusals: 'retried' });
    const failureOf = (promise: Promise<unknown>) => promise.then(() => undefined, (error: unknown) => error);

    it('is refused as the admissions refuse one while the budget is full of others\' answers: ActivityNotAdmitted with its attempts made, InlineNotAdmitted inside a workflow task; the same step answered once the budget frees', async () => {
      const budget = createAnswerBudget({ limit: 64 * MiB, perOrganization: 16 * MiB });
      const p = await providers(budget);
      const gitlab = p.adapter('gitlab', 'org-a');
      const others = budget.tryReserve('org-a', 16 * MiB)!;
      const input = { organizationId: 'org-a', askAdmission: true };
      p.gitlab.server.failNext('getProject', 3, { status: 200, headers: json, text: padded(p.gitlabRef.externalId) });
      // A regular activity's fourth attempt: its run asks again after its wait, from the same attempt.
      const regular = await new MockActivityEnvironment({ isLocal: false, attempt: 4 }).run(() => failureOf(asking.step(input, () => gitlab.getRepository(p.gitlabRef))));
      expect(regular).toMatchObject({ type: ACTIVITY_NOT_ADMITTED, nonRetryable: true, details: [{ attemptsMade: 3 }] });
      expect((regular as Error).message).toMatch(/answer budget is full .*its share/);
      // Inside a workflow task: its run runs it as an activity.
      const inline = await new MockActivityEnvironment({ isLocal: true }).run(() => failureOf(asking.step(input, () => gitlab.getRepository(p.gitlabRef))));
      expect(inline).toMatchObject({ type: INLINE_NOT_ADMITTED, nonRetryable: true });
      // A step that did not ask (a run of earlier code), and a listing, stay retried as WorkerBusy.
      for (const [wrapped, stepInput] of [[asking, { organizationId: 'org-a' }], [listing, input]] as const) {
        const busy = await new MockActivityEnvironment({ isLocal: false }).run(() => failureOf(wrapped.step(stepInput, () => gitlab.getRepository(p.gitlabRef))));
        expectBusy(busy, 'organization');
      }
      expect(budget.held('org-a')).toBe(16 * MiB);
      others();
      const answered = await new MockActivityEnvironment({ isLocal: false, attempt: 4 }).run(() => asking.step(input, () => gitlab.getRepository(p.gitlabRef)));
      expect(answered).toMatchObject({ fullName: 'acme/app' });
      expect(budget.held()).toBe(0);
    });

    it('stays WorkerBusy (retried, attempts spent) when the step itself holds too much for waiting to help', async () => {
      const answer = padded('1');
      const cost = parseCost(Buffer.from(answer));
      const budget = createAnswerBudget({ limit: 64 * MiB, perOrganization: Math.floor(2.5 * cost) });
      const p = await providers(budget);
      const gitlab = p.adapter('gitlab', 'org-a');
      p.gitlab.server.failNext('getProject', 3, { status: 200, headers: json, text: padded(p.gitlabRef.externalId) });
      const input = { organizationId: 'org-a', askAdmission: true };
      // Its own two answers and a third: past the share with nothing else held.
      const busy = await new MockActivityEnvironment({ isLocal: false, attempt: 2 }).run(() =>
        failureOf(asking.step(input, async () => {
          for (let i = 0; i < 3; i++) await gitlab.getRepository(p.gitlabRef);
        })),
      );
      expectBusy(busy, 'organization');
      expect(budget.held()).toBe(0);
    });
  });

  it("lets GitHub's error status decide under a full budget, as the other clients do: a 404 is not found, a 429 throttled with its Retry-After, a 403 with rate-limit headers throttled; a 403 without stays the budget refusal", async () => {
    const budget = createAnswerBudget({ limit: 64 * MiB, perOrganization: 16 * MiB });
    const p = await providers(budget);
    const github = p.adapter('github', 'org-g');
    // Its installation token minted while the budget is free (Octokit keeps it).
    await github.listRepositoriesPage({});
    const others = budget.tryReserve('org-g', 16 * MiB)!;
    try {
      p.github.server.failNext('listInstallationRepos', 1, { status: 429, headers: { ...json, 'retry-after': '7' }, text: '{"message":"slow down"}' });
      const throttled = await github.listRepositoriesPage({}).then(() => undefined, (error: unknown) => error);
      expect(toActivityFailure(throttled)).toMatchObject({ type: 'ProviderThrottled', nonRetryable: false, nextRetryDelay: 7000 });
      p.github.server.failNext('getRepo', 1, { status: 404, headers: json, text: '{"message":"Not Found"}' });
      expect(await github.getRepository({ externalId: '1', fullName: 'acme/gone' })).toBeNull();
      // A 403 with rate-limit headers keeps its status: throttled.
      p.github.server.failNext('getRepo', 1, { status: 403, headers: { ...json, 'x-ratelimit-remaining': '0', 'retry-after': '9' }, text: '{"message":"API rate limit exceeded"}' });
      const limited = await github.getRepository({ externalId: '1', fullName: 'acme/app' }).then(() => undefined, (error: unknown) => error);
      expect(toActivityFailure(limited)).toMatchObject({ type: 'ProviderThrottled', nonRetryable: false, nextRetryDelay: 9000 });
      // One without stays the budget refusal (retried): only its body, refused, could tell a
      // secondary rate limit from a permission refusal.
      p.github.server.failNext('getRepo', 1, { status: 403, headers: json, text: '{"message":"You have exceeded a secondary rate limit"}' });
      expectBusy(await github.getRepository({ externalId: '1', fullName: 'acme/app' }).then(() => undefined, (error: unknown) => error), 'organization');
      // A success's answer is still refused.
      expectBusy(await github.listRepositoriesPage({}).then(() => undefined, (error: unknown) => error), 'organization');
    } finally {
      others();
    }
  });
});
