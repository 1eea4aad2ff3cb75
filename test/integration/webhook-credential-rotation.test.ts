import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webhookCredentialVersions } from '../../lib/db/repositories/webhook-credentials.ts';
import { workflowIds, type EventResult, type WebhookCredentialRotationResult } from '../../workflows/contract.ts';
import { vssError } from '../fakes/azure-devops.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import {
  attachHeldAtCreate,
  attachmentOf,
  azureDevOpsWorld,
  deliveryUrlOf,
  gitlabWorld,
  outcomeOf,
  requestAttachment,
  seedConnection,
  type HookState,
  type HookWorld,
  type Org,
  type WorldRepository,
} from '../support/attachments.ts';
import { manualHold } from '../support/flaky-proxy.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';
import { startWorkerProcess } from '../support/worker-process.ts';

/**
 * `POST …/connections/{id}/webhook-credential/rotate` through the API, the real workflows (the
 * rotation → each repository's own workflow → the hook-health check), the real client libraries
 * and the fake providers. Deliveries are sent as the provider sends them, with the credential its
 * hooks carry; the receiver reads credentials on every delivery (no cache), so what it accepts is
 * what the database holds at that moment.
 */
describe('webhook-credential rotation', () => {
  let h: Harness;
  let org: Org;
  let other: Org;
  let worker: ChildProcess | undefined;
  let receiver: ReturnType<Harness['appWith']>;
  const worlds: HookWorld[] = [];

  beforeAll(async () => {
    // The first test kills this worker process in the middle of the rotation; the harness's own worker takes over.
    h = await startHarness({ withoutWorker: true });
    worker = await startWorkerProcess(h);
    for (const which of ['org', 'other'] as const) {
      const created = await createOrgWithToken(h);
      const value = { id: created.org.id, slug: created.org.slug, token: created.token };
      if (which === 'org') org = value;
      else other = value;
    }
    receiver = h.appWith({ webhooks: { ...h.apiDeps.webhooks, credentialCacheSeconds: 0 } });
  });
  afterAll(async () => {
    worker?.kill('SIGKILL');
    await h?.close();
    await Promise.all(worlds.map((world) => world.close()));
  });

  async function world(make: typeof gitlabWorld): Promise<HookWorld> {
    const made = await make(h, org);
    worlds.push(made);
    return made;
  }

  async function attached(world: HookWorld): Promise<WorldRepository> {
    const repository = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repository.repositoryId, 'PUT'))).result?.status).toBe('attached');
    return repository;
  }

  async function rotate(connectionId: string, as: Org = org): Promise<Response> {
    return h.request('POST', `/api/v1/orgs/${as.slug}/connections/${connectionId}/webhook-credential/rotate`, { token: as.token });
  }

  async function startRotation(connectionId: string): Promise<string> {
    const res = await rotate(connectionId);
    expect(res.status, await res.clone().text()).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    expect(workflowId).toBe(workflowIds.webhookCredentialRotation(org.id, connectionId));
    return workflowId;
  }

  /** A push of the repository (a body of its own each time), delivered to the connection's hook URL with `credential`. */
  function push(world: HookWorld, repository: WorldRepository, credential: { secret?: string; basicAuthUser?: string }): Delivery {
    const payload = { ...withRepository(world.provider, fixture(PUSH_FIXTURES[world.provider]), repository), test_push: randomUUID() };
    return delivery(world.provider, payload, { deliveryId: randomUUID(), url: deliveryUrlOf(world.provider, world.connectionId), ...credential });
  }

  async function deliver(d: Delivery): Promise<{ status: number; workflowId?: string }> {
    const res = await receiver.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
    return { status: res.status, ...(res.status === 202 ? { workflowId: ((await res.json()) as { workflowId: string }).workflowId } : {}) };
  }

  const credentialOf = (hook: HookState) => ({ secret: hook.secret, basicAuthUser: hook.basicAuthUser });
  const hookHealthOf = async (repository: WorldRepository) => ((await attachmentOf(h, org, repository.repositoryId)) as { hookHealth?: { status: string; reason?: string } }).hookHealth;

  it('resumes after its worker is killed mid-rotation: every hook ends on the new credential; both are accepted meanwhile, only the new one after', async () => {
    const gitlab = await world(gitlabWorld);
    const repositories = [await attached(gitlab), await attached(gitlab), await attached(gitlab)];
    const old = { secret: gitlab.webhook.secret };
    for (const repository of repositories) expect(repository.hooks().map((hook) => hook.secret)).toEqual([old.secret]);

    // The first hook save of the rotation reaches GitLab; its answer is held while the worker is killed.
    const hold = manualHold();
    let held = false;
    gitlab.proxy.fault = (request) => (request.method === 'PUT' && /\/hooks\/\d+(\?|$)/.test(request.url) && !held ? ((held = true), hold.fault) : undefined);
    const workflowId = await startRotation(gitlab.connectionId);
    await hold.held;

    // A second request while it runs joins it.
    const again = await rotate(gitlab.connectionId);
    expect(again.status).toBe(202);
    expect(await again.json()).toEqual({ workflowId });

    // Mid-rotation: the hook just saved carries the new credential, the others the old one; both are accepted.
    const saved = repositories.flatMap((repository) => repository.hooks()).filter((hook) => hook.secret !== old.secret);
    expect(saved).toHaveLength(1);
    const fresh = credentialOf(saved[0]!);
    expect(fresh.secret!.length).toBeGreaterThanOrEqual(43);
    const during = [await deliver(push(gitlab, repositories[0]!, old)), await deliver(push(gitlab, repositories[1]!, fresh))];
    expect(during.map((d) => d.status)).toEqual([202, 202]);
    expect(await webhookCredentialVersions(h.db, gitlab.connectionId)).toEqual([2, 1]);

    worker!.kill('SIGKILL');
    await once(worker!, 'exit');
    worker = undefined;
    hold.release('drop');
    await h.restartWorker();

    const result = await resultOf<WebhookCredentialRotationResult>(h, workflowId);
    expect(result).toEqual({ version: 2, dropped: [1], notUpdated: [], checked: { healthy: 0, repaired: 3, failing: 0, failures: [] } });
    for (const repository of repositories) {
      expect(repository.hooks().map((hook) => hook.secret)).toEqual([fresh.secret]);
      expect(await hookHealthOf(repository)).toMatchObject({ status: 'repaired', reason: 'project-hook updated (credential)' });
    }
    expect(await webhookCredentialVersions(h.db, gitlab.connectionId)).toEqual([2]);

    // After: the old credential is refused, the new one accepted.
    expect((await deliver(push(gitlab, repositories[2]!, old))).status).toBe(401);
    const after = await deliver(push(gitlab, repositories[2]!, fresh));
    expect(after.status).toBe(202);
    for (const accepted of [...during, after]) expect(await resultOf<EventResult>(h, accepted.workflowId!)).toMatchObject({ recorded: 1 });

    // Neither credential is in the run's history.
    const history = await historyText(h, workflowId);
    for (const secret of [old.secret, fresh.secret!]) expect(history).not.toContain(secret);

    // Once done, another rotation may follow.
    const next = await startRotation(gitlab.connectionId);
    expect(await resultOf<WebhookCredentialRotationResult>(h, next)).toMatchObject({ version: 3, dropped: [2], notUpdated: [] });
    await recordHistory(h.client, workflowId, 'webhook-credential-rotation');
  });

  it('reports a hook that cannot be saved and keeps the old credential accepted for it, until a later check saves it', async () => {
    const azure = await world(azureDevOpsWorld);
    const [refusing, fine] = [await attached(azure), await attached(azure)];
    const old = { secret: azure.webhook.secret, basicAuthUser: azure.webhook.basicAuthUser };
    const stuck = refusing.hooks().find((hook) => hook.events[0] === 'git.pullrequest.updated')!;
    azure.proxy.fault = (request) =>
      request.method === 'PUT' && request.url.includes(`/_apis/hooks/subscriptions/${stuck.id}`)
        ? { kind: 'answer', status: 403, body: JSON.stringify(vssError(403, 'TF400813: The user is not authorized to access this resource.', 'UnauthorizedRequestException').body) }
        : undefined;

    const workflowId = await startRotation(azure.connectionId);
    const result = await resultOf<WebhookCredentialRotationResult>(h, workflowId);
    expect(result).toEqual({
      version: 2,
      dropped: [],
      notUpdated: [{ repositoryId: refusing.repositoryId, providerHookId: stuck.id, credentialVersion: 1, reason: expect.stringContaining('ProviderForbidden') }],
      checked: { healthy: 0, repaired: 1, failing: 1, failures: [{ repositoryId: refusing.repositoryId, reason: expect.stringContaining('403') }] },
    });
    expect(await hookHealthOf(refusing)).toMatchObject({ status: 'failing', reason: expect.stringContaining('ProviderForbidden') });
    expect(await hookHealthOf(fine)).toMatchObject({ status: 'repaired' });

    // The new credential: a new Basic user and password, on every hook but the one refused.
    const fresh = credentialOf(fine.hooks()[0]!);
    expect(fresh.basicAuthUser).not.toBe(old.basicAuthUser);
    expect(fresh.secret).not.toBe(old.secret);
    for (const hook of [...fine.hooks(), ...refusing.hooks()]) expect(credentialOf(hook)).toEqual(hook.id === stuck.id ? old : fresh);
    // The refused hook still delivers with the old credential, and it is still accepted; so is the new one.
    expect((await deliver(push(azure, refusing, old))).status).toBe(202);
    expect((await deliver(push(azure, fine, fresh))).status).toBe(202);

    // The provider takes the save again: the nightly check saves the hook and drops the old credential.
    azure.proxy.fault = () => undefined;
    const check = await h.client.workflow.execute('connectionHookHealthWorkflow', {
      taskQueue: h.taskQueue,
      workflowId: `${workflowIds.hookHealthConnection(org.id, azure.connectionId)}:${randomUUID()}`,
      args: [{ organizationId: org.id, connectionId: azure.connectionId }],
    });
    expect(check).toMatchObject({ repaired: 1, failing: 0 });
    expect(refusing.hooks().map(credentialOf)).toEqual([fresh, fresh, fresh]);
    expect(await webhookCredentialVersions(h.db, azure.connectionId)).toEqual([2]);
    expect((await deliver(push(azure, refusing, old))).status).toBe(401);
    expect((await deliver(push(azure, refusing, fresh))).status).toBe(202);
  });

  it('saves a hook an attach made with the old credential again when the rotation dropped it before the attach recorded the hook', async () => {
    const gitlab = await world(gitlabWorld);
    const old = { secret: gitlab.webhook.secret };
    // The attach's hook is created at GitLab with the credential current then; its answer is held.
    const { repository, hold, workflowId: attach } = await attachHeldAtCreate({ h, org, world: gitlab });
    expect(repository.hooks().map((hook) => hook.secret)).toEqual([old.secret]);

    // Meanwhile a rotation runs to its end: no recorded hook carries the old credential, so it is dropped.
    const result = await resultOf<WebhookCredentialRotationResult>(h, await startRotation(gitlab.connectionId));
    expect(result).toMatchObject({ version: 2, dropped: [1], notUpdated: [] });

    hold.release('answer');
    expect((await outcomeOf(h, attach)).result?.status).toBe('attached');
    const [hook, ...more] = repository.hooks();
    expect(more).toEqual([]);
    expect(hook!.secret).not.toBe(old.secret);
    expect(await webhookCredentialVersions(h.db, gitlab.connectionId)).toEqual([2]);
    expect((await deliver(push(gitlab, repository, { secret: hook!.secret }))).status).toBe(202);
  });

  it("refuses GitHub connections (409), and another organization's token finds no such connection (404)", async () => {
    const github = await seedConnection(h, { organizationId: org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: String(Date.now()) });
    const refused = await rotate(github);
    expect(refused.status).toBe(409);
    expect(refused.headers.get('content-type')).toContain('application/problem+json');
    expect(((await refused.json()) as { detail: string }).detail).toContain("App's webhook secret");

    const gitlab = await world(gitlabWorld);
    expect((await rotate(gitlab.connectionId, other)).status).toBe(404);
    expect((await h.request('POST', `/api/v1/orgs/${org.slug}/connections/${gitlab.connectionId}/webhook-credential/rotate`, { token: other.token })).status).toBe(404);
    expect((await h.request('POST', `/api/v1/orgs/${org.slug}/connections/${gitlab.connectionId}/webhook-credential/rotate`)).status).toBe(401);
    // Nothing was started for them.
    expect(await webhookCredentialVersions(h.db, gitlab.connectionId)).toEqual([1]);

    await h.db.updateTable('connections').set({ status: 'failed', reason: 'token revoked' }).where('id', '=', gitlab.connectionId).execute();
    expect((await rotate(gitlab.connectionId)).status).toBe(409);
  });
});
