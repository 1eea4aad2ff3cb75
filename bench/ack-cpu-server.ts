/**
 * The API's acknowledging side alone, for bench/ack-cpu.ts: the app (`createApp`) of the checkout
 * at ACK_CPU_ROOT with the deps api/main.ts gives it (its config, pool, logger, metrics, access log)
 * and its intake relay thread, served by @hono/node-server as main.ts serves it. Temporal is an
 * address nothing listens on: the receivers never call it, and the relay's starts fail off this
 * thread (it backs off), so only what acknowledging costs is on the main thread. Importing from
 * another checkout lets the driver run the code before and after a change side by side.
 * FORGELINK_CONFIG names the config; prints `ack-cpu listening <port>`.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const root = process.env.ACK_CPU_ROOT;
if (!root) throw new Error('ACK_CPU_ROOT (the checkout whose app to serve) is required');
const from = async <T>(file: string): Promise<T> => (await import(pathToFileURL(path.join(root, file)).href)) as T;

const { serve } = await import('@hono/node-server');
const { loadConfig } = await from<typeof import('../lib/config.ts')>('lib/config.ts');
const { keysFromConfig } = await from<typeof import('../lib/crypto.ts')>('lib/crypto.ts');
const { createDb } = await from<typeof import('../lib/db/index.ts')>('lib/db/index.ts');
const { createLogger } = await from<typeof import('../lib/logger.ts')>('lib/logger.ts');
const { intakeBacklog } = await from<typeof import('../lib/db/repositories/deliveries.ts')>('lib/db/repositories/deliveries.ts');
const { createApiMetrics } = await from<typeof import('../lib/metrics.ts')>('lib/metrics.ts');
const { createApp } = await from<typeof import('../api/app.ts')>('api/app.ts');
const { createIntakeSignal } = await from<typeof import('../api/intake-relay.ts')>('api/intake-relay.ts');
const { startIntakeRelayThread } = await from<typeof import('../api/intake-relay-thread.ts')>('api/intake-relay-thread.ts');
const { createOutbound } = await from<typeof import('../activities/outbound.ts')>('activities/outbound.ts');
const main = await from<typeof import('../api/main.ts')>('api/main.ts');

const config = loadConfig();
const logger = createLogger('api', config.logging.level);
const databaseUrl = config.database.url!;
const db = createDb(databaseUrl, { logger });
const metrics = config.metrics.enabled ? createApiMetrics({ backlog: () => intakeBacklog(db), processMetrics: true, logger }) : undefined;
const deps = {
  ...(metrics ? { metrics, metricsPath: config.metrics.api.path } : {}),
  draining: () => false,
  intake: createIntakeSignal(),
  db,
  temporal: {} as never,
  outbound: createOutbound(config.security),
  keys: keysFromConfig(config.encryption),
  logger,
  accessLogLevel: config.logging.accessLogLevel,
  tracing: false,
  adminToken: config.auth.adminToken,
  taskQueue: config.temporal.taskQueue,
  namespace: config.temporal.namespace,
  temporalUiUrl: 'http://127.0.0.1:8233',
  allowHttpHosts: config.security.allowHttpHosts,
  allowPrivateNetworks: config.security.allowPrivateNetworks,
  webhooks: main.webhookSecretsFromConfig(config),
  enabledProviders: main.enabledProviders(config),
  githubApp: main.githubAppFromConfig(config),
  publicUrl: config.publicUrl,
};
const app = createApp(deps);
const relay = startIntakeRelayThread(deps, { temporal: config.temporal, address: config.temporal.address!, databaseUrl, tracing: config.tracing, logLevel: config.logging.level });
await relay.ready;
const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: config.api.port }, () => console.error(`ack-cpu listening ${config.api.port}`));
process.once('SIGTERM', () => {
  server.close();
  if ('closeAllConnections' in server) server.closeAllConnections();
  void relay.stop().then(() => db.destroy()).then(() => process.exit(0));
});
