import { randomInt, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventResult } from '../../workflows/contract.ts';
import { startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';
import { seedRepository, type HookProvider } from '../support/attachments.ts';
import { deliveryRunExists, eventsOfDelivery, send } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_PUBLIC_URL, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

/**
 * The tenant boundary of GitLab, Bitbucket DC and Azure DevOps deliveries. Two organizations connect
 * the same (fake) provider instance through the API, each with its own user's token, and attach
 * repositories through the API: the real connect and attach workflows create the hooks, and each
 * delivery is sent the way the provider would send it, to the URL and with the credential it
 * received. Organization A has a subscriber.
 */
describe('per-connection webhook credentials: one organization cannot forge deliveries for another', () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  let bitbucket: FakeBitbucket;
  let azure: FakeAzureDevOps;
  let subscriber: FakeSubscriber;
  const orgs = {} as Record<'a' | 'b', { id: string; slug: string; token: string }>;

  beforeAll(async () => {
    [gitlab, bitbucket, azure, subscriber] = await Promise.all([startFakeGitlab(), startFakeBitbucket(), startFakeAzureDevOps({ organization: 'contoso' }), startFakeSubscriber()]);
    bitbucket.addProject({ key: 'TEAM', name: 'Team' });
    azure.addProject({ name: 'Team' });
    h = await startHarness();
    for (const name of ['a', 'b'] as const) {
      const { org, token } = await createOrgWithToken(h);
      orgs[name] = { id: org.id, slug: org.slug, token };
    }
    const res = await h.request('POST', `/api/v1/orgs/${orgs.a.slug}/subscribers`, { token: orgs.a.token, body: { url: subscriber.url } });
    expect(res.status).toBe(201);
    subscriber.verifyWith(((await res.json()) as { secret: string }).secret);
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all([gitlab?.close(), bitbucket?.close(), azure?.close(), subscriber?.close()]);
  });

  /** Where and with what a hook delivers, as the provider received it from attach. */
  interface ReceivedHook {
    url: string;
    secret: string;
    basicAuthUser?: string;
  }

  interface Repository {
    externalId: string;
    fullName: string;
  }

  /** One fake instance of a provider, as a test drives it. */
  interface Instance {
    /** A token of a user of its own (connect body for the API). */
    connectBody(): Record<string, unknown>;
    newRepository(): Repository;
    /** The push hooks the provider holds for the repository. */
    pushHooks(repository: Repository): ReceivedHook[];
    /** The global secret configured for legacy hooks. */
    globalSecret: string;
  }

  const instances: Record<HookProvider, () => Instance> = {
    gitlab: () => ({
      connectBody() {
        const token = `glpat-${randomUUID()}`;
        gitlab.addToken({ token, username: `user-${randomUUID().slice(0, 8)}`, scopes: ['api', 'read_user', 'read_repository'] });
        return { provider: 'gitlab', baseUrl: gitlab.url, token };
      },
      newRepository() {
        const project = gitlab.addProject({ id: randomInt(100_000_000, 2_000_000_000), pathWithNamespace: `team/${randomUUID().slice(0, 8)}`, accessLevel: 40 });
        return { externalId: String(project.id), fullName: project.pathWithNamespace };
      },
      pushHooks: (repository) => gitlab.hooks(Number(repository.externalId)).map((hook) => ({ url: hook.url, secret: hook.token! })),
      globalSecret: TEST_WEBHOOK_SECRETS.gitlab,
    }),
    bitbucket: () => ({
      connectBody() {
        const token = `bbtoken-${randomUUID()}`;
        bitbucket.addToken({ token, username: `user-${randomUUID().slice(0, 8)}`, projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
        return { provider: 'bitbucket', baseUrl: bitbucket.url, token };
      },
      newRepository() {
        const repo = bitbucket.addRepository({ projectKey: 'TEAM', slug: `app-${randomUUID().slice(0, 8)}`, id: randomInt(100_000_000, 2_000_000_000) });
        return { externalId: String(repo.id), fullName: `TEAM/${repo.slug}` };
      },
      pushHooks: (repository) => bitbucket.webhooks('TEAM', repository.fullName.split('/')[1]!).map((hook) => ({ url: hook.url, secret: hook.configuration.secret! })),
      globalSecret: TEST_WEBHOOK_SECRETS.bitbucket,
    }),
    'azure-devops': () => ({
      connectBody() {
        const token = `adopat${randomUUID().replaceAll('-', '')}`;
        azure.addPat({ pat: token, displayName: `User ${randomUUID().slice(0, 8)}`, canManageHooks: true });
        return { provider: 'azure-devops', organizationUrl: azure.url, token };
      },
      newRepository() {
        const repo = azure.addRepository({ projectName: 'Team', name: `app-${randomUUID().slice(0, 8)}` });
        return { externalId: repo.id, fullName: `Team/${repo.name}` };
      },
      pushHooks: (repository) =>
        azure
          .subscriptions()
          .filter((s) => s.eventType === 'git.push' && s.publisherInputs.repository === repository.externalId)
          .map((s) => ({ url: s.consumerInputs.url!, secret: s.consumerInputs.basicAuthPassword!, basicAuthUser: s.consumerInputs.basicAuthUsername })),
      globalSecret: TEST_WEBHOOK_SECRETS.azureDevOps.pass,
    }),
  };

  async function connect(org: { slug: string; token: string }, body: Record<string, unknown>): Promise<string> {
    const res = await h.request('POST', `/api/v1/orgs/${org.slug}/connections`, { token: org.token, body });
    expect(res.status, await res.clone().text()).toBe(202);
    const { id, workflowId } = (await res.json()) as { id: string; workflowId: string };
    expect(await resultOf<{ status: string }>(h, workflowId)).toMatchObject({ status: 'active' });
    return id;
  }

  /** The repository in the organization's cache (as a refresh leaves it), attached through the API. */
  async function attach(provider: HookProvider, org: { id: string; slug: string; token: string }, connectionId: string, repository: Repository): Promise<string> {
    const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider, ...repository, ...(provider === 'gitlab' ? {} : { project: repository.fullName.split('/')[0]! }) });
    const res = await h.request('PUT', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: org.token });
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await resultOf<{ status: string }>(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ status: 'attached' });
    return repositoryId;
  }

  /** A push of its own (the same body twice for a connection is a replay). */
  const pushPayload = (provider: HookProvider, repository: Repository): Payload => ({ ...withRepository(provider, fixture(PUSH_FIXTURES[provider]), repository), test_push: randomUUID() });

  const eventsOf = (organizationId: string, repositoryId: string) =>
    h.db.selectFrom('events').select(['id', 'delivery_id']).where('organization_id', '=', organizationId).where('repository_id', '=', repositoryId).execute();

  describe.each(['gitlab', 'bitbucket', 'azure-devops'] as const)('%s', (provider) => {
    const instance = instances[provider]();
    let connA: string;
    let connB: string;
    let ownOfA: Repository;
    let ownOfA_id: string;
    let ownOfB: Repository;
    let shared: Repository;
    let sharedIds: { a: string; b: string };

    beforeAll(async () => {
      [ownOfA, ownOfB, shared] = [instance.newRepository(), instance.newRepository(), instance.newRepository()];
      // Two organizations connect the same instance, each with its own user's token.
      connA = await connect(orgs.a, instance.connectBody());
      connB = await connect(orgs.b, instance.connectBody());
      ownOfA_id = await attach(provider, orgs.a, connA, ownOfA);
      await attach(provider, orgs.b, connB, ownOfB);
      sharedIds = { a: await attach(provider, orgs.a, connA, shared), b: await attach(provider, orgs.b, connB, shared) };
    });

    it("gives each connection's hooks their own credential, never the configured global secret", () => {
      const [hookA] = instance.pushHooks(ownOfA);
      const [hookB] = instance.pushHooks(ownOfB);
      expect(hookA!.url).toBe(`${TEST_PUBLIC_URL}${receiverPath(provider)}?c=${connA}`);
      expect(hookB!.url).toBe(`${TEST_PUBLIC_URL}${receiverPath(provider)}?c=${connB}`);
      expect(hookA!.secret).not.toBe(hookB!.secret);
      for (const hook of [hookA!, hookB!]) {
        expect(hook.secret).not.toBe(instance.globalSecret);
        expect(hook.secret.length).toBeGreaterThanOrEqual(43);
      }
      if (provider === 'azure-devops') expect(hookA!.basicAuthUser).not.toBe(hookB!.basicAuthUser);
    });

    it("records nothing for A when B forges a push for A's repository with B's credential", async () => {
      const [hookB] = instance.pushHooks(ownOfB);
      const [hookA] = instance.pushHooks(ownOfA);
      const before = subscriber.received.length;
      const forged = (url: string) => delivery(provider, pushPayload(provider, ownOfA), { deliveryId: randomUUID(), url, secret: hookB!.secret, basicAuthUser: hookB!.basicAuthUser });

      // Through B's own hook URL: verified as B's, and B has not attached A's repository.
      const throughB = forged(hookB!.url);
      const res = await send(h, throughB);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ status: 'ignored', reason: 'repository not attached' });
      expect(await deliveryRunExists(h, throughB)).toBe(false);
      // Naming A's connection, or none (a legacy hook), B's credential does not verify.
      for (const url of [hookA!.url, `${TEST_PUBLIC_URL}${receiverPath(provider)}`]) {
        const attempt = forged(url);
        expect((await send(h, attempt)).status).toBe(401);
        expect(await deliveryRunExists(h, attempt)).toBe(false);
      }
      expect(await eventsOf(orgs.a.id, ownOfA_id)).toEqual([]);
      expect(subscriber.received.slice(before)).toEqual([]);

      // A's own hook delivers the same kind of push: recorded for A, and A's subscriber gets it.
      const genuine = delivery(provider, pushPayload(provider, ownOfA), { deliveryId: randomUUID(), ...hookA! });
      const accepted = await send(h, genuine);
      expect(accepted.status).toBe(202);
      expect(await resultOf<EventResult>(h, ((await accepted.json()) as { workflowId: string }).workflowId)).toMatchObject({ recorded: 1, delivered: 1 });
      expect((await eventsOf(orgs.a.id, ownOfA_id)).map((e) => e.delivery_id)).toEqual([genuine.deliveryId]);
      expect(subscriber.received.slice(before).map((r) => r.body.deliveryId)).toEqual([genuine.deliveryId]);
    });

    it('gives a project both organizations attached two hooks, and records each delivery once per owner', async () => {
      const hooks = instance.pushHooks(shared);
      expect(hooks.map((hook) => hook.url).sort()).toEqual([connA, connB].map((c) => `${TEST_PUBLIC_URL}${receiverPath(provider)}?c=${c}`).sort());
      expect(hooks[0]!.secret).not.toBe(hooks[1]!.secret);

      // One push reaches both hooks with the same body and, as Azure DevOps (and older GitLab) give it, the same id.
      const payload = pushPayload(provider, shared);
      const deliveryId = randomUUID();
      const before = subscriber.received.length;
      const runs: string[] = [];
      for (const hook of hooks) {
        const res = await send(h, delivery(provider, payload, { deliveryId, ...hook }));
        expect(res.status).toBe(202);
        const { workflowId } = (await res.json()) as { workflowId: string };
        expect(await resultOf<EventResult>(h, workflowId)).toMatchObject({ recorded: 1 });
        runs.push(workflowId);
        // The provider delivers again after a lost acknowledgement: nothing new.
        const again = await send(h, delivery(provider, payload, { deliveryId, ...hook }));
        expect(((await again.json()) as { workflowId: string }).workflowId).toBe(workflowId);
      }
      expect(new Set(runs).size).toBe(2);
      expect((await eventsOf(orgs.a.id, sharedIds.a)).map((e) => e.delivery_id)).toEqual([deliveryId]);
      expect((await eventsOf(orgs.b.id, sharedIds.b)).map((e) => e.delivery_id)).toEqual([deliveryId]);
      expect(subscriber.received.slice(before).map((r) => r.body.deliveryId)).toEqual([deliveryId]);
    });

    it.runIf(provider === 'bitbucket')('records a body already recorded for the connection only once, whatever its new delivery id', async () => {
      const [hookA] = instance.pushHooks(ownOfA);
      const payload = pushPayload(provider, ownOfA);
      const first = delivery(provider, payload, { deliveryId: randomUUID(), ...hookA! });
      expect(await resultOf<EventResult>(h, ((await (await send(h, first)).json()) as { workflowId: string }).workflowId)).toMatchObject({ recorded: 1 });
      const before = subscriber.received.length;

      // The same signed body again under another delivery id (Bitbucket's signature does not cover X-Request-Id).
      const replay = delivery(provider, payload, { deliveryId: randomUUID(), ...hookA! });
      expect(replay.body).toBe(first.body);
      const res = await send(h, replay);
      expect(res.status).toBe(202);
      expect(await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).toEqual({ recorded: 0, delivered: 0, undelivered: [] });
      expect(await eventsOfDelivery(h.db, provider, replay.deliveryId)).toEqual([]);
      expect(subscriber.received.slice(before)).toEqual([]);
    });

    // A GitLab push carries nothing of its own (no id, no time): deleting a branch and creating it
    // again at the same commit repeats its body byte for byte. Its credential is a static header,
    // so a body seen before proves nothing: each delivery (its own Idempotency-Key) is an event.
    it.runIf(provider === 'gitlab')('records a branch created, deleted and created again at the same commit: three events, though the two creations have the same body', async () => {
      const [hookA] = instance.pushHooks(ownOfA);
      const commit = 'a'.repeat(40);
      const none = '0'.repeat(40);
      const branch = `feature-${randomUUID().slice(0, 8)}`;
      const change = (before: string, after: string): Payload => ({
        ...withRepository(provider, fixture(PUSH_FIXTURES[provider]), ownOfA),
        ref: `refs/heads/${branch}`,
        before,
        after,
        checkout_sha: after === none ? null : after,
        commits: [],
        total_commits_count: 0,
      });
      const before = subscriber.received.length;
      const sent = [];
      for (const payload of [change(none, commit), change(commit, none), change(none, commit)]) {
        const d = delivery(provider, payload, { deliveryId: randomUUID(), ...hookA! });
        const res = await send(h, d);
        expect(res.status, await res.clone().text()).toBe(202);
        expect(await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ recorded: 1, delivered: 1 });
        sent.push(d);
      }
      expect(sent[2]!.body).toBe(sent[0]!.body);
      const kinds = [];
      for (const d of sent) kinds.push(...(await eventsOfDelivery(h.db, provider, d.deliveryId)).map((e) => e.kind));
      expect(kinds).toEqual(['branch.created', 'branch.deleted', 'branch.created']);
      expect(subscriber.received.slice(before).map((r) => r.body.deliveryId)).toEqual(sent.map((d) => d.deliveryId));
    });
  });
});
