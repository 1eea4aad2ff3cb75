/**
 * `npm start`: the whole stack in one process for a newcomer's machine — Temporal dev server (with
 * its UI), a real embedded PostgreSQL, migrations, worker and API — then prints where to find them.
 * Uses FORGELINK_CONFIG when set; otherwise a development config with secrets generated once into
 * .forgelink/dev-secrets.json. With `temporal.address` / `database.url` configured, those are used
 * instead of the dev server / embedded database.
 *
 * The servers it starts are recorded in .forgelink/stack.json, so a stack that died without
 * stopping them (kill -9, a crash) does not leave them holding their ports: the next start stops
 * them first. FORGELINK_STATE_DIR moves .forgelink, FORGELINK_TEMPORAL_DEV_FILE names another
 * temporal-dev.yml (the stack's own test runs one beside the developer's this way).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runApi } from '../api/main.ts';
import { type Config, ConfigError, loadConfig, parseConfig } from '../lib/config.ts';
import { commandOf, randomPassword, startEmbeddedPostgres, stopProcess } from '../lib/db/embedded.ts';
import { createDb } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { readDevServerSettings, startDevServer } from '../lib/temporal/dev-server.ts';
import { runWorker } from '../worker/main.ts';

const STATE_DIR = path.resolve(process.env.FORGELINK_STATE_DIR ?? '.forgelink');
const SECRETS_FILE = path.join(STATE_DIR, 'dev-secrets.json');
const STACK_FILE = path.join(STATE_DIR, 'stack.json');
const PGDATA = path.join(STATE_DIR, 'pgdata');

interface DevSecrets {
  adminToken: string;
  encryptionKey: string;
  databasePassword: string;
}

/** Generated once, kept in .forgelink/dev-secrets.json (mode 0600); a key added later is filled in. */
function devSecrets(): DevSecrets {
  const secret = () => randomBytes(24).toString('base64url');
  const stored = existsSync(SECRETS_FILE) ? (JSON.parse(readFileSync(SECRETS_FILE, 'utf8')) as Partial<DevSecrets>) : {};
  const secrets: DevSecrets = {
    adminToken: stored.adminToken ?? `dev-admin-${secret()}`,
    encryptionKey: stored.encryptionKey ?? randomBytes(32).toString('base64'),
    databasePassword: stored.databasePassword ?? randomPassword(),
  };
  if (Object.keys(stored).length !== Object.keys(secrets).length) {
    mkdirSync(path.dirname(SECRETS_FILE), { recursive: true });
    writeFileSync(SECRETS_FILE, JSON.stringify(secrets, null, 2), { mode: 0o600 });
  }
  return secrets;
}

function devConfig(s: DevSecrets): Config {
  const port = Number(process.env.PORT ?? 8080);
  return parseConfig(
    {
      publicUrl: `http://127.0.0.1:${port}`,
      api: { host: '127.0.0.1', port },
      auth: { adminToken: s.adminToken },
      encryption: { key: s.encryptionKey },
      // Hooks get their connection's own credential; a new stack has no legacy hook to accept.
      gitProviders: { gitlab: { enabled: true }, bitbucket: { enabled: true }, azureDevOps: { enabled: true } },
      // Development only: lets you point connections at local fakes or instances over http.
      security: { allowHttpHosts: ['127.0.0.1', 'localhost'] },
    },
    process.env,
  );
}

/** What this stack started: its own pid and its servers'. */
interface StackRecord {
  pid: number;
  servers: { name: 'temporal' | 'postgres'; pid: number; command: string }[];
}

/**
 * Refuses to start beside a running stack of this checkout, and stops the servers a dead one left
 * behind (each checked against the command it was recorded with, so a reused pid is never killed).
 */
async function takeOverStackRecord(): Promise<StackRecord> {
  if (existsSync(STACK_FILE)) {
    const previous = JSON.parse(readFileSync(STACK_FILE, 'utf8')) as StackRecord;
    if (previous.pid !== process.pid && commandOf(previous.pid).includes('dev-stack')) {
      throw new Error(`another npm start (pid ${previous.pid}) is running in this checkout: stop it first (Ctrl-C there, or kill ${previous.pid})`);
    }
    for (const server of previous.servers) {
      if (commandOf(server.pid) !== server.command) continue;
      console.log(`stopping the ${server.name} server (pid ${server.pid}) that an earlier npm start left running`);
      await stopProcess(server.pid);
    }
  }
  const record: StackRecord = { pid: process.pid, servers: [] };
  saveStackRecord(record);
  return record;
}

function saveStackRecord(record: StackRecord) {
  mkdirSync(path.dirname(STACK_FILE), { recursive: true });
  writeFileSync(STACK_FILE, JSON.stringify(record, null, 2));
}

function recordServer(record: StackRecord, name: StackRecord['servers'][number]['name'], pid: number | undefined) {
  if (pid === undefined) return;
  record.servers.push({ name, pid, command: commandOf(pid) });
  saveStackRecord(record);
}

async function main() {
  let config: Config;
  let secrets: DevSecrets | undefined;
  try {
    if (process.env.FORGELINK_CONFIG) config = loadConfig();
    else {
      secrets = devSecrets();
      config = devConfig(secrets);
    }
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  const stops: (() => Promise<void>)[] = [];
  const record = await takeOverStackRecord();
  stops.push(async () => rmSync(STACK_FILE, { force: true }));

  let address = config.temporal.address;
  let uiUrl = config.temporal.uiUrl;
  if (!address) {
    const settings = readDevServerSettings(process.env.FORGELINK_TEMPORAL_DEV_FILE);
    console.log('starting the Temporal dev server…');
    const server = await startDevServer({ ...settings, namespace: config.temporal.namespace }, (l) => console.log(l));
    stops.unshift(() => server.stop());
    recordServer(record, 'temporal', server.pid);
    address = server.address;
    uiUrl ??= server.uiUrl;
  }

  let databaseUrl = config.database.url;
  if (!databaseUrl) {
    console.log(`starting the embedded PostgreSQL (data in ${path.relative(process.cwd(), PGDATA)})…`);
    const embedded = await startEmbeddedPostgres({
      dataDir: PGDATA,
      password: secrets?.databasePassword ?? randomPassword(),
      log: (line) => console.log(line),
    });
    stops.unshift(() => embedded.stop());
    recordServer(record, 'postgres', embedded.pid);
    databaseUrl = embedded.url;
  }
  // As npm run migrate: without the API's deadlines, which a migration may pass.
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
  PostgreSQL   ${config.database.url ? 'database.url in your config' : `embedded, ${databaseUrl.replace(/:[^:@/]+@/, ':…@')} (password in ${path.relative(process.cwd(), SECRETS_FILE)})`}
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
