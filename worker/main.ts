import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { settingsFromConfig } from '../activities/index.ts';
import { createOutbound, stopLocalActivities, type Outbound } from '../activities/outbound.ts';
import { createProviderFactory, type ProviderSettings } from '../activities/providers/index.ts';
import { createAnswerBudget, type AnswerBudget } from '../activities/providers/answer-budget.ts';
import { workerAnswerBudgetSizing } from '../activities/providers/answer.ts';
import { type Config, legacyHookWindow, loadConfig } from '../lib/config.ts';
import { keysFromConfig } from '../lib/crypto.ts';
// The API's start-up notice: the worker records (or not) the same legacy deliveries, so it says the same.
import { noticeLegacyHooks } from '../api/legacy-hooks.ts';
import { createLogger, type Logger } from '../lib/logger.ts';
import { createWorkerMetrics, startMetricsServer, temporalSdkMetrics } from '../lib/metrics.ts';
import { freeLoopbackPort } from '../lib/net.ts';
import { startTracing } from '../lib/tracing.ts';
import { CLIENT_CHANNEL_ARGS, connectWithRetry, temporalConnectOptions } from '../lib/temporal/connection.ts';
import { createWorker } from './create-worker.ts';
import { createWorkerDb } from './database.ts';
import { installRuntime } from './runtime.ts';
import { startDeliveryRetention } from './delivery-retention.ts';
import { checkSearchAttributes } from './search-attributes.ts';
import { ensureHookHealthSchedule, ensureRefreshSchedule } from './schedule.ts';

/** The worker's composition root: config, database, provider clients, activities, Worker. */
export async function runWorker(config: Config, options: { address?: string; databaseUrl?: string; logger?: Logger } = {}): Promise<{ metricsUrl?: string; shutdown(): Promise<void> }> {
  const logger = options.logger ?? createLogger('worker', config.logging.level);
  const metrics = config.metrics.enabled && config.metrics.worker.port !== undefined ? createWorkerMetrics({ processMetrics: true }) : undefined;
  // Before the first connection: the SDK's and workflows' logs join this process's JSON stream, and
  // the SDK's own metrics go to an exporter on loopback that the worker's metrics endpoint serves.
  const sdkBindAddress = metrics ? `127.0.0.1:${await freeLoopbackPort()}` : undefined;
  const installed = installRuntime(logger, sdkBindAddress ? { metrics: { prometheus: { bindAddress: sdkBindAddress } } } : {});
  if (sdkBindAddress && !installed) logger.warn("the Temporal runtime was installed before: its metrics are not served by the worker's endpoint");
  const sdkMetricsUrl = sdkBindAddress && installed ? `http://${sdkBindAddress}/metrics` : undefined;
  const tracing = startTracing(config.tracing, { serviceName: 'forgelink-worker' });
  const databaseUrl = options.databaseUrl ?? config.database.url;
  if (!databaseUrl) throw new Error('database.url is required to run the worker on its own (npm start provides an embedded one)');
  const db = createWorkerDb(databaseUrl, logger);
  // The recording reads the same window as the receivers: a legacy delivery stored earlier is not recorded while it is off.
  await noticeLegacyHooks({ db, logger, window: legacyHookWindow(config) });
  const connectOptions = temporalConnectOptions(config.temporal, options.address ?? config.temporal.address ?? '127.0.0.1:7233');
  const connection = await connectWithRetry(`worker connection to ${connectOptions.address}`, () => NativeConnection.connect(connectOptions), logger);
  const clientConnection = await connectWithRetry(`client connection to ${connectOptions.address}`, () => Connection.connect({ ...connectOptions, channelArgs: { ...CLIENT_CHANNEL_ARGS } }), logger);
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  await checkSearchAttributes(client, config.temporal.namespace);
  const { cron, timeZone } = { cron: config.repositoryCache.schedule, timeZone: config.repositoryCache.timeZone };
  const scheduled = await ensureRefreshSchedule(client, { cron, timeZone, taskQueue: config.temporal.taskQueue });
  logger.info({ cron, timeZone, scheduled }, 'nightly repository refresh schedule in place');
  const hookHealth = await ensureHookHealthSchedule(client, { ...config.hookHealth, cron: config.hookHealth.schedule, taskQueue: config.temporal.taskQueue });
  logger.info({ ...config.hookHealth, scheduled: hookHealth }, 'hook-health reconcile schedule in place');
  await clientConnection.close();
  const outbound = createOutbound({ ...config.security, logger });
  const answerBudget = answerBudgetFromConfig(config, logger);
  const worker = await createWorker({
    connection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    tracing,
    shutdown: { graceSeconds: config.shutdown.workerGraceSeconds, forceSeconds: config.shutdown.workerForceSeconds },
    sizing: config.worker,
    deps: { db, keys: keysFromConfig(config.encryption), providers: createProviderFactory({ ...providerSettings(config, outbound), metrics, answerBudget }), outbound, logger, settings: settingsFromConfig(config), metrics },
  });
  // Served before the worker polls, so that 'worker running' means its metrics can be scraped too
  // (and a metrics port that cannot be bound stops the process before it takes any task).
  const metricsServer = metrics
    ? await startMetricsServer({
        host: config.metrics.host ?? config.api.host,
        port: config.metrics.worker.port!,
        path: config.metrics.worker.path,
        registry: metrics.registry,
        ...(sdkMetricsUrl ? { extra: temporalSdkMetrics(sdkMetricsUrl) } : {}),
        logger,
      })
    : undefined;
  if (metricsServer) logger.info({ url: metricsServer.url }, 'worker metrics served');
  const running = worker.run();
  logger.info({ taskQueue: config.temporal.taskQueue, sizing: config.worker }, 'worker running');
  const retention = startDeliveryRetention({ db, logger }, { retentionDays: config.webhooks.deliveryRetentionDays });
  const { workerGraceSeconds: graceSeconds, workerForceSeconds: forceSeconds } = config.shutdown;
  return {
    metricsUrl: metricsServer?.url,
    async shutdown() {
      retention.stop();
      await metricsServer?.close();
      // The SDK stops the worker on SIGTERM/SIGINT by itself; asking again while it drains throws.
      if (worker.getState() === 'RUNNING') worker.shutdown();
      logger.info({ graceSeconds, forceSeconds }, 'worker draining: it takes no new tasks; activities still running after graceSeconds are cancelled and fail for Temporal to retry elsewhere');
      // The SDK cancels activities at graceSeconds but waits for local activities: they are cut here.
      const cut = setTimeout(() => {
        logger.info('worker grace time over: local activities still running are cut and retried by a timer in their run');
        stopLocalActivities();
      }, graceSeconds * 1000);
      try {
        await running;
      } finally {
        clearTimeout(cut);
      }
      await tracing.shutdown();
      await connection.close();
      await db.destroy();
      logger.info('worker stopped');
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const handle = await runWorker(loadConfig());
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void handle.shutdown());
}

function providerSettings(config: Config, outbound: Outbound): ProviderSettings {
  const gh = config.gitProviders.github;
  return gh.enabled && gh.appId && gh.privateKey ? { outbound, github: { appId: gh.appId, privateKey: gh.privateKey } } : { outbound };
}

/**
 * The worker's answer budget (activities/providers/answer-budget.ts): worker.answerBudgetBytes, or
 * what the heap and the container allow. Logged with what sized it; a configured one larger than
 * the memory allows is kept, with a warning: answers may then take the worker out of memory before
 * the budget refuses them.
 */
function answerBudgetFromConfig(config: Config, logger: Logger): AnswerBudget {
  const sizing = workerAnswerBudgetSizing(config.worker.answerBudgetBytes);
  const MiB = 1024 * 1024;
  const inMiB = { limitMiB: Math.round(sizing.limit / MiB), perOrganizationMiB: Math.round(sizing.perOrganization / MiB), allowedMiB: Math.round(sizing.allowed / MiB) };
  if (sizing.limit > sizing.allowed) {
    logger.warn({ ...inMiB, sizedBy: sizing.sizedBy }, 'worker.answerBudgetBytes is more than the heap and container limits allow (their lower less 384 MiB): provider answers may take the worker out of memory before the budget refuses them');
  } else {
    logger.info({ ...inMiB, sizedBy: sizing.sizedBy }, 'answer budget sized');
  }
  return createAnswerBudget(sizing);
}
