import { randomUUID } from 'node:crypto';
import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import { callApi, startBenchStack, type BenchStack, type StackPlacement } from '../../bench/stack.ts';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { startFakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub } from '../fakes/github.ts';
import { startFakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';

/**
 * What the fuzzer attacks: the API and the worker as separate processes (bench/stack.ts) with the
 * four fake providers, and organizations set up through the API as a user would (connect, refresh,
 * attach). The webhook credentials are read back from the fake providers' stored hooks — what the
 * stack really issued — so "valid" means what a provider would send, whatever the receivers check.
 */

/** Where and with what a provider delivers for one connection's hook. */
export interface Hook {
  url: string;
  secret: string;
  basicAuthUser?: string;
}

export interface WorldRepository {
  id: string;
  externalId: string;
  fullName: string;
  /** The GitLab instance, which names itself in its deliveries (project.web_url). */
  instanceUrl?: string;
}

export interface WorldOrganization {
  id: string;
  slug: string;
  token: string;
  connections: Partial<Record<Provider, string>>;
  /** Its GitHub App installation: GitHub deliveries reach only the connections bound to theirs. */
  installationId?: number;
  /** Per provider: one attached repository and one in the cache only. */
  attached: Partial<Record<Provider, WorldRepository>>;
  loose: Partial<Record<Provider, WorldRepository>>;
  hooks: Partial<Record<Provider, Hook>>;
  repositoryIds: string[];
  eventIds: string[];
  subscriberIds: string[];
  tokenIds: string[];
  /** A real `nextCursor` of its events. */
  eventsCursor?: string;
}

export interface World {
  stack: BenchStack;
  apiUrl: string;
  adminToken: string;
  /** Two organizations that receive deliveries; the fuzzer's API requests only read them. */
  tenants: [WorldOrganization, WorldOrganization];
  /** An organization the fuzzer's writing API requests may change at will (delete, rotate, attach). */
  sandbox: WorldOrganization;
  /** Every event workflow id and organization the setup itself caused (not the fuzzer). */
  setupRuns: Map<string, string>;
  subscriberUrl: string;
  close(): Promise<void>;
}

/**
 * The result of a run, waiting for its start first: a receiver acknowledges a delivery once it is
 * stored, and the intake relay starts its run a moment later.
 */
export async function resultOnceStarted(client: Client, workflowId: string, signal?: AbortSignal): Promise<unknown> {
  for (;;) {
    try {
      return await client.workflow.getHandle(workflowId).result();
    } catch (error) {
      if (!(error instanceof WorkflowNotFoundError) || signal?.aborted) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** A GitHub payload from the organization's installation (other providers' payloads as they are). */
export function inOrganization(org: WorldOrganization, provider: Provider, payload: Payload): Payload {
  return provider === 'github' ? { ...payload, installation: { ...payload.installation, id: org.installationId } } : payload;
}

export async function startWorld(placement: Omit<StackPlacement, 'githubBaseUrl' | 'githubApp'> = {}, log: (line: string) => void = console.log): Promise<World> {
  const [github, gitlab, bitbucket, azure, subscriber] = await Promise.all([
    startFakeGithub(),
    startFakeGitlab(),
    startFakeBitbucket(),
    startFakeAzureDevOps({ organization: 'fuzz' }),
    startFakeSubscriber(),
  ]);
  const closeFakes = () => Promise.all([github, gitlab, bitbucket, azure, subscriber].map((f) => f.close()));
  let stack: BenchStack;
  try {
    stack = await startBenchStack(log, undefined, { ...placement, githubBaseUrl: github.url, githubApp: { appId: github.appId, privateKeyPem: github.privateKeyPem } });
  } catch (error) {
    await closeFakes();
    throw error;
  }
  const api = (method: string, path: string, token: string, body?: unknown) => callApi(stack, method, path, token, body);
  const resultOf = (workflowId: string) => resultOnceStarted(stack.temporal, workflowId) as Promise<Record<string, any>>;
  const setupRuns = new Map<string, string>();

  async function organization(name: string, providers: readonly Provider[]): Promise<WorldOrganization> {
    const slug = `fuzz-${name}-${randomUUID().slice(0, 6)}`;
    const org = await api('POST', '/api/v1/orgs', stack.adminToken, { slug, name: `Fuzz ${name}` });
    const { token, id: tokenId } = await api('POST', `/api/v1/orgs/${slug}/tokens`, stack.adminToken, { name: 'fuzz' });
    const world: WorldOrganization = { id: org.id, slug, token, connections: {}, attached: {}, loose: {}, hooks: {}, repositoryIds: [], eventIds: [], subscriberIds: [], tokenIds: [tokenId] };
    const providerToken = `${name}-${randomUUID()}`;
    const connect = async (provider: Provider, body: Record<string, unknown>, token: string) => {
      const { id, workflowId } = await api('POST', `/api/v1/orgs/${slug}/connections`, token, { provider, ...body });
      const result = await resultOf(workflowId);
      if (result.status !== 'active') throw new Error(`connect ${provider}: ${JSON.stringify(result)}`);
      world.connections[provider] = id;
    };
    for (const provider of providers) {
      const names = [`${name}-attached`, `${name}-loose`];
      switch (provider) {
        case 'github': {
          const installation = github.addInstallation({ account: { login: `fuzz-${name}`, type: 'Organization' } });
          for (const repo of names) github.addRepository(installation.id, { fullName: `fuzz-${name}/${repo}` });
          world.installationId = installation.id;
          await connect(provider, { installationId: installation.id }, stack.adminToken);
          break;
        }
        case 'gitlab':
          gitlab.addToken({ token: providerToken, username: `fuzz-${name}`, scopes: ['api', 'read_user', 'read_repository'] });
          for (const repo of names) gitlab.addProject({ pathWithNamespace: `fuzz-${name}/${repo}`, accessLevel: 40 });
          await connect(provider, { baseUrl: gitlab.url, token: providerToken }, world.token);
          break;
        case 'bitbucket':
          bitbucket.addToken({ token: providerToken, username: `fuzz-${name}`, projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
          bitbucket.addProject({ key: name.toUpperCase(), name });
          for (const repo of names) bitbucket.addRepository({ projectKey: name.toUpperCase(), slug: repo });
          await connect(provider, { baseUrl: bitbucket.url, token: providerToken }, world.token);
          break;
        case 'azure-devops':
          azure.addPat({ pat: providerToken, displayName: `Fuzz ${name}`, canManageHooks: true });
          azure.addProject({ name: `Fuzz-${name}` });
          for (const repo of names) azure.addRepository({ projectName: `Fuzz-${name}`, name: repo });
          await connect(provider, { organizationUrl: azure.url, token: providerToken }, world.token);
          break;
      }
    }
    await resultOf((await api('POST', `/api/v1/orgs/${slug}/repositories/refresh`, world.token)).workflowId);
    const { items } = await api('GET', `/api/v1/orgs/${slug}/repositories?limit=200`, world.token);
    for (const item of items as { id: string; provider: Provider; externalId: string; fullName: string }[]) {
      world.repositoryIds.push(item.id);
      const repository = { id: item.id, externalId: item.externalId, fullName: item.fullName, ...(item.provider === 'gitlab' ? { instanceUrl: gitlab.url } : {}) };
      if (item.fullName.endsWith(`${name}-attached`)) world.attached[item.provider] = repository;
      else if (item.fullName.endsWith(`${name}-loose`)) world.loose[item.provider] = repository;
    }
    for (const provider of providers) {
      const repository = world.attached[provider];
      if (!repository) throw new Error(`${slug}: no ${provider} repository in the cache`);
      const { workflowId } = await api('PUT', `/api/v1/orgs/${slug}/repositories/${repository.id}/attachment`, world.token);
      const result = await resultOf(workflowId);
      if (result.status !== 'attached') throw new Error(`attach ${provider}: ${JSON.stringify(result)}`);
      world.hooks[provider] = hookOf(provider, repository);
    }
    const { id: subscriberId, secret } = await api('POST', `/api/v1/orgs/${slug}/subscribers`, world.token, { url: subscriber.url });
    subscriber.verifyWith(secret);
    world.subscriberIds.push(subscriberId);
    return world;
  }

  /** The hook attach made at the provider for `repository` (GitHub: the App's own delivery URL and secret). */
  function hookOf(provider: Provider, repository: WorldRepository): Hook {
    switch (provider) {
      case 'github':
        return { url: `${stack.apiUrl}${receiverPath('github')}`, secret: stack.secrets.github };
      case 'gitlab': {
        const hook = gitlab.hooks(Number(repository.externalId))[0];
        return { url: hook!.url, secret: hook!.token! };
      }
      case 'bitbucket': {
        const [project, slug] = repository.fullName.split('/');
        const hook = bitbucket.webhooks(project!, slug!)[0];
        return { url: hook!.url, secret: hook!.configuration.secret! };
      }
      case 'azure-devops': {
        const hook = azure.subscriptions().find((s) => s.eventType === 'git.push' && s.publisherInputs.repository === repository.externalId);
        return { url: hook!.consumerInputs.url!, secret: hook!.consumerInputs.basicAuthPassword!, basicAuthUser: hook!.consumerInputs.basicAuthUsername! };
      }
    }
  }

  /** One clean push per provider, which must be accepted and recorded: proof the credentials the fuzzer calls valid are. */
  async function provePushes(org: WorldOrganization) {
    for (const provider of PROVIDERS) {
      const hook = org.hooks[provider]!;
      const push = delivery(provider, inOrganization(org, provider, withRepository(provider, fixture(PUSH_FIXTURES[provider]), org.attached[provider]!)), { deliveryId: `setup-${randomUUID()}`, ...hook });
      const res = await fetch(hook.url, { method: 'POST', headers: push.headers, body: push.body });
      const answer = (await res.json()) as { workflowId?: string };
      if (res.status !== 202 || !answer.workflowId) throw new Error(`a clean ${provider} push with the hook's credential was answered ${res.status} ${JSON.stringify(answer)}`);
      setupRuns.set(answer.workflowId, org.id);
      const result = await resultOf(answer.workflowId);
      if (result.recorded !== 1) throw new Error(`the clean ${provider} push recorded ${JSON.stringify(result)}`);
    }
    const first = await api('GET', `/api/v1/orgs/${org.slug}/events?limit=1`, org.token);
    const { items } = await api('GET', `/api/v1/orgs/${org.slug}/events?limit=200`, org.token);
    org.eventIds = (items as { id: string }[]).map((e) => e.id);
    org.eventsCursor = first.nextCursor;
  }

  try {
    const tenants: [WorldOrganization, WorldOrganization] = [await organization('a', PROVIDERS), await organization('b', PROVIDERS)];
    const sandbox = await organization('sandbox', ['gitlab']);
    for (const org of tenants) await provePushes(org);
    log(`fuzz world: organizations ${tenants.map((o) => o.slug).join(', ')} (tenants), ${sandbox.slug} (sandbox)`);
    return {
      stack,
      apiUrl: stack.apiUrl,
      adminToken: stack.adminToken,
      tenants,
      sandbox,
      setupRuns,
      subscriberUrl: subscriber.url,
      async close() {
        await stack.stop();
        await closeFakes();
      },
    };
  } catch (error) {
    await stack.stop();
    await closeFakes();
    throw error;
  }
}
