import { randomUUID } from 'node:crypto';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { seal } from '../../lib/crypto.ts';
import type { Provider } from '../../lib/domain.ts';
import type { HookHealthResult, RepositoryWorkflowResult } from '../../workflows/contract.ts';
import { HOOK_SWEEP_AFTER_SECONDS } from '../../lib/db/repositories/attachments.ts';
import { startFakeAzureDevOps, vssError } from '../fakes/azure-devops.ts';
import type { FakeHttpServer } from '../fakes/base.ts';
import { bitbucketError, startFakeBitbucket } from '../fakes/bitbucket.ts';
import { HOOK_EVENT_FLAGS, startFakeGitlab } from '../fakes/gitlab.ts';
import { manualHold, startFlakyProxy, type FlakyProxy, type ProxiedRequest, type ProxyFault } from './flaky-proxy.ts';
import { ensureWebhookCredential, type WebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from './harness.ts';

/**
 * Attach / detach test support: connections and cached repositories seeded straight into the
 * database (the credential sealed as the connect flow stores it), a fake provider behind a
 * fault-injecting proxy per provider, and the hook state of each fake in one comparable shape.
 */

/** Where a connection's hooks deliver (the receiver finds the connection from `c`). */
export const deliveryUrlOf = (provider: Provider, connectionId: string) => `${TEST_PUBLIC_URL}/api/events-handler/v1/events/${provider}?c=${connectionId}`;

export async function seedConnection(
  h: Harness,
  values: { organizationId: string; provider: Provider; baseUrl: string; externalKey?: string | null; secret?: string; id?: string },
): Promise<string> {
  const id = values.id ?? randomUUID();
  await h.db
    .insertInto('connections')
    .values({
      id,
      organization_id: values.organizationId,
      provider: values.provider,
      base_url: values.baseUrl,
      external_key: values.externalKey ?? null,
      account: 'seeded',
      credential: values.secret ? seal(h.keys, values.secret, id) : null,
      status: 'active',
    })
    .execute();
  return id;
}

export async function seedRepository(
  h: Harness,
  values: { organizationId: string; connectionId: string; provider: Provider; externalId: string; fullName: string; project?: string },
): Promise<string> {
  const row = await h.db
    .insertInto('repositories')
    .values({
      organization_id: values.organizationId,
      connection_id: values.connectionId,
      provider: values.provider,
      external_id: values.externalId,
      full_name: values.fullName,
      project: values.project ?? null,
    })
    .returning('id')
    .executeTakeFirstOrThrow();
  return row.id;
}

export interface Org {
  id: string;
  slug: string;
  token: string;
}

/** PUT (attach) or DELETE (detach) on the attachment; returns the workflow id from the 202. */
export async function requestAttachment(h: Harness, org: Org, repositoryId: string, method: 'PUT' | 'DELETE'): Promise<string> {
  const res = await h.request(method, `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: org.token });
  expect(res.status, await res.clone().text()).toBe(202);
  return ((await res.json()) as { workflowId: string }).workflowId;
}

/** Starts an attach of a new repository whose hook creation the provider performs but whose answer is held until `hold.release`. */
export async function attachHeldAtCreate({ h, org, world }: { h: Harness; org: Org; world: HookWorld }) {
  const repository = await world.newRepository();
  const hold = manualHold();
  let held = false;
  world.proxy.fault = (request) => (world.isCreate(request) && !held ? ((held = true), hold.fault) : undefined);
  const workflowId = await requestAttachment(h, org, repository.repositoryId, 'PUT');
  await hold.held;
  return { repository, hold, workflowId };
}

/**
 * Moves the attachment's last status change back past HOOK_SWEEP_AFTER_SECONDS, as if it had stood
 * that long: the hook-health pass sweeps only such unattached repositories.
 */
export async function agePastSweepDelay(h: Harness, repositoryId: string): Promise<void> {
  await h.db
    .updateTable('attachments')
    .set({ updated_at: sql<Date>`updated_at - make_interval(secs => ${HOOK_SWEEP_AFTER_SECONDS + 60})` })
    .where('repository_id', '=', repositoryId)
    .execute();
}

/** Runs the nightly hook-health reconcile for the organization, as the Schedule's run does for all; returns its id and result. */
export async function runHookHealth(h: Harness, org: Org): Promise<{ workflowId: string; result: HookHealthResult }> {
  const workflowId = `hook-health:${org.id}:${randomUUID()}`;
  const result = await h.client.workflow.execute('hookHealthWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ organizationId: org.id, connectionsAtOnce: 2 }] });
  return { workflowId, result: result as HookHealthResult };
}

export interface AttachmentAnswer {
  status: string;
  reason?: string;
  hooks: { providerHookId: string; events: string[] }[];
  workflowId: string;
}

export async function attachmentOf(h: Harness, org: Org, repositoryId: string): Promise<AttachmentAnswer> {
  const res = await h.request('GET', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: org.token });
  expect(res.status).toBe(200);
  return (await res.json()) as AttachmentAnswer;
}

/** The run's result, or its typed failure. */
export async function outcomeOf(h: Harness, workflowId: string): Promise<{ result?: RepositoryWorkflowResult; failure?: { type?: string; message: string } }> {
  try {
    return { result: (await h.client.workflow.getHandle(workflowId).result()) as RepositoryWorkflowResult };
  } catch (error) {
    if (!(error instanceof WorkflowFailedError)) throw error;
    const cause = error.cause;
    return { failure: cause instanceof ApplicationFailure ? { type: cause.type ?? undefined, message: cause.message } : { message: String(cause?.message) } };
  }
}

/** A provider hook as a test compares it across providers. */
export interface HookState {
  id: string;
  url: string;
  events: string[];
  /** GitLab token, Bitbucket secret, Azure DevOps Basic password: as the provider stores them. */
  secret: string | undefined;
  basicAuthUser?: string;
  enabled: boolean;
  /** GitLab and Bitbucket: whether the provider verifies our TLS certificate when delivering. */
  sslVerification?: boolean;
  filters?: Record<string, string>;
}

export interface WorldRepository {
  repositoryId: string;
  /** The provider's id for the repository. */
  externalId: string;
  fullName: string;
  hooks(): HookState[];
  deleteByHand(hookId: string): void;
  /** GitLab: the connection's user stops being a member of the private project (it then answers 404 for it and its hooks). */
  loseAccess?(): void;
  /** Creates, straight at the provider, another copy of forgelink's hook set with a stale secret (as an older run or a hand could leave). */
  addCopyOfHookSet(): Promise<void>;
}

/** One hook provider (GitLab, Bitbucket DC, Azure DevOps) set up for attach tests in one organization. */
export interface HookWorld {
  provider: Exclude<Provider, 'github'>;
  connectionId: string;
  /** The fake's own server: its call log and failNext. */
  server: FakeHttpServer;
  /** Between forgelink and the fake: network faults. */
  proxy: FlakyProxy;
  /** The fake's operation names for hook calls. */
  ops: { list: string; create: string; update: string; delete: string };
  /** Events of each hook an attached repository has, in hook-set order. */
  hookSet: string[][];
  /** The credential forgelink uses (for leak checks). */
  credential: string;
  /** The connection's webhook credential, which its hooks carry. */
  webhook: WebhookCredential;
  /** Whether a request through the proxy creates a hook. */
  isCreate(request: ProxiedRequest): boolean;
  /** A permanent refusal of a hook creation, as the provider words it. */
  refusal: ProxyFault;
  /** A new repository; Bitbucket DC: at `slug` when given (a name a deleted repository had). */
  newRepository(options?: { slug?: string }): Promise<WorldRepository>;
  /** What the provider does to a hook whose deliveries keep failing. */
  disableByProvider?(repository: WorldRepository, hookId: string, how?: string): void;
  /** The repository is deleted at the provider (its hooks with it). */
  removeAtProvider(repository: WorldRepository): void;
  /** Bitbucket DC: the repository renamed at the provider (its hooks with it, under the new slug; `hooks()` follows it). */
  renameAtProvider?(repository: WorldRepository, slug: string): void;
  /** Fault mode of the fake (paged hook lists only): its hook listing never ends (true) or is as stored (false). */
  listHooksEndlessly?(on: boolean): void;
  close(): Promise<void>;
}

let sequence = 0;
const unique = (prefix: string) => `${prefix}-${++sequence}-${Math.random().toString(36).slice(2, 8)}`;

export async function gitlabWorld(h: Harness, org: Org): Promise<HookWorld> {
  const fake = await startFakeGitlab();
  const proxy = await startFlakyProxy(fake.url);
  const credential = `glpat-${unique('attach')}-SECRET`;
  fake.addToken({ token: credential, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });
  const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: credential });
  const projects = new Map<string, number>();
  return {
    provider: 'gitlab',
    connectionId,
    server: fake.server,
    proxy,
    ops: { list: 'listHooks', create: 'createHook', update: 'updateHook', delete: 'deleteHook' },
    hookSet: [['push_events', 'tag_push_events', 'merge_requests_events']],
    credential,
    webhook: await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' }),
    isCreate: (r) => r.method === 'POST' && /^\/api\/v4\/projects\/[^/]+\/hooks(\?|$)/.test(r.url),
    refusal: { kind: 'answer', status: 422, body: JSON.stringify({ message: { url: ['is blocked: Requests to the local network are not allowed'] } }) },
    async newRepository() {
      const project = fake.addProject({ pathWithNamespace: `platform/${unique('app')}` });
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'gitlab', externalId: String(project.id), fullName: project.pathWithNamespace });
      projects.set(repositoryId, project.id);
      return {
        repositoryId,
        externalId: String(project.id),
        fullName: project.pathWithNamespace,
        hooks: () =>
          fake.hooks(project.id).map((hook) => ({
            id: String(hook.id),
            url: hook.url,
            events: HOOK_EVENT_FLAGS.filter((flag) => hook[flag]),
            secret: hook.token,
            enabled: hook.alert_status === 'executable',
            sslVerification: hook.enable_ssl_verification,
          })),
        deleteByHand: (hookId) => fake.deleteHookByHand(project.id, Number(hookId)),
        loseAccess: () => fake.setAccessLevel(project.id, 0),
        async addCopyOfHookSet() {
          const flags = Object.fromEntries(['push_events', 'tag_push_events', 'merge_requests_events'].map((flag) => [flag, true]));
          await expectCreated(`${fake.url}/api/v4/projects/${project.id}/hooks`, { 'private-token': credential }, { url: deliveryUrlOf('gitlab', connectionId), ...flags, token: 'stale-token' });
        },
      };
    },
    disableByProvider(repository, hookId) {
      fake.setHookAlertStatus(projects.get(repository.repositoryId)!, Number(hookId), 'disabled');
    },
    removeAtProvider: (repository) => fake.removeProject(Number(repository.externalId)),
    listHooksEndlessly: (on) => fake.listEndlessly(on ? 'listHooks' : null),
    close: async () => {
      await proxy.close();
      await fake.close();
    },
  };
}

export async function bitbucketWorld(h: Harness, org: Org): Promise<HookWorld> {
  const slugs = new Map<string, string>();
  const fake = await startFakeBitbucket();
  const proxy = await startFlakyProxy(fake.url);
  const credential = `bbtoken-${unique('attach')}-SECRET`;
  fake.addToken({ token: credential, username: 'ci-bot' });
  fake.addProject({ key: 'CI', name: 'CI' });
  const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'bitbucket', baseUrl: proxy.url, secret: credential });
  return {
    provider: 'bitbucket',
    connectionId,
    server: fake.server,
    proxy,
    ops: { list: 'listWebhooks', create: 'createWebhook', update: 'updateWebhook', delete: 'deleteWebhook' },
    hookSet: [['repo:refs_changed', 'pr:opened', 'pr:from_ref_updated', 'pr:modified', 'pr:merged', 'pr:declined']],
    credential,
    webhook: await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'bitbucket' }),
    isCreate: (r) => r.method === 'POST' && /\/webhooks(\?|$)/.test(r.url),
    refusal: {
      kind: 'answer',
      status: 400,
      body: JSON.stringify(bitbucketError(400, 'The webhook URL is not allowed by the administrator.', 'com.atlassian.bitbucket.validation.ArgumentValidationException', 'url').body),
    },
    async newRepository(options) {
      const repo = fake.addRepository({ projectKey: 'CI', slug: options?.slug ?? unique('app') });
      const fullName = `CI/${repo.slug}`;
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'bitbucket', externalId: String(repo.id), fullName, project: 'CI' });
      slugs.set(repositoryId, repo.slug);
      return {
        repositoryId,
        externalId: String(repo.id),
        fullName,
        hooks: () =>
          fake.webhooks('CI', slugs.get(repositoryId)!).map((hook) => ({
            id: String(hook.id),
            url: hook.url,
            events: hook.events,
            secret: hook.configuration.secret,
            enabled: hook.active,
            sslVerification: hook.sslVerificationRequired,
          })),
        deleteByHand: (hookId) => fake.deleteWebhookByHand('CI', repo.slug, Number(hookId)),
        async addCopyOfHookSet() {
          await expectCreated(
            `${fake.url}/rest/api/latest/projects/CI/repos/${repo.slug}/webhooks`,
            { authorization: `Bearer ${credential}` },
            { name: 'copy', url: deliveryUrlOf('bitbucket', connectionId), events: ['repo:refs_changed'], configuration: { secret: 'stale-secret' } },
          );
        },
      };
    },
    disableByProvider(repository, hookId) {
      // Bitbucket does not switch hooks off by itself: an administrator does.
      fake.setWebhookActiveByHand('CI', slugs.get(repository.repositoryId)!, Number(hookId), false);
    },
    removeAtProvider: (repository) => fake.removeRepository(Number(repository.externalId)),
    renameAtProvider(repository, slug) {
      fake.renameRepository(Number(repository.externalId), slug);
      slugs.set(repository.repositoryId, slug.toLowerCase());
    },
    listHooksEndlessly: (on) => fake.listEndlessly(on ? 'listWebhooks' : null),
    close: async () => {
      await proxy.close();
      await fake.close();
    },
  };
}

export async function azureDevOpsWorld(h: Harness, org: Org): Promise<HookWorld> {
  const fake = await startFakeAzureDevOps({ organization: 'contoso' });
  const proxy = await startFlakyProxy(fake.url);
  const credential = `adopat${unique('attach')}SECRET`;
  fake.addPat({ pat: credential, displayName: 'CI Bot' });
  fake.addProject({ name: 'Platform' });
  const organizationUrl = `${proxy.url}/contoso`;
  const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'azure-devops', baseUrl: organizationUrl, externalKey: organizationUrl.toLowerCase(), secret: credential });
  return {
    provider: 'azure-devops',
    connectionId,
    server: fake.server,
    proxy,
    ops: { list: 'querySubscriptions', create: 'createSubscription', update: 'updateSubscription', delete: 'deleteSubscription' },
    hookSet: [['git.push'], ['git.pullrequest.created'], ['git.pullrequest.updated']],
    credential,
    webhook: await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'azure-devops' }),
    isCreate: (r) => r.method === 'POST' && /\/_apis\/hooks\/subscriptions\?/.test(r.url),
    refusal: { kind: 'answer', status: 400, body: JSON.stringify(vssError(400, 'Invalid value "https://forgelink.test" for input "url": the host cannot be reached.', 'ArgumentException').body) },
    async newRepository() {
      const repo = fake.addRepository({ projectName: 'Platform', name: unique('app') });
      const fullName = `Platform/${repo.name}`;
      const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'azure-devops', externalId: repo.id, fullName, project: 'Platform' });
      return {
        repositoryId,
        externalId: repo.id,
        fullName,
        hooks: () =>
          fake
            .subscriptions()
            .filter((s) => s.publisherInputs.repository === repo.id)
            .map((s) => {
              const { projectId: _p, repository: _r, hostId: _h, tfsSubscriptionId: _t, ...filters } = s.publisherInputs;
              return {
                id: s.id,
                url: s.consumerInputs.url!,
                events: [s.eventType],
                secret: s.consumerInputs.basicAuthPassword,
                basicAuthUser: s.consumerInputs.basicAuthUsername,
                enabled: s.status === 'enabled',
                ...(Object.keys(filters).length > 0 ? { filters } : {}),
              };
            }),
        deleteByHand: (hookId) => fake.deleteSubscriptionByHand(hookId),
        async addCopyOfHookSet() {
          for (const eventType of ['git.push', 'git.pullrequest.created', 'git.pullrequest.updated']) {
            await expectCreated(
              `${fake.url}/_apis/hooks/subscriptions?api-version=7.1`,
              { authorization: `Basic ${Buffer.from(`:${credential}`).toString('base64')}`, 'x-tfs-fedauthredirect': 'Suppress' },
              {
                publisherId: 'tfs',
                eventType,
                consumerId: 'webHooks',
                consumerActionId: 'httpRequest',
                publisherInputs: { projectId: repo.projectId, repository: repo.id },
                consumerInputs: { url: deliveryUrlOf('azure-devops', connectionId), basicAuthUsername: 'someone', basicAuthPassword: 'stale-password' },
              },
            );
          }
        },
      };
    },
    disableByProvider(_repository, hookId, how = 'disabledBySystem') {
      fake.setSubscriptionStatus(hookId, how as 'disabledBySystem' | 'onProbation');
    },
    removeAtProvider: (repository) => fake.removeRepository(repository.externalId),
    close: async () => {
      await proxy.close();
      await fake.close();
    },
  };
}

async function expectCreated(url: string, headers: Record<string, string>, body: unknown): Promise<void> {
  const res = await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(res.ok, await res.clone().text()).toBe(true);
}

export const HOOK_WORLDS = { gitlab: gitlabWorld, bitbucket: bitbucketWorld, 'azure-devops': azureDevOpsWorld } as const;

/** The provider holds exactly forgelink's hook set for the repository: one hook per entry, each enabled, delivering to us with our secret. */
export function expectExactHookSet(world: HookWorld, repository: WorldRepository): HookState[] {
  const hooks = repository.hooks();
  const expected = world.hookSet.map((events) => ({
    id: expect.any(String),
    url: deliveryUrlOf(world.provider, world.connectionId),
    events,
    enabled: true,
    secret: world.webhook.secret,
    ...(world.provider === 'azure-devops'
      ? { basicAuthUser: world.webhook.basicAuthUser, ...(events[0] === 'git.pullrequest.updated' ? { filters: { notificationType: 'PushNotification' } } : {}) }
      : { sslVerification: true }),
  }));
  const byEvents = (a: { events: string[] }, b: { events: string[] }) => a.events.join().localeCompare(b.events.join());
  expect([...hooks].sort(byEvents)).toEqual([...expected].sort(byEvents));
  return hooks;
}

/** The attachment the API shows records exactly the hooks the provider holds. */
export function expectRecorded(answer: AttachmentAnswer, hooks: HookState[]): void {
  const sort = (ids: string[]) => [...ids].sort();
  expect(sort(answer.hooks.map((hook) => hook.providerHookId))).toEqual(sort(hooks.map((hook) => hook.id)));
  for (const recorded of answer.hooks) expect(recorded.events).toEqual(hooks.find((hook) => hook.id === recorded.providerHookId)!.events);
}

/** The providers with per-repository hooks (GitHub's App delivers without them). */
export const HOOK_PROVIDERS = ['gitlab', 'bitbucket', 'azure-devops'] as const;
export type HookProvider = (typeof HOOK_PROVIDERS)[number];

/**
 * Registers, in the calling describe block, a harness, an organization and a hook world per
 * provider (faults cleared after each test, all closed at the end), handed to `ready` once set up.
 */
export function useHookWorlds(ready: (setup: { h: Harness; org: Org; worlds: Record<HookProvider, HookWorld> }) => void): void {
  let h: Harness | undefined;
  const worlds = {} as Record<HookProvider, HookWorld>;
  beforeAll(async () => {
    h = await startHarness();
    const created = await createOrgWithToken(h);
    const org = { id: created.org.id, slug: created.org.slug, token: created.token };
    for (const provider of HOOK_PROVIDERS) worlds[provider] = await HOOK_WORLDS[provider](h, org);
    ready({ h, org, worlds });
  });
  afterEach(() => {
    for (const world of Object.values(worlds)) world.proxy.fault = () => undefined;
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all(Object.values(worlds).map((w) => w.close()));
  });
}

/** Waits, on the server's long poll (no sleeping), until the run's history holds a signal `name` sent by `from`. */
export async function signalReceived(h: Harness, workflowId: string, name: string, from: string): Promise<void> {
  let nextPageToken: Uint8Array | undefined;
  for (;;) {
    const page = await h.client.workflowService.getWorkflowExecutionHistory({ namespace: 'default', execution: { workflowId }, nextPageToken, waitNewEvent: true });
    const events: temporal.api.history.v1.IHistoryEvent[] = page.history?.events ?? [];
    if (events.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === name && e.workflowExecutionSignaledEventAttributes.externalWorkflowExecution?.workflowId === from)) return;
    if (!page.nextPageToken?.length) throw new Error(`${workflowId} closed without signal ${name} from ${from}`);
    nextPageToken = page.nextPageToken;
  }
}
