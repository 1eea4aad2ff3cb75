/**
 * The API's acknowledging side alone, for bench/ack-cpu.ts: the app (`createApp`) with the deps
 * api/main.ts's `apiDeps` builds for runApi (its config, pool, logger, metrics, access log) and its
 * intake relay thread, served by @hono/node-server as runApi serves it. Temporal is a lazy
 * connection to an address nothing listens on: the receivers never call it, and the relay's starts
 * fail off this thread (it backs off), so only what acknowledging costs is on the main thread. The
 * driver runs each checkout's own copy of this file, so each serves its own code side by side.
 * FORGELINK_CONFIG names the config; prints `ack-cpu listening <port>`.
 */
import { serve } from '@hono/node-server';
import { Client, Connection } from '@temporalio/client';
import { createApp } from '../api/app.ts';
import { startIntakeRelayThread } from '../api/intake-relay-thread.ts';
import { apiDeps } from '../api/main.ts';
import { loadConfig } from '../lib/config.ts';
import { createDb } from '../lib/db/index.ts';
import { createLogger } from '../lib/logger.ts';
import { clientConnectOptions } from '../lib/temporal/connection.ts';

const config = loadConfig();
const logger = createLogger('api', config.logging.level);
const databaseUrl = config.database.url!;
const address = config.temporal.address!;
const db = createDb(databaseUrl, { logger });
const temporal = new Client({ connection: Connection.lazy(clientConnectOptions(config.temporal, address)), namespace: config.temporal.namespace });
const deps = apiDeps(config, { db, temporal, logger, tracing: false, draining: () => false });
const app = createApp(deps);
const relay = startIntakeRelayThread(deps, { temporal: config.temporal, address, databaseUrl, tracing: config.tracing, logLevel: config.logging.level });
await relay.ready;
const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: config.api.port }, () => console.error(`ack-cpu listening ${config.api.port}`));
process.once('SIGTERM', () => {
  server.close();
  if ('closeAllConnections' in server) server.closeAllConnections();
  void relay.stop().then(() => db.destroy()).then(() => process.exit(0));
});
