import { createOutbound } from '../activities/outbound.ts';
import { createHostResolver } from '../lib/dns.ts';
import { setTimeout } from 'node:timers/promises';
import { serve } from '@hono/node-server';
import { Client, Connection } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import { legacyHookWindow, type Config, loadConfig } from '../lib/config.ts';
import { keysFromConfig } from '../lib/crypto.ts';
import { createDb, deadlinesFromConfig, type Db } from '../lib/db/index.ts';
import { createLogger, type Logger } from '../lib/logger.ts';
import { intakeBacklog } from '../lib/db/repositories/deliveries.ts';
import { createApiMetrics, startMetricsServer } from '../lib/metrics.ts';
import { startTracing } from '../lib/tracing.ts';
import { clientConnectOptions, retryWithinDeadline } from '../lib/temporal/connection.ts';
import { createApp } from './app.ts';
import { createIntakeSignal } from './intake-relay.ts';
import { startIntakeRelayThread } from './intake-relay-thread.ts';
import { bodyPoolSizes, createBodyPool } from './webhooks/body-thread.ts';
import { ackTraceFromEnv, type AckTrace } from './ack-trace.ts';
import { noticeLegacyHooks } from './legacy-hooks.ts';
import type { ApiDeps, WebhookSecrets } from './context.ts';
import type { Provider } from '../lib/domain.ts';

/**
 * The whole request, body included, must arrive within this (Node's default, stated because the
 * receivers rely on it): a sender that stalls mid-body is cut off then, also while an early answer
 * waits for the rest of its body (api/unread-body.ts).
 */
const REQUEST_TIMEOUT_MS = 300_000;

/** The API's composition root. */
export async function runApi(config: Config, options: { address?: string; databaseUrl?: string; temporalUiUrl?: string } = {}) {
  const logger = createLogger('api', config.logging.level);
  const databaseUrl = options.databaseUrl ?? config.database.url;
  if (!databaseUrl) throw new Error('database.url is required to run the API on its own (npm start provides an embedded one)');
  const ackTrace = ackTraceFromEnv();
  // Every statement the API runs for a request (receivers, /api/v1, /readyz, metrics' backlog) is bounded: 503, not a hang.
  const db = createDb(databaseUrl, { logger, deadlines: deadlinesFromConfig(config.database), ...(ackTrace ? { onCheckout: ackTrace.checkedOut } : {}) });
  const temporalAddress = options.address ?? config.temporal.address ?? '127.0.0.1:7233';
  // Requests give their calls a deadline (api/temporal-deadline.ts); no retry goes past it.
  const connection = await Connection.connect({ ...clientConnectOptions(config.temporal, temporalAddress), interceptors: [retryWithinDeadline()] });
  const tracing = startTracing(config.tracing, { serviceName: 'forgelink-api' });
  // With tracing on, a workflow start carries the request's trace (a delivery's: through its stored row) into the run.
  const temporal = new Client({ connection, namespace: config.temporal.namespace, ...(tracing.enabled ? { interceptors: { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } } : {}) });
  let draining = false;
  const deps = apiDeps(config, { db, temporal, logger, tracing: tracing.enabled, draining: () => draining, ...(ackTrace ? { ackTrace } : {}), ...(options.temporalUiUrl ? { temporalUiUrl: options.temporalUiUrl } : {}) });
  const { metrics } = deps;
  await noticeLegacyHooks({ db, logger, window: legacyHookWindow(config) });
  const ownMetricsPort = metrics !== undefined && config.metrics.api.port !== undefined;
  const app = createApp(deps);
  // Starts the event runs of the deliveries the receivers store (several API replicas share the
  // work), on a thread of its own: its starts' CPU stays off the event loop that acknowledges.
  const relay = startIntakeRelayThread(deps, { temporal: config.temporal, address: temporalAddress, databaseUrl, serverDeadlines: config.database.serverDeadlines, tracing: config.tracing, logLevel: config.logging.level });
  await relay.ready;
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const fetch: typeof app.fetch = ackTrace ? (request, env, ...rest) => (ackTrace.arrived((env as { incoming: object }).incoming), app.fetch(request, env, ...rest)) : app.fetch;
    const s = serve({ fetch, hostname: config.api.host, port: config.api.port, serverOptions: { requestTimeout: REQUEST_TIMEOUT_MS } }, () => resolve(s));
  });
  const url = `http://${config.api.host}:${config.api.port}`;
  logger.info({ url }, 'API listening');
  const metricsServer =
    metrics && ownMetricsPort
      ? await startMetricsServer({ host: config.metrics.host ?? config.api.host, port: config.metrics.api.port!, path: config.metrics.api.path, registry: metrics.registry, logger })
      : undefined;
  if (metrics) logger.info({ url: metricsServer?.url ?? `${url}${config.metrics.api.path}` }, 'API metrics served');
  const { drainDelaySeconds, requestTimeoutSeconds } = config.shutdown;
  return {
    url,
    /** Where the API's metrics are served (undefined with metrics.enabled false). */
    metricsUrl: metricsServer?.url ?? (metrics ? `${url}${config.metrics.api.path}` : undefined),
    /** /readyz answers 503 for shutdown.drainDelaySeconds, while every request is still served. */
    async drain() {
      draining = true;
      logger.info({ drainDelaySeconds }, 'draining: /readyz answers 503');
      await setTimeout(drainDelaySeconds * 1000);
    },
    /** Stops accepting; in-flight requests get shutdown.requestTimeoutSeconds, then their connections are cut. */
    async shutdown() {
      logger.info({ requestTimeoutSeconds }, 'stopping: no new connections, requests in flight finish');
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      const cut = setTimeout(requestTimeoutSeconds * 1000, undefined, { ref: false }).then(() => {
        if ('closeAllConnections' in server) server.closeAllConnections();
      });
      await Promise.race([closed, cut]);
      // No request is left to read a body for: the threads end (a job still running is given up).
      await deps.webhooks.bodyPool?.close();
      await metricsServer?.close();
      await relay.stop();
      await connection.close();
      await db.destroy();
      await tracing.shutdown();
      logger.info('API stopped');
    },
  };
}

/**
 * The API's dependencies, from its config and what the caller opened (pool, Temporal client,
 * logger): its metrics, intake signal, guarded HTTP layer, keys and settings. runApi serves the app
 * with them; bench/ack-cpu-server.ts builds them here too, so it measures the app as it runs.
 */
export function apiDeps(
  config: Config,
  opened: { db: Db; temporal: Client; logger: Logger; tracing: boolean; draining: () => boolean; ackTrace?: AckTrace; temporalUiUrl?: string },
): ApiDeps {
  const { db, logger } = opened;
  // One resolver for the URL checks and the API's own provider call (lib/dns.ts).
  const resolveHost = createHostResolver(config.security);
  const metrics = config.metrics.enabled ? createApiMetrics({ backlog: () => intakeBacklog(db), processMetrics: true, logger }) : undefined;
  return {
    // Without a port of their own, the metrics are served on the API's listener.
    ...(metrics ? { metrics, ...(config.metrics.api.port !== undefined ? {} : { metricsPath: config.metrics.api.path }) } : {}),
    draining: opened.draining,
    intake: createIntakeSignal(),
    ...(opened.ackTrace ? { ackTrace: opened.ackTrace } : {}),
    db,
    temporal: opened.temporal,
    outbound: createOutbound({ ...config.security, logger, resolve: resolveHost }),
    keys: keysFromConfig(config.encryption),
    logger,
    accessLogLevel: config.logging.accessLogLevel,
    tracing: opened.tracing,
    adminToken: config.auth.adminToken,
    taskQueue: config.temporal.taskQueue,
    namespace: config.temporal.namespace,
    temporalDeadlineMs: config.temporal.requestDeadlineSeconds * 1000,
    temporalUiUrl: opened.temporalUiUrl ?? config.temporal.uiUrl ?? 'http://127.0.0.1:8233',
    allowHttpHosts: config.security.allowHttpHosts,
    allowPrivateNetworks: config.security.allowPrivateNetworks,
    webhooks: webhookSecretsFromConfig(config),
    maxBodyBytes: config.api.maxBodyBytes,
    enabledProviders: enabledProviders(config),
    githubApp: githubAppFromConfig(config),
    publicUrl: config.publicUrl,
    githubApiUrl: config.gitProviders.github.baseUrl.replace(/\/+$/, ''),
    resolveHost,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const handle = await runApi(loadConfig());
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => void handle.drain().then(() => handle.shutdown()));
  }
}

export function webhookSecretsFromConfig(config: Config): WebhookSecrets {
  const p = config.gitProviders;
  const list = (...values: (string | undefined)[]) => values.filter((v): v is string => Boolean(v));
  // The global secrets of legacy hooks verify deliveries only during the migration window.
  const legacy = config.webhooks.acceptLegacyHooks;
  return {
    github: p.github.enabled ? list(p.github.webhookSecret, p.github.previousWebhookSecret) : [],
    gitlab: legacy && p.gitlab.enabled ? list(p.gitlab.webhookSecret, p.gitlab.previousWebhookSecret) : [],
    bitbucket: legacy && p.bitbucket.enabled ? list(p.bitbucket.webhookSecret, p.bitbucket.previousWebhookSecret) : [],
    azureDevOps:
      legacy && p.azureDevOps.enabled && p.azureDevOps.webhookBasicAuthUser
        ? { user: p.azureDevOps.webhookBasicAuthUser, passwords: list(p.azureDevOps.webhookBasicAuthPass, p.azureDevOps.previousWebhookBasicAuthPass) }
        : undefined,
    maxBodyBytes: config.webhooks.maxBodyBytes,
    ...(config.webhooks.unverifiedBodyBytes === undefined ? {} : { unverifiedBodyBytes: config.webhooks.unverifiedBodyBytes }),
    ...(config.webhooks.verifiedDeliveryBytes === undefined ? {} : { verifiedDeliveryBytes: config.webhooks.verifiedDeliveryBytes }),
    attachedCacheSeconds: config.webhooks.attachedCacheSeconds,
    credentialCacheSeconds: config.webhooks.credentialCacheSeconds,
    maxBacklogDeliveries: config.webhooks.maxBacklogDeliveries,
    maxBacklogBytes: config.webhooks.maxBacklogBytes,
    threadBodyBytes: config.webhooks.threadBodyBytes,
    ...(config.webhooks.bodyThreads === undefined ? {} : { bodyThreads: config.webhooks.bodyThreads }),
    bodyPool: createBodyPool(bodyPoolSizes(config.webhooks.bodyThreads, config.webhooks.maxBodyBytes)),
  };
}

export function enabledProviders(config: Config): Provider[] {
  const p = config.gitProviders;
  return [
    ...(p.github.enabled ? (['github'] as const) : []),
    ...(p.gitlab.enabled ? (['gitlab'] as const) : []),
    ...(p.bitbucket.enabled ? (['bitbucket'] as const) : []),
    ...(p.azureDevOps.enabled ? (['azure-devops'] as const) : []),
  ];
}

export function githubAppFromConfig(config: Config): ApiDeps['githubApp'] {
  const { appName, webUrl, baseUrl, clientId, clientSecret } = config.gitProviders.github;
  return appName ? { appName, webUrl: (webUrl ?? githubWebUrl(baseUrl)).replace(/\/+$/, ''), clientId, clientSecret } : undefined;
}

/** github.com for api.github.com; https://HOST for GitHub Enterprise Server's https://HOST/api/v3. */
export function githubWebUrl(apiBaseUrl: string): string {
  const url = new URL(apiBaseUrl);
  if (url.hostname === 'api.github.com') return 'https://github.com';
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/api\/v3\/?$/, '')}`.replace(/\/+$/, '');
}
