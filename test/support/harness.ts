import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { Client, Connection } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { inject } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { createProviderFactory } from '../../activities/providers/index.ts';
import type { ActivitySettings } from '../../activities/index.ts';
import type { Outbound } from '../../activities/outbound.ts';
import type { ProviderFactory } from '../../activities/providers/port.ts';
import { createApp } from '../../api/app.ts';
import { createIntakeSignal, startIntakeRelay } from '../../api/intake-relay.ts';
import type { ApiDeps } from '../../api/context.ts';
import { activityCallsPerOrganization, activityCallsPerWorker, inlineCallsPerWorker, type WorkerSizing } from '../../lib/config.ts';
import type { EncryptionKeys } from '../../lib/crypto.ts';
import { createDb, type Db } from '../../lib/db/index.ts';
import { createLogger } from '../../lib/logger.ts';
import { retryWithinDeadline } from '../../lib/temporal/connection.ts';
import type { WorkerMetrics } from '../../lib/metrics.ts';
import type { Tracing } from '../../lib/tracing.ts';
import { createWorker } from '../../worker/create-worker.ts';
import { assertHistoriesBounded } from './histories.ts';
import { TEST_ADDRESS_POLICY, testOutbound } from './outbound.ts';

export interface Harness {
  db: Db;
  client: Client;
  app: ReturnType<typeof createApp>;
  taskQueue: string;
  keys: EncryptionKeys;
  /** The worker's activity settings (a worker process of a test's own uses them too). */
  settings: ActivitySettings;
  adminToken: string;
  /** Every log line the API and the worker wrote during the test. */
  logs: string[];
  worker: Worker;
  /** Stops the worker (as a crash would), if one runs, and starts a fresh one on the same task queue. */
  restartWorker(): Promise<void>;
  /** Stops the worker, if one runs, and starts none: the task queue's work waits for restartWorker. */
  stopWorker(): Promise<void>;
  request(method: string, path: string, options?: { token?: string; body?: unknown; headers?: Record<string, string> }): Promise<Response>;
  /** Another API app on the same dependencies except `overrides` (e.g. a Temporal client that refuses every start). */
  appWith(overrides: Partial<ApiDeps>): ReturnType<typeof createApp>;
  /** What the API app runs on (an intake relay of a test's own takes it). */
  apiDeps: ApiDeps;
  /** Resolves once the harness's intake relay has started the event run `workflowId` (stored deliveries start asynchronously). */
  relayed(workflowId: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * A real worker (on a task queue of its own) and the real API app, wired to the run's Temporal dev
 * server and database. Providers default to the production factory pointed at whatever base URLs
 * the test stores on its connections (the fake servers).
 */
export const TEST_WEBHOOK_SECRETS = {
  github: 'gh-webhook-secret-current',
  gitlab: 'gl-webhook-token-current',
  bitbucket: 'bb-webhook-secret-current',
  azureDevOps: { user: 'forgelink', pass: 'ado-basic-pass-current' },
  previous: 'previous-webhook-secret',
};
export const TEST_PUBLIC_URL = 'https://forgelink.test';

/**
 * Writes a config file for a worker (or API) process on the harness's database, Temporal, task
 * queue, admin token and encryption key; `overrides` replace whole top-level keys.
 */
export function writeHarnessConfig(h: Pick<Harness, 'taskQueue' | 'keys' | 'adminToken'>, file: string, overrides: Record<string, unknown> = {}): string {
  writeFileSync(
    file,
    toYaml({
      publicUrl: TEST_PUBLIC_URL,
      database: { url: inject('databaseUrl') },
      temporal: { address: inject('temporalAddress'), namespace: 'default', taskQueue: h.taskQueue },
      auth: { adminToken: h.adminToken },
      encryption: { key: h.keys.current.key.toString('base64'), keyId: h.keys.current.id },
      ...overrides,
    }),
  );
  return file;
}

export interface HarnessOptions {
  providers?: ProviderFactory;
  settings?: Partial<ActivitySettings>;
  /** The worker's guarded HTTP layer (default: one that reaches the fakes on 127.0.0.1). */
  outbound?: Outbound;
  /** Resolves host names for the API's URL checks (default: every name is 127.0.0.1). */
  resolveHost?: (host: string) => Promise<string[]>;
  /** The (fake) GitHub App: its REST URL (also its web URL, for the OAuth code exchange) and credentials. */
  github?: { url: string; appId: string; privateKeyPem: string; appName?: string; clientId?: string; clientSecret?: string };
  /** webhooks.maxBodyBytes of the API (default 1 MiB). */
  maxBodyBytes?: number;
  /** The Temporal server everything connects to, when not the run's dev server (a test that stops its own). */
  temporalAddress?: string;
  /** Where the API's Temporal client connects (lazily), when not to the run's dev server. */
  apiTemporalAddress?: string;
  /** Start no worker: the test runs its own (restartWorker starts the harness's). */
  withoutWorker?: boolean;
  /** Run no intake relay: the test starts its own (startIntakeRelay) to watch what it does. */
  withoutIntakeRelay?: boolean;
  /** OpenTelemetry on, as api/main.ts and worker/main.ts wire it (startTracing with a test's span processor). */
  tracing?: Tracing;
  /** The worker's cache and slots (the config's `worker` keys; default: the config's defaults). */
  sizing?: WorkerSizing;
  /** The worker's metrics (default: none), for a test that reads what its activities counted. */
  metrics?: WorkerMetrics;
  /** A database of the test's own (default: the run's), for a test whose runs read every organization's rows. */
  databaseUrl?: string;
  /** webhooks.acceptLegacyHooks (default off, as the config's): the receivers take the global secrets of TEST_WEBHOOK_SECRETS from legacy hooks. */
  acceptLegacyHooks?: boolean;
}

let runtimeInstalled = false;

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  if (!runtimeInstalled) {
    // Worker state changes at INFO would drown the test output.
    Runtime.install({ logger: new DefaultLogger('WARN') });
    runtimeInstalled = true;
  }
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger('test', 'debug', sink);
  const databaseUrl = options.databaseUrl ?? inject('databaseUrl');
  const db = createDb(databaseUrl, { max: 5 });
  const address = options.temporalAddress ?? inject('temporalAddress');
  const taskQueue = `test-${randomUUID()}`;
  const keys: EncryptionKeys = { current: { id: 'test', key: randomBytes(32) } };
  const adminToken = `admin-${randomBytes(24).toString('hex')}`;
  const connection = await Connection.connect({ address });
  const client = new Client({ connection, namespace: 'default', ...(options.tracing?.enabled ? { interceptors: { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } } : {}) });
  const nativeConnection = await NativeConnection.connect({ address });
  const workflowBundle = { code: readFileSync(inject('workflowBundlePath'), 'utf8') };
  const settings: ActivitySettings = {
    publicUrl: TEST_PUBLIC_URL,
    // As worker/main.ts does: the admission into workflow tasks follows the worker's slots.
    ...(options.sizing
      ? {
          inlineCallsPerWorker: inlineCallsPerWorker(options.sizing),
          inlineCallsPerOrganization: options.sizing.inlineCallsPerOrganization,
          activityCallsPerWorker: activityCallsPerWorker(options.sizing),
          activityCallsPerOrganization: activityCallsPerOrganization(options.sizing),
        }
      : {}),
    // As settingsFromConfig: the recording takes legacy deliveries (no connection) only during the window.
    legacyHookProviders: options.acceptLegacyHooks ? ['gitlab', 'bitbucket', 'azure-devops'] : [],
    ...options.settings,
  };
  const outbound = options.outbound ?? testOutbound;
  const github = options.github ? { github: { appId: options.github.appId, privateKey: options.github.privateKeyPem } } : {};
  const deps = { db, keys, providers: options.providers ?? createProviderFactory({ outbound, ...github }), outbound, logger, settings, ...(options.metrics ? { metrics: options.metrics } : {}) };

  const launch = async () => {
    const worker = await createWorker({ connection: nativeConnection, namespace: 'default', taskQueue, deps, workflowBundle, tracing: options.tracing, sizing: options.sizing });
    const running = worker.run();
    return { worker, running };
  };
  let current = options.withoutWorker ? undefined : await launch();
  const stopWorker = async () => {
    current?.worker.shutdown();
    await current?.running;
  };
  // As api/main.ts opens it: no retry past a request's deadline.
  const apiTemporal = options.apiTemporalAddress ? new Client({ connection: Connection.lazy({ address: options.apiTemporalAddress, interceptors: [retryWithinDeadline()] }), namespace: 'default' }) : client;

  const apiDeps: ApiDeps = {
    db,
    temporal: apiTemporal,
    outbound,
    keys,
    logger,
    tracing: options.tracing?.enabled,
    adminToken,
    taskQueue,
    namespace: 'default',
    temporalUiUrl: 'http://127.0.0.1:8233',
    ...TEST_ADDRESS_POLICY,
    resolveHost: options.resolveHost ?? (async () => ['127.0.0.1']),
    webhooks: {
      github: [TEST_WEBHOOK_SECRETS.github, TEST_WEBHOOK_SECRETS.previous],
      // What api/main.ts's webhookSecretsFromConfig gives: the legacy hooks' global secrets only during the window.
      ...(options.acceptLegacyHooks
        ? {
            gitlab: [TEST_WEBHOOK_SECRETS.gitlab, TEST_WEBHOOK_SECRETS.previous],
            bitbucket: [TEST_WEBHOOK_SECRETS.bitbucket, TEST_WEBHOOK_SECRETS.previous],
            azureDevOps: { user: TEST_WEBHOOK_SECRETS.azureDevOps.user, passwords: [TEST_WEBHOOK_SECRETS.azureDevOps.pass, TEST_WEBHOOK_SECRETS.previous] },
          }
        : { gitlab: [], bitbucket: [], azureDevOps: undefined }),
      maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024,
    },
    enabledProviders: ['github', 'gitlab', 'bitbucket', 'azure-devops'],
    githubApp: {
      appName: options.github?.appName ?? 'forgelink-test',
      webUrl: options.github?.url ?? 'https://github.test',
      clientId: options.github?.clientId,
      clientSecret: options.github?.clientSecret,
    },
    githubApiUrl: options.github?.url,
    intake: createIntakeSignal(),
  };
  const app = createApp(apiDeps);
  // As the API process does: starts the event runs of the deliveries the receivers store.
  const relay = options.withoutIntakeRelay ? undefined : startIntakeRelay(apiDeps, { databaseUrl, track: true });

  const harness: Harness = {
    db,
    client,
    app,
    taskQueue,
    keys,
    settings,
    adminToken,
    logs,
    get worker() {
      if (!current) throw new Error('the harness runs no worker');
      return current.worker;
    },
    async restartWorker() {
      await stopWorker();
      current = await launch();
    },
    async stopWorker() {
      await stopWorker();
      current = undefined;
    },
    async request(method, path, opts = {}) {
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      let body: string | undefined;
      if (opts.body !== undefined) {
        body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
        headers['content-type'] ??= 'application/json';
      }
      return app.request(path, { method, headers, body });
    },
    appWith: (overrides) => createApp({ ...apiDeps, ...overrides }),
    apiDeps,
    relayed(workflowId) {
      if (!relay) throw new Error('the harness runs no intake relay');
      return relay.whenStarted(workflowId);
    },
    async close() {
      await relay?.stop();
      // Every run this file's tests made, checked before the connections close (issue 17).
      const unbounded = await assertHistoriesBounded(client, taskQueue).then(
        () => undefined,
        (error: unknown) => error,
      );
      await stopWorker();
      if (apiTemporal !== client) await apiTemporal.connection.close();
      await nativeConnection.close();
      await connection.close();
      await db.destroy();
      if (unbounded) throw unbounded;
    },
  };
  return harness;
}

/** Creates an organization and an organization token through the API. */
export async function createOrgWithToken(h: Harness, slug = `org-${randomUUID().slice(0, 8)}`) {
  const created = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: `Org ${slug}` } });
  if (created.status !== 201) throw new Error(`create org: ${created.status} ${await created.text()}`);
  const org = (await created.json()) as { id: string; slug: string; name: string };
  const issued = await h.request('POST', `/api/v1/orgs/${slug}/tokens`, { token: h.adminToken });
  const { token } = (await issued.json()) as { token: string };
  return { org, token };
}

/** Waits for a workflow through Temporal itself (no polling of our own). */
export async function resultOf<T = unknown>(h: Harness, workflowId: string): Promise<T> {
  const handle = h.client.workflow.getHandle(workflowId);
  // An event run starts from the intake table after its delivery was acknowledged.
  if (workflowId.startsWith('event:')) await handle.describe().catch(() => h.relayed(workflowId));
  return handle.result() as Promise<T>;
}

/** The run's full history as JSON text, for secret checks. */
export async function historyText(h: Harness, workflowId: string): Promise<string> {
  const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
  return JSON.stringify(decodedBytes(history));
}

/**
 * The history with every payload's bytes as text. JSON.stringify alone would call the protobuf
 * messages' toJSON, which turns bytes into base64 before a replacer sees them: a secret inside a
 * payload would then never match.
 */
function decodedBytes(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map(decodedBytes);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decodedBytes(v)]));
  return value;
}
