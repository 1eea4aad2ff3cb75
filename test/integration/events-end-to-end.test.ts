import { randomInt, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Provider } from '../../lib/domain.ts';
import type { EventResult } from '../../workflows/contract.ts';
import { startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedRepository } from '../support/attachments.ts';
import { send } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_PUBLIC_URL, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

/**
 * From a provider's push to the organization's subscriber: connected and attached through the API
 * against each fake provider (the repository cache row written directly), then the push delivered
 * the way the provider would: to the URL and with the credential the attach registered there
 * (GitHub: the App's webhook secret), twice.
 */
describe('a push to an attached repository reaches the subscriber exactly once', () => {
  let h: Harness;
  let github: FakeGithub;
  let gitlab: FakeGitlab;
  let bitbucket: FakeBitbucket;
  let azure: FakeAzureDevOps;
  let subscriber: FakeSubscriber;
  let org: { id: string; slug: string };
  let orgToken: string;

  beforeAll(async () => {
    [github, gitlab, bitbucket, azure, subscriber] = await Promise.all([
      startFakeGithub(),
      startFakeGitlab(),
      startFakeBitbucket(),
      startFakeAzureDevOps({ organization: 'contoso' }),
      startFakeSubscriber(),
    ]);
    h = await startHarness({ github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem } });
    ({ org, token: orgToken } = await createOrgWithToken(h));
    const res = await h.request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token: orgToken, body: { url: subscriber.url, kinds: ['push'] } });
    expect(res.status).toBe(201);
    subscriber.verifyWith(((await res.json()) as { secret: string }).secret);
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all([github?.close(), gitlab?.close(), bitbucket?.close(), azure?.close(), subscriber?.close()]);
  });

  async function connect(body: Record<string, unknown>): Promise<string> {
    // GitHub installations are bound by the admin (or the install flow, tested on its own).
    const res = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: body.provider === 'github' ? h.adminToken : orgToken, body });
    expect(res.status, await res.clone().text()).toBe(202);
    const { id, workflowId } = (await res.json()) as { id: string; workflowId: string };
    expect(await resultOf<{ status: string }>(h, workflowId)).toMatchObject({ status: 'active' });
    return id;
  }

  /** Connects the provider and creates a repository there; returns what the cache would hold. */
  async function repositoryOn(provider: Provider) {
    const token = `token-${randomUUID()}`;
    switch (provider) {
      case 'github': {
        const installation = github.addInstallation({ account: { login: 'octo-org', type: 'Organization' } });
        const repo = github.addRepository(installation.id, { id: randomInt(100_000_000, 2_000_000_000), fullName: 'octo-org/service' });
        return { connectionId: await connect({ provider, installationId: installation.id }), externalId: String(repo.id), fullName: repo.fullName, installationId: String(installation.id) };
      }
      case 'gitlab': {
        gitlab.addToken({ token, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });
        const project = gitlab.addProject({ id: randomInt(100_000_000, 2_000_000_000), pathWithNamespace: 'platform/service', accessLevel: 40 });
        return { connectionId: await connect({ provider, baseUrl: gitlab.url, token }), externalId: String(project.id), fullName: project.pathWithNamespace };
      }
      case 'bitbucket': {
        bitbucket.addToken({ token, username: 'ci-bot', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
        bitbucket.addProject({ key: 'PLAT', name: 'Platform' });
        const repo = bitbucket.addRepository({ projectKey: 'PLAT', slug: 'service', id: randomInt(100_000_000, 2_000_000_000) });
        return { connectionId: await connect({ provider, baseUrl: bitbucket.url, token }), externalId: String(repo.id), fullName: `${repo.projectKey}/${repo.slug}` };
      }
      case 'azure-devops': {
        azure.addPat({ pat: token, displayName: 'Build Admin', canManageHooks: true });
        azure.addProject({ name: 'Platform' });
        const repo = azure.addRepository({ projectName: 'Platform', name: 'service' });
        return { connectionId: await connect({ provider, organizationUrl: azure.url, token }), externalId: repo.id, fullName: `Platform/${repo.name}` };
      }
    }
  }

  /** Where and with what credential the provider delivers a push for the repository, as attach set it up there. */
  function pushHookOf(provider: Provider, repository: { externalId: string; fullName: string }): { url: string; secret: string; basicAuthUser?: string } {
    switch (provider) {
      case 'github':
        // The App delivers for every repository of the installation, to the App's webhook URL.
        return { url: `${TEST_PUBLIC_URL}${receiverPath('github')}`, secret: TEST_WEBHOOK_SECRETS.github };
      case 'gitlab': {
        const [hook] = gitlab.hooks(Number(repository.externalId));
        return { url: hook!.url, secret: hook!.token! };
      }
      case 'bitbucket': {
        const [hook] = bitbucket.webhooks('PLAT', 'service');
        return { url: hook!.url, secret: hook!.configuration.secret! };
      }
      case 'azure-devops': {
        const push = azure.subscriptions().find((s) => s.eventType === 'git.push' && s.publisherInputs.repository === repository.externalId)!;
        return { url: push.consumerInputs.url!, secret: push.consumerInputs.basicAuthPassword!, basicAuthUser: push.consumerInputs.basicAuthUsername };
      }
    }
  }

  it.each(['github', 'gitlab', 'bitbucket', 'azure-devops'] as const)('%s', async (provider) => {
    const { connectionId, ...repository } = await repositoryOn(provider);
    const repositoryId = await seedRepository(h, { organizationId: org.id, provider, connectionId, ...repository });
    const attach = await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: orgToken });
    expect(attach.status, await attach.clone().text()).toBe(202);
    expect(await resultOf<{ status: string }>(h, ((await attach.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'attached' });

    const hook = pushHookOf(provider, repository);
    // GitLab, Bitbucket and Azure DevOps hooks name their connection and carry its own credential.
    expect(hook.url).toBe(`${TEST_PUBLIC_URL}${receiverPath(provider)}${provider === 'github' ? '' : `?c=${connectionId}`}`);
    const push = delivery(provider, withRepository(provider, fixture(PUSH_FIXTURES[provider]), repository), { deliveryId: randomUUID(), ...hook });
    const before = subscriber.received.length;

    const first = await send(h, push);
    expect(first.status).toBe(202);
    const { workflowId } = (await first.json()) as { workflowId: string };
    expect(await resultOf<EventResult>(h, workflowId)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });

    // The provider delivers again (a retry after a lost acknowledgement): acknowledged, nothing sent twice.
    const again = await send(h, push);
    expect(again.status).toBe(202);
    expect(((await again.json()) as { workflowId: string }).workflowId).toBe(workflowId);
    expect(await resultOf<EventResult>(h, workflowId)).toEqual({ recorded: 1, delivered: 1, undelivered: [] });

    const arrived = subscriber.received.slice(before);
    expect(arrived).toHaveLength(1);
    expect(arrived[0]!.signatureValid).toBe(true);
    expect(arrived[0]!.body).toMatchObject({ provider, deliveryId: push.deliveryId, kind: 'push', repository: { externalId: repository.externalId, fullName: repository.fullName } });

    const events = await h.request('GET', `/api/v1/orgs/${org.slug}/events?repository=${repositoryId}`, { token: orgToken });
    const { items } = (await events.json()) as { items: { id: string }[] };
    expect(items.map((i) => i.id)).toEqual([arrived[0]!.body.id]);
  });
});
