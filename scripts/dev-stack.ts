/**
 * `npm start`: the whole stack in one process for a newcomer's machine — Temporal dev server (with
 * its UI), database, migrations, worker and API — then prints where to find them. Uses
 * FORGELINK_CONFIG when set; otherwise a development config with secrets generated once into
 * .forgelink/dev-secrets.json. With `temporal.address` / `database.url` configured, those are used
 * instead of the dev server / embedded database.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runApi } from '../api/main.ts';
import { type Config, ConfigError, loadConfig, parseConfig } from '../lib/config.ts';
import { startEmbeddedPostgres } from '../lib/db/embedded.ts';
import { createDb } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { readDevServerSettings, startDevServer } from '../lib/temporal/dev-server.ts';
import { runWorker } from '../worker/main.ts';

const SECRETS_FILE = path.resolve('.forgelink/dev-secrets.json');

function devConfig(): Config {
  if (!existsSync(SECRETS_FILE)) {
    mkdirSync(path.dirname(SECRETS_FILE), { recursive: true });
    const secret = () => randomBytes(24).toString('base64url');
    const generated = {
      adminToken: `dev-admin-${secret()}`,
      encryptionKey: randomBytes(32).toString('base64'),
      webhookSecret: secret(),
    };
    writeFileSync(SECRETS_FILE, JSON.stringify(generated, null, 2), { mode: 0o600 });
  }
  const s = JSON.parse(readFileSync(SECRETS_FILE, 'utf8')) as { adminToken: string; encryptionKey: string; webhookSecret: string };
  const port = Number(process.env.PORT ?? 8080);
  return parseConfig(
    {
      publicUrl: `http://127.0.0.1:${port}`,
      api: { host: '127.0.0.1', port },
      auth: { adminToken: s.adminToken },
      encryption: { key: s.encryptionKey },
      gitProviders: {
        gitlab: { enabled: true, webhookSecret: s.webhookSecret },
        bitbucket: { enabled: true, webhookSecret: s.webhookSecret },
        azureDevOps: { enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: s.webhookSecret },
      },
      // Development only: lets you point connections at local fakes or instances over http.
      security: { allowHttpHosts: ['127.0.0.1', 'localhost'] },
    },
    process.env,
  );
}

async function main() {
  let config: Config;
  try {
    config = process.env.FORGELINK_CONFIG ? loadConfig() : devConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  const stops: (() => Promise<void>)[] = [];

  let address = config.temporal.address;
  let uiUrl = config.temporal.uiUrl;
  if (!address) {
    const settings = readDevServerSettings();
    console.log('starting the Temporal dev server…');
    const server = await startDevServer({ ...settings, namespace: config.temporal.namespace }, (l) => console.log(l));
    stops.unshift(() => server.stop());
    address = server.address;
    uiUrl ??= server.uiUrl;
  }

  let databaseUrl = config.database.url;
  if (!databaseUrl) {
    console.log('starting the embedded PostgreSQL (PGlite, data in .forgelink/pgdata)…');
    const embedded = await startEmbeddedPostgres();
    stops.unshift(() => embedded.stop());
    databaseUrl = embedded.url;
  }
  const db = createDb(databaseUrl, { max: 1 });
  const applied = await migrateToLatest(db);
  await db.destroy();
  if (applied.length) console.log(`migrations applied: ${applied.join(', ')}`);

  const worker = await runWorker(config, { address, databaseUrl });
  stops.unshift(() => worker.shutdown());
  const api = await runApi(config, { address, databaseUrl, temporalUiUrl: uiUrl });
  stops.unshift(() => api.shutdown());

  console.log(`
forgelink is up
  API          ${api.url}   (OpenAPI: ${api.url}/openapi.json)
  Temporal UI  ${uiUrl ?? '(external cluster: see your Temporal UI)'}
  Temporal     ${address} namespace ${config.temporal.namespace}, task queue ${config.temporal.taskQueue}
  Admin token  ${process.env.FORGELINK_CONFIG ? 'auth.adminToken in your config' : `in ${path.relative(process.cwd(), SECRETS_FILE)}`}
Ctrl-C stops everything.`);

  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    for (const stop of stops) await stop().catch((e: Error) => console.error(e.message));
    process.exit(0);
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
}

await main();
