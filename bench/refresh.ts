/**
 * Repository refresh benchmark: N repositories spread over the four fake providers, each answering
 * every API call after `latencyMs`. Measures a first refresh (everything new) and a second one with
 * nothing changed (which must write no rows, and get 304s from GitHub), against the lower bound
 * calls × latency ÷ concurrency. Every HTTP call the fakes answered counts (installation tokens and
 * Azure DevOps' discovery calls included), and the concurrency is the larger of the configured
 * bound (repositoryCache.callsPerWorker, or callsPerConnection × connections if smaller) and the
 * most calls the fakes saw in flight at once: the bound is never flattered.
 */
import type { ConnectionRefreshResult, RefreshResult } from '../workflows/contract.ts';
import { workflowIds } from '../workflows/contract.ts';
import { startFakeAzureDevOps } from '../test/fakes/azure-devops.ts';
import { FakeHttpServer } from '../test/fakes/base.ts';
import { startFakeBitbucket } from '../test/fakes/bitbucket.ts';
import { startFakeGithub } from '../test/fakes/github.ts';
import { startFakeGitlab } from '../test/fakes/gitlab.ts';
import { callApi, type BenchStack } from './stack.ts';

export const DEFAULT_REFRESH_OPTIONS = { repositories: 10_000, latencyMs: 20 };

export async function runRefreshBench(stack: BenchStack, options: { repositories: number; latencyMs: number }) {
  const perProvider = Math.floor(options.repositories / 4);
  const [github, gitlab, bitbucket, azure] = await Promise.all([
    startFakeGithub({ appId: stack.githubApp.appId, privateKeyPem: stack.githubApp.privateKeyPem }),
    startFakeGitlab(),
    startFakeBitbucket(),
    startFakeAzureDevOps({ organization: 'bench' }),
  ]);
  const servers: Record<string, FakeHttpServer> = { github: github.server, gitlab: gitlab.server, bitbucket: bitbucket.server, 'azure-devops': azure.server };
  try {
    const installation = github.addInstallation({ account: { login: 'bench' } });
    for (let i = 0; i < perProvider; i++) github.addRepository(installation.id, { fullName: `bench/gh-${i}` });
    gitlab.addToken({ token: 'glpat-bench', username: 'bench', scopes: ['api', 'read_user', 'read_repository'] });
    for (let i = 0; i < perProvider; i++) gitlab.addProject({ pathWithNamespace: `bench/gl-${i}` });
    bitbucket.addToken({ token: 'bb-bench', username: 'bench', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
    bitbucket.addProject({ key: 'BENCH', name: 'Bench' });
    for (let i = 0; i < perProvider; i++) bitbucket.addRepository({ projectKey: 'BENCH', slug: `bb-${i}` });
    azure.addPat({ pat: 'ado-bench', displayName: 'Bench', canManageHooks: true });
    const reposPerProject = 100;
    for (let p = 0; p * reposPerProject < perProvider; p++) {
      azure.addProject({ name: `Project-${p}` });
      for (let i = p * reposPerProject; i < Math.min(perProvider, (p + 1) * reposPerProject); i++) azure.addRepository({ projectName: `Project-${p}`, name: `ado-${i}` });
    }

    const api = (method: string, path: string, token: string, body?: unknown) => callApi(stack, method, path, token, body);
    const org = await api('POST', '/api/v1/orgs', stack.adminToken, { slug: `refresh-bench-${Date.now()}`, name: 'Refresh bench' });
    const { token } = await api('POST', `/api/v1/orgs/${org.slug}/tokens`, stack.adminToken);
    const connect = async (body: object) => {
      const { id, workflowId } = await api('POST', `/api/v1/orgs/${org.slug}/connections`, token!, body);
      const result = (await stack.temporal.workflow.getHandle(workflowId!).result()) as { status: string; reason?: string };
      if (result.status !== 'active') throw new Error(`connect ${JSON.stringify(body)} failed: ${result.reason}`);
      return id!;
    };
    // The stack's API sends GitHub connections to api.github.com; this one is bound to the fake
    // directly (a GitHub connection holds no secret: installation tokens are minted per call).
    const githubConnection = await stack.db
      .insertInto('connections')
      .values({ organization_id: org.id!, provider: 'github', base_url: github.url, external_key: String(installation.id), account: 'bench', status: 'active' })
      .returning('id')
      .executeTakeFirstOrThrow();
    const connections = {
      github: githubConnection.id,
      gitlab: await connect({ provider: 'gitlab', baseUrl: gitlab.url, token: 'glpat-bench' }),
      bitbucket: await connect({ provider: 'bitbucket', baseUrl: bitbucket.url, token: 'bb-bench' }),
      'azure-devops': await connect({ provider: 'azure-devops', organizationUrl: azure.url, token: 'ado-bench' }),
    };
    for (const server of Object.values(servers)) server.latencyMs = options.latencyMs;

    const configured = Math.min(stack.listing.callsPerWorker, stack.listing.callsPerConnection * Object.keys(connections).length);
    const measure = async () => {
      const callsBefore = Object.fromEntries(Object.entries(servers).map(([p, s]) => [p, s.calls.length]));
      FakeHttpServer.peakInFlightAll = 0;
      const cpuBefore = stack.cpuSeconds();
      const started = performance.now();
      const { workflowId } = await api('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, token!);
      const result = (await stack.temporal.workflow.getHandle(workflowId!).result()) as RefreshResult;
      const wallMs = performance.now() - started;
      const cpuAfter = stack.cpuSeconds();
      const cpuMs = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, Math.round((cpuAfter[k as keyof typeof cpuAfter] - cpuBefore[k as keyof typeof cpuBefore]) * 1000)]));
      if (result.failed.length > 0) throw new Error(`refresh failed: ${JSON.stringify(result.failed)}`);
      const perConnection: Record<string, ConnectionRefreshResult & { httpCalls: number }> = {};
      for (const [provider, connectionId] of Object.entries(connections)) {
        const listing = (await stack.temporal.workflow.getHandle(workflowIds.refreshConnection(org.id!, connectionId)).result()) as ConnectionRefreshResult;
        perConnection[provider] = { ...listing, httpCalls: servers[provider]!.calls.length - callsBefore[provider]! };
      }
      const listings = Object.values(perConnection);
      const pages = listings.reduce((n, l) => n + l.pages, 0);
      const apiCalls = listings.reduce((n, l) => n + l.httpCalls, 0);
      const peakInFlight = FakeHttpServer.peakInFlightAll;
      // Where the wall time went: before the first provider call, between the first and the last, after it.
      const calls = Object.entries(servers).flatMap(([p, s]) => s.calls.slice(callsBefore[p]!));
      const firstCallMs = Math.min(...calls.map((c) => c.receivedAt)) - started;
      const lastAnswerMs = Math.max(...calls.map((c) => c.answeredAt)) - started;
      const timeline = {
        untilFirstCallMs: Math.round(firstCallMs),
        callsSpanMs: Math.round(lastAnswerMs - firstCallMs),
        afterLastCallMs: Math.round(wallMs - lastAnswerMs),
        byProvider: Object.fromEntries(
          Object.entries(servers).map(([p, s]) => {
            const mine = s.calls.slice(callsBefore[p]!);
            return [p, { firstCallMs: Math.round(Math.min(...mine.map((c) => c.receivedAt)) - started), lastAnswerMs: Math.round(Math.max(...mine.map((c) => c.answeredAt)) - started) }];
          }),
        ),
      };
      const concurrency = Math.max(configured, peakInFlight);
      const lowerBoundMs = (apiCalls * options.latencyMs) / concurrency;
      return {
        wallMs: Math.round(wallMs),
        lowerBoundMs: Math.round(lowerBoundMs),
        ratioToLowerBound: Math.round((wallMs / lowerBoundMs) * 100) / 100,
        concurrency: { configured, peakInFlight, used: concurrency },
        timeline,
        // CPU each process spent during the refresh (the fake providers run in the bench process).
        cpuMs,
        pages,
        apiCalls,
        rowsWritten: listings.reduce((n, l) => n + l.rowsWritten, 0),
        githubNotModifiedPages: perConnection.github!.notModifiedPages,
        perConnection: Object.fromEntries(
          Object.entries(perConnection).map(([p, l]) => [p, { pages: l.pages, apiCalls: l.httpCalls, rowsWritten: l.rowsWritten, notModifiedPages: l.notModifiedPages, vanished: l.vanished }]),
        ),
      };
    };

    const first = await measure();
    const second = await measure();
    const cached = await stack.db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('organization_id', '=', org.id!).executeTakeFirstOrThrow();
    return {
      options: { ...options, ...stack.listing },
      repositoriesCached: Number(cached.n),
      first,
      second,
      targets: {
        firstWithin1_5xLowerBound: first.ratioToLowerBound <= 1.5,
        secondWithin1_5xLowerBound: second.ratioToLowerBound <= 1.5,
        secondWroteNoRows: second.rowsWritten === 0,
        githubAnswered304: second.githubNotModifiedPages > 0,
      },
      peakRssMiB: stack.peakRssMiB(),
    };
  } finally {
    await Promise.all([github.close(), gitlab.close(), bitbucket.close(), azure.close()]);
  }
}
