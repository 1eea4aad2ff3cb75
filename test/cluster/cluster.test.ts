import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client, WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { createDb, type Db } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { freeLoopbackPort } from '../../lib/net.ts';
import { SEARCH_ATTRIBUTES } from '../../workflows/contract.ts';
import { startFakeAzureDevOps, type FakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { manualHold, startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { testPostgres, type TestPostgres } from '../support/postgres.ts';
import { killRemaining, ROOT, startProcess, writeProcessConfig, type StartedProcess } from '../support/processes.ts';
import { findClusterBinaries, startTemporalCluster, TEMPORAL_SERVER_MODULES, until, type TemporalCluster } from '../support/temporal-cluster.ts';

/**
 * Issue #14 item 5: forgelink proven on a real Temporal cluster. The server built from
 * go.temporal.io/server@v1.29.1 on PostgreSQL persistence and visibility, four history shards, its
 * frontend on mutual TLS with a CA made for the run (test/support/temporal-cluster.ts); forgelink
 * built (`npm run build`) and run from dist/ as separate processes, one API and two workers, with
 * the four fake providers and a subscriber. In order, each step on what the one before left:
 * 1. connect each provider, refresh;
 * 2. attach: Azure DevOps (three subscriptions) with its second subscription's create held at the
 *    provider and the worker running it SIGKILLed: the other worker finishes, exactly three
 *    subscriptions, all recorded, none orphaned; then the other providers;
 * 3. signed deliveries → events → the subscriber;
 * 4. the Temporal server SIGKILLed and started again while a subscriber call is held and deliveries
 *    keep arriving: every delivery acknowledged, every run completes, every event recorded once and
 *    received; in the full form the server stays down 45 s and the first delivery stored during the
 *    outage must start within 40 s of the server's return (the relay's backoff, at most 30 s, and a
 *    reconnect, capped at 2 s; temporal-reconnect.test.ts isolates that cap);
 * 5. the API SIGKILLed while deliveries arrive and started again: senders retry as providers do, and
 *    every acknowledged delivery has exactly one event;
 * 6. detach: the hooks are gone at every provider;
 * 7. refresh: what the providers added since is in the cache.
 * FORGELINK_CLUSTER_SHORT=1 sends fewer deliveries (CI).
 */
const execFileAsync = promisify(execFile);
const SHORT = process.env.FORGELINK_CLUSTER_SHORT === '1';
/** Deliveries per delivery step (spread over the four providers). */
const DELIVERIES = SHORT ? 8 : 40;
/** How many deliveries arrive while the Temporal server is down, and while the API is down or restarting. */
const DURING_OUTAGE = SHORT ? 4 : 20;
const RUN_DEADLINE_MS = 180_000;
/** How long step 4 keeps the Temporal server down (the full form: an outage as long as an upgrade's). */
const OUTAGE_MS = SHORT ? 0 : 45_000;
/**
 * After that outage, the first delivery stored during it is started within this of the server's
 * return: the relay's own backoff (at most 30 s) plus a reconnect (capped at 2 s) and some slack.
 * Without the cap the API's client waited up to 120 s between reconnects (isolated by temporal-reconnect.test.ts).
 */
const FIRST_START_AFTER_OUTAGE_MS = 40_000;

interface Hook {
  url: string;
  secret: string;
  basicAuthUser?: string;
}
interface Repo {
  id: string;
  externalId: string;
  fullName: string;
}
interface Sent {
  delivery: Delivery;
  url: string;
  /** From the receiver's 202. */
  workflowId?: string;
}

const { binaries, missing } = findClusterBinaries();

describe.skipIf(process.env.FORGELINK_CLUSTER_SKIP === '1')('forgelink on a real Temporal cluster (PostgreSQL, 4 shards, mTLS): one API and two workers from dist/', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-cluster-'));
  const log = (line: string) => console.log(`[cluster +${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}`);
  const t0 = performance.now();
  let failed = false;
  let postgres: TestPostgres | undefined;
  let admin: Db | undefined;
  let db: Db;
  let database: string | undefined;
  let cluster: TemporalCluster | undefined;
  let temporal: Client | undefined;
  let github: FakeGithub, gitlab: FakeGitlab, bitbucket: FakeBitbucket, azure: FakeAzureDevOps, subscriber: FakeSubscriber;
  let azureProxy: FlakyProxy, subscriberProxy: FlakyProxy;
  const processes: { name: string; process: StartedProcess }[] = [];
  const workers: StartedProcess[] = [];
  let api: StartedProcess;
  let apiUrl: string;
  let env: NodeJS.ProcessEnv;
  const adminToken = `cluster-admin-${randomBytes(24).toString('hex')}`;
  const githubWebhookSecret = randomBytes(20).toString('hex');
  const org = { slug: `cluster-${randomUUID().slice(0, 8)}`, token: '' };
  let installationId: number;
  const repos = {} as Record<Provider, Repo>;
  const hooks = {} as Record<Provider, Hook>;
  /** Every delivery acknowledged (202) so far, by delivery id. */
  const acknowledged = new Map<string, Sent>();
  /** Attempts a receiver did not acknowledge (refused connection, 5xx, timeout), counted as they happen. */
  let failedAttempts = 0;

  const start = async (name: string, entry: string, readyMessage: string) => {
    const started = await startProcess([entry], { cwd: dir, env, readyMessage });
    processes.push({ name: `${name}-${processes.length}`, process: started });
    return started;
  };
  const startWorker = () => start('worker', 'dist/worker/main.js', 'worker running');
  const startApi = () => start('api', 'dist/api/main.js', 'API listening');

  async function call<T = Record<string, any>>(method: string, route: string, token: string, body?: unknown): Promise<T> {
    const res = await fetch(`${apiUrl}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${await res.text()}`);
    return (res.status === 204 ? {} : await res.json()) as T;
  }

  /**
   * A run's result, waiting first for it to exist (an event run is started by the API's intake
   * relay after the 202) and through connection errors while the server restarts, up to `ms`.
   */
  async function resultOf<T = Record<string, any>>(workflowId: string, ms = RUN_DEADLINE_MS): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        return (await temporal!.withDeadline(deadline, () => temporal!.workflow.getHandle(workflowId).result())) as T;
      } catch (error) {
        if (error instanceof WorkflowFailedError) throw error;
        if (Date.now() > deadline) throw new Error(`run ${workflowId}: no result within ${ms / 1000} s (last: ${(error as Error).message})`);
        await new Promise((resolve) => setTimeout(resolve, error instanceof WorkflowNotFoundError ? 100 : 500));
      }
    }
  }

  /** A push to the provider's attached repository, each with a body of its own (the same body again is a replay). */
  function push(provider: Provider): Sent {
    const repo = repos[provider];
    const base = withRepository(provider, fixture(PUSH_FIXTURES[provider]), {
      externalId: repo.externalId,
      fullName: repo.fullName,
      ...(provider === 'github' ? { installationId: String(installationId) } : {}),
      ...(provider === 'gitlab' ? { instanceUrl: gitlab.url } : {}),
    });
    const hook = hooks[provider];
    const d = delivery(provider, { ...base, cluster_push: randomUUID() }, { deliveryId: randomUUID(), secret: hook.secret, ...(hook.basicAuthUser ? { basicAuthUser: hook.basicAuthUser } : {}), url: hook.url });
    return { delivery: d, url: hook.url };
  }

  /** Sends until the receiver answers 202, as a provider retries a delivery that failed; returns the failed attempts. */
  async function deliver(sent: Sent, ms = 120_000): Promise<number> {
    const deadline = Date.now() + ms;
    let failures = 0;
    for (;;) {
      const answer = await fetch(sent.url, { method: 'POST', headers: sent.delivery.headers, body: sent.delivery.body, signal: AbortSignal.timeout(10_000) })
        .then(async (res) => ({ status: res.status, text: await res.text() }))
        // Refused, reset or timed out: the receiver is down or restarting.
        .catch(() => undefined);
      if (answer?.status === 202) {
        sent.workflowId = (JSON.parse(answer.text) as { workflowId: string }).workflowId;
        acknowledged.set(sent.delivery.deliveryId, sent);
        return failures;
      }
      // A provider retries 5xx and no answer; anything else is the receiver refusing the delivery.
      if (answer && answer.status < 500) throw new Error(`${sent.delivery.provider} delivery ${sent.delivery.deliveryId}: ${answer.status} ${answer.text}`);
      failures++;
      failedAttempts++;
      if (Date.now() > deadline) throw new Error(`${sent.delivery.provider} delivery ${sent.delivery.deliveryId}: not acknowledged within ${ms / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  const eventsOf = (sent: Sent) =>
    db.selectFrom('events').select(['id']).where('provider', '=', sent.delivery.provider).where('delivery_id', '=', sent.delivery.deliveryId).execute();

  /** Each delivery's run completed having recorded it, its event is in the database once and reached the subscriber (signed). */
  async function expectRecordedAndReceived(sent: Sent[]) {
    const results = await Promise.all(sent.map((s) => resultOf<{ recorded: number }>(s.workflowId!)));
    expect(results.map((r) => r.recorded)).toEqual(sent.map(() => 1));
    for (const s of sent) {
      const events = await eventsOf(s);
      expect(events, `${s.delivery.provider} delivery ${s.delivery.deliveryId}`).toHaveLength(1);
      const received = subscriber.received.filter((e) => e.body.deliveryId === s.delivery.deliveryId);
      expect(received.length, `${s.delivery.provider} delivery ${s.delivery.deliveryId} at the subscriber`).toBeGreaterThanOrEqual(1);
      // A dispatch repeated across a crash carries the same event id (the subscriber's key to drop it).
      expect(new Set(received.map((e) => e.body.id))).toEqual(new Set([events[0]!.id]));
      expect(received.every((e) => e.signatureValid)).toBe(true);
    }
  }

  /** What a stalled step needs to be told apart: the intake backlog, unfinished runs, the processes' and the server's last lines. */
  async function diagnose(): Promise<void> {
    failed = true;
    try {
      const pending = await db.selectFrom('webhook_deliveries').select(['provider', 'delivery_id', 'attempts', 'last_error', 'next_attempt_at', 'received_at']).where('started_at', 'is', null).execute();
      log(`intake backlog: ${pending.length} rows not started ${JSON.stringify(pending.slice(0, 10))}`);
      for (const s of [...acknowledged.values()].filter((s) => s.workflowId).slice(-40)) {
        const description = await temporal!.workflow.getHandle(s.workflowId!).describe().catch((error: Error) => ({ status: { name: `describe failed: ${error.message}` }, raw: undefined }));
        if (description.status.name === 'COMPLETED') continue;
        const info = (description as { raw?: { pendingActivities?: unknown[]; pendingWorkflowTask?: unknown } }).raw;
        log(`run ${s.workflowId}: ${description.status.name} pending activities ${JSON.stringify(info?.pendingActivities ?? [])} workflow task ${JSON.stringify(info?.pendingWorkflowTask ?? null)}`);
      }
    } catch (error) {
      log(`diagnosis failed: ${(error as Error).message}`);
    }
    for (const { name, process } of processes) {
      writeFileSync(path.join(dir, `${name}.log`), process.output());
      log(`${name} (pid ${process.child.pid}, exit ${process.child.exitCode ?? process.child.signalCode ?? 'running'}): last lines\n${process.output().split('\n').slice(-15).join('\n')}`);
    }
    if (cluster) log(`temporal server: last lines\n${readFileSync(cluster.logFile, 'utf8').split('\n').slice(-20).join('\n')}`);
    log(`everything is kept in ${dir}`);
  }

  beforeAll(async () => {
    if (!binaries) {
      throw new Error(
        `the cluster suite needs ${missing.join(', ')}: GOBIN=~/.cache/forgelink/bin CGO_ENABLED=0 go install ${TEMPORAL_SERVER_MODULES.join(' ')} (and npm run temporal:ensure for the CLI)`,
      );
    }
    try {
      postgres = await testPostgres(log);
      admin = createDb(postgres.adminUrl, { max: 1 });
      database = `forgelink_cluster_${process.pid}_${randomBytes(4).toString('hex')}`;
      await sql`create database ${sql.id(database)}`.execute(admin);
      const databaseUrl = Object.assign(new URL(postgres.adminUrl), { pathname: `/${database}` }).toString();
      db = createDb(databaseUrl, { max: 4 });
      await migrateToLatest(db);

      const building = (async () => {
        // What production runs: the build's JavaScript and workflow bundle (its dependencies are the
        // checkout's; test/e2e/built-dist.test.ts proves a production-only install). FORGELINK_CLUSTER_DIST
        // names a build made before, to skip the build while working on the suite.
        const prebuilt = process.env.FORGELINK_CLUSTER_DIST;
        if (prebuilt) cpSync(path.resolve(prebuilt), path.join(dir, 'dist'), { recursive: true });
        else await execFileAsync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts/build.ts'), path.join(dir, 'dist')], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
        copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
        symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
        log(prebuilt ? `forgelink from ${prebuilt}` : 'forgelink built into dist/');
      })();
      // Awaited below, once the cluster is up; a failure before that must not go unhandled.
      building.catch(() => {});
      cluster = await startTemporalCluster({ binaries, dir: path.join(dir, 'temporal'), adminUrl: postgres.adminUrl, searchAttributes: SEARCH_ATTRIBUTES.map((k) => ({ name: k.name, type: k.type === 'KEYWORD_LIST' ? 'KeywordList' : 'Keyword' })), log });
      temporal = new Client({ connection: await cluster.connect(), namespace: cluster.namespace });

      [github, gitlab, bitbucket, azure, subscriber] = await Promise.all([startFakeGithub(), startFakeGitlab(), startFakeBitbucket(), startFakeAzureDevOps({ organization: 'cluster' }), startFakeSubscriber()]);
      azureProxy = await startFlakyProxy(azure.url);
      subscriberProxy = await startFlakyProxy(subscriber.url);

      const written = writeProcessConfig(path.join(dir, 'forgelink.yml'), {
        port: await freeLoopbackPort(),
        database: { url: databaseUrl },
        temporal: { address: cluster.address, namespace: cluster.namespace, taskQueue: `cluster-${randomUUID()}`, tls: cluster.tls },
        auth: { adminToken },
        encryption: { key: randomBytes(32).toString('base64'), keyId: 'cluster' },
        gitProviders: {
          github: { enabled: true, appId: github.appId, privateKey: github.privateKeyPem, webhookSecret: githubWebhookSecret, baseUrl: github.url },
          gitlab: { enabled: true },
          bitbucket: { enabled: true },
          azureDevOps: { enabled: true },
        },
        security: { allowHttpHosts: ['127.0.0.1'], allowPrivateNetworks: ['127.0.0.1'] },
        // A SIGTERM at the end need not wait for load balancers.
        shutdown: { drainDelaySeconds: 0, workerGraceSeconds: 5, workerForceSeconds: 10 },
      });
      apiUrl = written.apiUrl;
      env = { ...written.env, NODE_ENV: 'production' };
      await building;
      workers.push(...(await Promise.all([startWorker(), startWorker()])));
      api = await startApi();
      log(`API ${apiUrl} (pid ${api.child.pid}), workers pids ${workers.map((w) => w.child.pid).join(', ')}`);
    } catch (error) {
      await diagnose();
      throw error;
    }
  }, 900_000);

  afterAll(async () => {
    await killRemaining(processes.map(({ process }) => process));
    await temporal?.connection.close().catch(() => {});
    await cluster?.stop().catch((error: Error) => log(`stopping the cluster: ${error.message}`));
    await Promise.all([github, gitlab, bitbucket, azure, subscriber, azureProxy, subscriberProxy].map((f) => f?.close()));
    await db?.destroy();
    if (admin && database) await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    await admin?.destroy();
    await postgres?.stop();
    if (!failed) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('1. connects GitHub, GitLab, Bitbucket Data Center and Azure DevOps, and refreshes the repository cache', async () => {
    onTestFailed(diagnose);
    await call('POST', '/api/v1/orgs', adminToken, { slug: org.slug, name: 'Cluster' });
    org.token = (await call('POST', `/api/v1/orgs/${org.slug}/tokens`, adminToken, { name: 'cluster' })).token;
    const providerToken = `cluster-${randomUUID()}`;
    const installation = github.addInstallation({ account: { login: 'cluster-org', type: 'Organization' } });
    installationId = installation.id;
    github.addRepository(installation.id, { fullName: 'cluster-org/app' });
    gitlab.addToken({ token: providerToken, username: 'cluster', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.addProject({ pathWithNamespace: 'cluster/app', accessLevel: 40 });
    bitbucket.addToken({ token: providerToken, username: 'cluster', projectPermission: 'PROJECT_READ', repoPermission: 'REPO_ADMIN' });
    bitbucket.addProject({ key: 'CL', name: 'Cluster' });
    bitbucket.addRepository({ projectKey: 'CL', slug: 'app' });
    azure.addPat({ pat: providerToken, displayName: 'Cluster', canManageHooks: true });
    azure.addProject({ name: 'Cluster' });
    azure.addRepository({ projectName: 'Cluster', name: 'app' });

    const bodies: Record<Provider, [Record<string, unknown>, string]> = {
      // A GitHub installation is bound by the operator (admin token); the others by the organization.
      github: [{ installationId: installation.id }, adminToken],
      gitlab: [{ baseUrl: gitlab.url, token: providerToken }, org.token],
      bitbucket: [{ baseUrl: bitbucket.url, token: providerToken }, org.token],
      // Through the proxy that holds a subscription's create in step 2.
      'azure-devops': [{ organizationUrl: `${azureProxy.url}${new URL(azure.url).pathname}`, token: providerToken }, org.token],
    };
    const connected = await Promise.all(
      PROVIDERS.map(async (provider) => {
        const [body, token] = bodies[provider];
        const { workflowId } = await call('POST', `/api/v1/orgs/${org.slug}/connections`, token, { provider, ...body });
        return resultOf(workflowId);
      }),
    );
    expect(connected.map((c) => c.status)).toEqual(PROVIDERS.map(() => 'active'));

    await resultOf((await call('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, org.token)).workflowId);
    const { items } = await call<{ items: (Repo & { provider: Provider })[] }>('GET', `/api/v1/orgs/${org.slug}/repositories?limit=100`, org.token);
    expect(items.map((r) => r.provider).sort()).toEqual([...PROVIDERS].sort());
    for (const item of items) repos[item.provider] = item;
  });

  it('2. attaches Azure DevOps while the worker creating its second subscription is SIGKILLed: the other worker finishes, three subscriptions, none orphaned; then the other providers', async () => {
    onTestFailed(diagnose);
    const repo = repos['azure-devops'];
    const hold = manualHold();
    let creates = 0;
    azureProxy.fault = (request) => {
      if (request.method !== 'POST' || !new URL(request.url, 'http://proxy').pathname.endsWith('/_apis/hooks/subscriptions')) return undefined;
      return ++creates === 2 ? hold.fault : undefined;
    };
    const { workflowId } = await call('PUT', `/api/v1/orgs/${org.slug}/repositories/${repo.id}/attachment`, org.token);
    // The provider has made the subscription; its answer is held. Once the other creates are
    // answered, the one ensureHook still running is the held one: kill the worker that runs it. A
    // new attach ensures its hooks inside its workflow task (local activities): that worker is the
    // one that started the run's current workflow task. One refused admission (a busy worker) runs
    // as an activity, named with its worker among the run's pending activities.
    await hold.held;
    let pid = 0;
    await until('the held create as the only running ensureHook, and its worker', 60_000, async () => {
      const handle = temporal!.workflow.getHandle(workflowId);
      const answered = azureProxy.requests.filter((r) => r.method === 'POST' && r.url.includes('/_apis/hooks/subscriptions?')).length;
      if (answered < 3) return false;
      const { raw } = await handle.describe();
      const running = (raw.pendingActivities ?? []).filter((a) => a.activityType?.name === 'ensureHook' && a.lastWorkerIdentity && a.lastStartedTime);
      if (running.length > 1) return false;
      const identity =
        running[0]?.lastWorkerIdentity ??
        ((await handle.fetchHistory()).events ?? []).filter((e) => e.workflowTaskStartedEventAttributes).at(-1)?.workflowTaskStartedEventAttributes?.identity;
      if (!identity) return false;
      pid = Number(identity.split('@')[0]);
      return true;
    });
    const victim = workers.find((w) => w.child.pid === pid);
    expect(victim, `the worker ${pid} runs the held create`).toBeDefined();
    victim!.child.kill('SIGKILL');
    await victim!.exited;
    hold.release('drop');
    log(`worker ${pid} SIGKILLed with the second subscription's create held at the provider`);

    const result = await resultOf(workflowId);
    expect(result).toMatchObject({ hookIds: expect.any(Array) });
    // The killed worker held the step: its workflow task timed out (a local step), or the step's
    // activity was tried again (a step refused admission), before the other worker finished.
    const { events } = await temporal!.workflow.getHandle(workflowId).fetchHistory();
    expect((events ?? []).some((e) => e.workflowTaskTimedOutEventAttributes || (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1)).toBe(true);
    const subscriptions = azure.subscriptions().filter((s) => s.publisherInputs.repository === repo.externalId);
    // Exactly the hook set: one subscription per event type, none twice (the held one adopted, not made again).
    expect(subscriptions.map((s) => s.eventType).sort()).toEqual(['git.pullrequest.created', 'git.pullrequest.updated', 'git.push']);
    const attachment = await call<{ status: string; hooks: { providerHookId: string }[] }>('GET', `/api/v1/orgs/${org.slug}/repositories/${repo.id}/attachment`, org.token);
    expect(attachment.status).toBe('attached');
    // No orphan: every subscription at the provider is recorded (a detach will remove it), and only those.
    expect(attachment.hooks.map((h) => h.providerHookId).sort()).toEqual(subscriptions.map((s) => s.id).sort());
    azureProxy.fault = () => undefined;

    // Two workers again, then the other providers at once.
    workers.splice(workers.indexOf(victim!), 1, await startWorker());
    const others = PROVIDERS.filter((p) => p !== 'azure-devops');
    const attached = await Promise.all(
      others.map(async (provider) => resultOf((await call('PUT', `/api/v1/orgs/${org.slug}/repositories/${repos[provider].id}/attachment`, org.token)).workflowId)),
    );
    expect(attached).toHaveLength(others.length);
    const gitlabHooks = gitlab.hooks(Number(repos.gitlab.externalId));
    const [bbProject, bbSlug] = repos.bitbucket.fullName.split('/') as [string, string];
    const bitbucketHooks = bitbucket.webhooks(bbProject, bbSlug);
    expect(gitlabHooks).toHaveLength(1);
    expect(bitbucketHooks).toHaveLength(1);
    const push = subscriptions.find((s) => s.eventType === 'git.push')!;
    hooks.github = { url: `${apiUrl}${receiverPath('github')}`, secret: githubWebhookSecret };
    hooks.gitlab = { url: gitlabHooks[0]!.url, secret: gitlabHooks[0]!.token! };
    hooks.bitbucket = { url: bitbucketHooks[0]!.url, secret: bitbucketHooks[0]!.configuration.secret! };
    hooks['azure-devops'] = { url: push.consumerInputs.url!, secret: push.consumerInputs.basicAuthPassword!, basicAuthUser: push.consumerInputs.basicAuthUsername! };
  });

  it('3. turns signed deliveries of every provider into events the subscriber receives', async () => {
    onTestFailed(diagnose);
    const { secret } = await call('POST', `/api/v1/orgs/${org.slug}/subscribers`, org.token, { url: `${subscriberProxy.url}/events` });
    subscriber.verifyWith(secret);
    const sent = Array.from({ length: DELIVERIES }, (_, i) => push(PROVIDERS[i % PROVIDERS.length]!));
    const failures = await Promise.all(sent.map((s) => deliver(s, 30_000)));
    expect(failures).toEqual(sent.map(() => 0));
    await expectRecordedAndReceived(sent);
  });

  it('4. loses nothing when the Temporal server is SIGKILLed and started again while a subscriber call is held and deliveries arrive', async () => {
    onTestFailed(diagnose);
    // A dispatch caught in flight: the subscriber has the event, its answer is held across the restart.
    const hold = manualHold();
    let held = false;
    subscriberProxy.fault = () => (held ? undefined : ((held = true), hold.fault));
    const first = push('gitlab');
    expect(await deliver(first, 30_000)).toBe(0);
    await hold.held;

    const sent: Sent[] = [first];
    let sending = true;
    // A long outage is sent through at a slower pace, so that it adds about DURING_OUTAGE deliveries.
    let pauseMs = 100;
    const sender = (async () => {
      for (let i = 0; sending; i++) {
        const s = push(PROVIDERS[i % PROVIDERS.length]!);
        sent.push(s);
        // The receiver acknowledges once stored, whether Temporal answers or not.
        expect(await deliver(s, 10_000)).toBe(0);
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
      }
    })();
    const before = sent.length;
    await whileSending(sender, 'deliveries before the crash', () => sent.length >= before + DURING_OUTAGE / 2);
    await cluster!.kill();
    const killedAt = new Date();
    log('temporal server SIGKILLed');
    const atCrash = sent.length;
    pauseMs = Math.max(100, OUTAGE_MS / DURING_OUTAGE);
    await whileSending(sender, 'deliveries while the server is down', () => sent.length >= atCrash + DURING_OUTAGE && Date.now() - killedAt.getTime() >= OUTAGE_MS, OUTAGE_MS + 90_000);
    pauseMs = 100;
    await cluster!.start();
    const restartedAt = new Date();
    log(`temporal server back after ${((restartedAt.getTime() - killedAt.getTime()) / 1000).toFixed(1)} s down`);
    hold.release('answer');
    if (OUTAGE_MS > 0) {
      // The relay reaches the server again promptly: the first delivery stored during the outage starts within the bound.
      const storedDuringOutage = () =>
        db.selectFrom('webhook_deliveries').select((eb) => eb.fn.min('started_at').as('firstStart')).where('received_at', '>', killedAt).where('received_at', '<', restartedAt).where('started_at', 'is not', null).executeTakeFirst();
      await until('a delivery stored during the outage started', FIRST_START_AFTER_OUTAGE_MS + 30_000, async () => Boolean((await storedDuringOutage())?.firstStart));
      const firstStart = new Date((await storedDuringOutage())!.firstStart as Date);
      const afterMs = firstStart.getTime() - restartedAt.getTime();
      log(`first start of a delivery stored during the outage: ${(afterMs / 1000).toFixed(1)} s after the server's return`);
      expect(afterMs).toBeLessThanOrEqual(FIRST_START_AFTER_OUTAGE_MS);
    }
    const atRestart = sent.length;
    await whileSending(sender, 'deliveries after the restart', () => sent.length >= atRestart + DURING_OUTAGE);
    sending = false;
    await sender;
    subscriberProxy.fault = () => undefined;
    log(`${sent.length} deliveries: ${atCrash - before} before the crash, ${atRestart - atCrash} while the server was down, ${sent.length - atRestart} after`);
    await expectRecordedAndReceived(sent);
  });

  it('5. records every acknowledged delivery exactly once when the API is SIGKILLed while deliveries arrive and started again', async () => {
    onTestFailed(diagnose);
    const sent: Sent[] = [];
    let sending = true;
    const failedBefore = failedAttempts;
    // Four providers sending side by side, each retrying a delivery until it is acknowledged.
    const senders = Promise.all(
      PROVIDERS.map(async (provider) => {
        while (sending) {
          const s = push(provider);
          sent.push(s);
          await deliver(s);
        }
      }),
    );
    await whileSending(senders, 'deliveries before the API is killed', () => acknowledgedOf(sent) >= DURING_OUTAGE);
    api.child.kill('SIGKILL');
    await api.exited;
    log(`API SIGKILLed after ${acknowledgedOf(sent)} acknowledged deliveries`);
    await whileSending(senders, 'senders failing against the dead API', () => failedAttempts > failedBefore);
    api = await startApi();
    const atRestart = acknowledgedOf(sent);
    await whileSending(senders, 'deliveries after the API restart', () => acknowledgedOf(sent) >= atRestart + DURING_OUTAGE);
    sending = false;
    await senders;
    log(`${sent.length} deliveries, ${failedAttempts - failedBefore} attempts failed against the dead API and were retried`);
    expect(sent.every((s) => acknowledged.has(s.delivery.deliveryId))).toBe(true);
    await expectRecordedAndReceived(sent);
  });

  it('6. detaches every repository: the hooks are gone at every provider', async () => {
    onTestFailed(diagnose);
    const detached = await Promise.all(PROVIDERS.map(async (provider) => resultOf((await call('DELETE', `/api/v1/orgs/${org.slug}/repositories/${repos[provider].id}/attachment`, org.token)).workflowId)));
    expect(detached).toHaveLength(PROVIDERS.length);
    expect(gitlab.hooks(Number(repos.gitlab.externalId))).toEqual([]);
    const [bbProject, bbSlug] = repos.bitbucket.fullName.split('/') as [string, string];
    expect(bitbucket.webhooks(bbProject, bbSlug)).toEqual([]);
    expect(azure.subscriptions().filter((s) => s.publisherInputs.repository === repos['azure-devops'].externalId)).toEqual([]);
    for (const provider of PROVIDERS) {
      const attachment = await call<{ status: string }>('GET', `/api/v1/orgs/${org.slug}/repositories/${repos[provider].id}/attachment`, org.token);
      expect(attachment.status, provider).toBe('detached');
    }
  });

  it('7. refreshes: repositories added at the providers since appear in the cache', async () => {
    onTestFailed(diagnose);
    github.addRepository(installationId, { fullName: 'cluster-org/later' });
    gitlab.addProject({ pathWithNamespace: 'cluster/later', accessLevel: 40 });
    bitbucket.addRepository({ projectKey: 'CL', slug: 'later' });
    azure.addRepository({ projectName: 'Cluster', name: 'later' });
    await resultOf((await call('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, org.token)).workflowId);
    const { items } = await call<{ items: (Repo & { provider: Provider })[] }>('GET', `/api/v1/orgs/${org.slug}/repositories?limit=100`, org.token);
    expect(items.filter((r) => r.fullName.endsWith('later')).map((r) => r.provider).sort()).toEqual([...PROVIDERS].sort());
    // Every process still up, none left behind by the crashes but the ones killed on purpose.
    for (const p of [api, ...workers]) expect(p.child.exitCode ?? p.child.signalCode).toBeNull();
  });

  /** Waits for `condition` while `senders` run; a sender's failure ends the wait at once. */
  function whileSending(senders: Promise<unknown>, what: string, condition: () => boolean, ms = 90_000): Promise<void> {
    return Promise.race([until(what, ms, async () => condition()), senders.then(() => Promise.reject(new Error(`the senders stopped before: ${what}`)))]);
  }

  function acknowledgedOf(sent: Sent[]): number {
    return sent.filter((s) => acknowledged.has(s.delivery.deliveryId)).length;
  }
});
