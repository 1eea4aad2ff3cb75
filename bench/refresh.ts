/**
 * Repository refresh benchmark: N repositories spread over the four fake providers, each answering
 * every API call after `latencyMs`. Measures a first refresh (everything new) and a second one with
 * nothing changed (which must write no rows, and get 304s from GitHub), against the lower bound
 * pages × latency ÷ concurrency and against the critical path (the longest connection's pages ×
 * latency: pages of one connection are sequential by nature of cursors).
 */
import type { ConnectionRefreshResult, RefreshResult } from '../workflows/contract.ts';
import { workflowIds } from '../workflows/contract.ts';
import { startFakeAzureDevOps } from '../test/fakes/azure-devops.ts';
import type { FakeHttpServer } from '../test/fakes/base.ts';
import { startFakeBitbucket } from '../test/fakes/bitbucket.ts';
import { startFakeGithub } from '../test/fakes/github.ts';
import { startFakeGitlab } from '../test/fakes/gitlab.ts';
import type { BenchStack } from './stack.ts';

export const DEFAULT_REFRESH_OPTIONS = { repositories: 10_000, latencyMs: 20 };
/** The refresh workflow's bound on connections listed at once (workflows/refresh.ts). */
const CONCURRENT_CONNECTIONS = 8;

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

    const api = async (method: string, path: string, token: string, body?: unknown) => {
      const res = await fetch(`${stack.apiUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
      return res.json() as Promise<Record<string, string>>;
    };
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

    const measure = async () => {
      const callsBefore = Object.fromEntries(Object.entries(servers).map(([p, s]) => [p, s.calls.length]));
      const started = performance.now();
      const { workflowId } = await api('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, token!);
      const result = (await stack.temporal.workflow.getHandle(workflowId!).result()) as RefreshResult;
      const wallMs = performance.now() - started;
      if (result.failed.length > 0) throw new Error(`refresh failed: ${JSON.stringify(result.failed)}`);
      const perConnection: Record<string, ConnectionRefreshResult & { apiCalls: number }> = {};
      for (const [provider, connectionId] of Object.entries(connections)) {
        const listing = (await stack.temporal.workflow.getHandle(workflowIds.refreshConnection(org.id!, connectionId)).result()) as ConnectionRefreshResult;
        perConnection[provider] = { ...listing, apiCalls: servers[provider]!.calls.length - callsBefore[provider]! };
      }
      const listings = Object.values(perConnection);
      const pages = listings.reduce((n, l) => n + l.pages, 0);
      const apiCalls = listings.reduce((n, l) => n + l.apiCalls, 0);
      // Calls a page costs, on the connection that takes longest: pages of one connection are sequential.
      const criticalPathMs = Math.max(...listings.map((l) => l.pages)) * options.latencyMs;
      const lowerBoundMs = (pages * options.latencyMs) / Math.min(CONCURRENT_CONNECTIONS, listings.length);
      return {
        wallMs: Math.round(wallMs),
        lowerBoundMs: Math.round(lowerBoundMs),
        ratioToLowerBound: Math.round((wallMs / lowerBoundMs) * 100) / 100,
        criticalPathMs,
        ratioToCriticalPath: Math.round((wallMs / criticalPathMs) * 100) / 100,
        pages,
        apiCalls,
        rowsWritten: listings.reduce((n, l) => n + l.rowsWritten, 0),
        githubNotModifiedPages: perConnection.github!.notModifiedPages,
        perConnection: Object.fromEntries(
          Object.entries(perConnection).map(([p, l]) => [p, { pages: l.pages, apiCalls: l.apiCalls, rowsWritten: l.rowsWritten, notModifiedPages: l.notModifiedPages }]),
        ),
      };
    };

    const first = await measure();
    const second = await measure();
    const cached = await stack.db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('organization_id', '=', org.id!).executeTakeFirstOrThrow();
    return {
      options: { ...options, concurrency: Math.min(CONCURRENT_CONNECTIONS, 4) },
      repositoriesCached: Number(cached.n),
      first,
      second,
      targets: {
        firstWithin1_5xLowerBound: first.ratioToLowerBound <= 1.5,
        secondWroteNoRows: second.rowsWritten === 0,
        githubAnswered304: second.githubNotModifiedPages > 0,
      },
      peakRssMiB: stack.peakRssMiB(),
    };
  } finally {
    await Promise.all([github.close(), gitlab.close(), bitbucket.close(), azure.close()]);
  }
}
