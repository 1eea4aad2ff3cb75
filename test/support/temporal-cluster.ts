import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import proto from '@temporalio/proto';
import { sql } from 'kysely';
import { stringify as toYaml } from 'yaml';
import { createDb } from '../../lib/db/index.ts';
import { isExecutable, temporalCacheDir } from '../../lib/temporal/cli.ts';
import { CLIENT_EXTENSIONS, makeTestCa, SERVER_EXTENSIONS } from './test-ca.ts';

/**
 * A real Temporal cluster for the cluster suite (test/cluster): the server built from
 * go.temporal.io/server/cmd/server@v1.29.1 running every service in one process, on PostgreSQL
 * persistence and visibility (databases of its own, schemas applied with the module's sql tool),
 * with several history shards and its frontend on mutual TLS with a CA made for the run. The test
 * can SIGKILL it and start it again on the same databases and ports, as a crash and a restart of a
 * cluster look to forgelink.
 */

export const TEMPORAL_SERVER_VERSION = 'v1.29.1';
export const TEMPORAL_SERVER_MODULES = [`go.temporal.io/server/cmd/server@${TEMPORAL_SERVER_VERSION}`, `go.temporal.io/server/cmd/tools/sql@${TEMPORAL_SERVER_VERSION}`];
/** The name the frontend's certificate carries (clients connect to 127.0.0.1 and check this name). */
export const CLUSTER_SERVER_NAME = 'temporal.test';
const HISTORY_SHARDS = 4;
const { IndexedValueType } = proto.temporal.api.enums.v1;
/** As `temporal operator search-attribute create --type` takes them, and as the namespace lists them. */
const INDEXED: Record<ClusterSearchAttribute['type'], number> = { Keyword: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, KeywordList: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST };
const SERVING = proto.grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING;

export interface ClusterSearchAttribute {
  name: string;
  type: 'Keyword' | 'KeywordList';
}

export interface ClusterBinaries {
  server: string;
  sql: string;
  /** The Temporal CLI (search attributes are registered with it, as the worker's start-up check tells an operator to). */
  cli: string;
}

/** The cached server, sql tool and CLI (~/.cache/forgelink/bin), or the names of those missing. */
export function findClusterBinaries(): { binaries?: ClusterBinaries; missing: string[] } {
  const dir = temporalCacheDir();
  const files = { server: path.join(dir, 'server'), sql: path.join(dir, 'sql'), cli: process.env.TEMPORAL_CLI_PATH ?? path.join(dir, 'temporal') };
  const missing = Object.values(files).filter((f) => !isExecutable(f));
  return missing.length === 0 ? { binaries: files, missing } : { missing };
}

/** The module's PostgreSQL schemas (`go mod download` fetches the module if the build did not leave it). */
export function postgresSchemaDir(): string {
  const result = spawnSync('go', ['mod', 'download', '-json', `go.temporal.io/server@${TEMPORAL_SERVER_VERSION}`], { cwd: '/', encoding: 'utf8', env: { ...process.env, GOFLAGS: '-mod=mod' } });
  if (result.status !== 0) throw new Error(`go mod download go.temporal.io/server@${TEMPORAL_SERVER_VERSION}: ${result.stderr}`);
  return path.join((JSON.parse(result.stdout) as { Dir: string }).Dir, 'schema', 'postgresql', 'v12');
}

/**
 * A free 127.0.0.1 port below 32768: the server stores its services' membership ports in a smallint
 * column (cluster_membership.rpc_port) and exits on one above it, and Linux hands out ephemeral
 * ports from 32768 up.
 */
async function lowFreePort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (taken.has(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) {
      taken.add(port);
      return port;
    }
  }
}

/** Polls `probe` until it returns true or `ms` pass; the last error is in the message. */
export async function until(what: string, ms: number, probe: () => Promise<boolean>, everyMs = 250): Promise<void> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      if (await probe()) return;
      last = undefined;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s${last ? ` (last: ${(last as Error).message})` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

export interface TemporalCluster {
  /** The frontend, 127.0.0.1:PORT, on mTLS. */
  address: string;
  namespace: string;
  /** forgelink's `temporal.tls` for this cluster: the run's CA, the server name, a client certificate. */
  tls: { caFile: string; serverName: string; certFile: string; keyFile: string };
  /** The server's own log (JSON lines), for a failure's diagnosis. */
  logFile: string;
  /** A client connection of the test's own (mTLS). */
  connect(): Promise<Connection>;
  /** SIGKILL, as a crashed node: resolves once the process is gone. */
  kill(): Promise<void>;
  /** Starts the server again on the same databases and ports; resolves once the frontend serves the namespace. */
  start(): Promise<void>;
  /** Kills the server and drops its databases. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  binaries: ClusterBinaries;
  /** A directory of the test's own (config, certificates, log). */
  dir: string;
  /** A PostgreSQL superuser URL that may create databases. */
  adminUrl: string;
  /** Search attributes to register in the namespace. */
  searchAttributes: ClusterSearchAttribute[];
  log?: (line: string) => void;
}

export async function startTemporalCluster(options: ClusterOptions): Promise<TemporalCluster> {
  const { binaries, dir, log = () => {} } = options;
  const t0 = Date.now();
  const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  mkdirSync(path.join(dir, 'config'), { recursive: true });
  const ca = makeTestCa(dir);
  ca.issue('frontend', SERVER_EXTENSIONS(`DNS:${CLUSTER_SERVER_NAME}`));
  ca.issue('system-worker', CLIENT_EXTENSIONS);
  ca.issue('client', CLIENT_EXTENSIONS);
  const tls = { caFile: ca.file('ca.pem'), serverName: CLUSTER_SERVER_NAME, certFile: ca.file('client.pem'), keyFile: ca.file('client.key') };

  // Databases of this run only; dropped by stop().
  const suffix = `${process.pid}_${randomBytes(4).toString('hex')}`;
  const databases = { default: `temporal_cluster_${suffix}`, visibility: `temporal_cluster_vis_${suffix}` };
  const pg = new URL(options.adminUrl);
  const pgArgs = ['--plugin', 'postgres12', '--ep', pg.hostname, '-p', pg.port || '5432', '-u', decodeURIComponent(pg.username || 'postgres')];
  const pgEnv = { ...process.env, ...(pg.password ? { SQL_PASSWORD: decodeURIComponent(pg.password) } : {}) };
  const admin = createDb(options.adminUrl, { max: 1 });
  const dropDatabases = async () => {
    for (const database of Object.values(databases)) await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  };
  const sqlTool = (database: string, ...args: string[]) => {
    const result = spawnSync(binaries.sql, [...pgArgs, '--db', database, ...args], { encoding: 'utf8', env: pgEnv });
    if (result.status !== 0) throw new Error(`sql ${args.join(' ')} on ${database} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  };
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const kill = async () => {
    const running = child;
    if (!running || running.exitCode !== null || running.signalCode !== null) return;
    running.kill('SIGKILL');
    await exited;
  };
  try {
    const schemas = postgresSchemaDir();
    for (const [store, database] of [['temporal', databases.default], ['visibility', databases.visibility]] as const) {
      sqlTool(database, 'create-database');
      sqlTool(database, 'setup-schema', '-v', '0.0');
      sqlTool(database, 'update-schema', '-d', path.join(schemas, store, 'versioned'));
    }
    log(`temporal cluster: databases ${databases.default} and ${databases.visibility} on schema ${TEMPORAL_SERVER_VERSION} (${elapsed()})`);

    const taken = new Set<number>();
    const port = async () => lowFreePort(taken);
    const services: Record<string, { grpcPort: number; membershipPort: number }> = {};
    for (const name of ['frontend', 'history', 'matching', 'worker']) services[name] = { grpcPort: await port(), membershipPort: await port() };
    const address = `127.0.0.1:${services.frontend!.grpcPort}`;
    const store = (database: string, maxConns: number) => ({
      sql: {
        pluginName: 'postgres12',
        databaseName: database,
        connectAddr: `${pg.hostname}:${pg.port || '5432'}`,
        connectProtocol: 'tcp',
        user: decodeURIComponent(pg.username || 'postgres'),
        password: decodeURIComponent(pg.password),
        maxConns,
        maxIdleConns: maxConns,
        maxConnLifetime: '1h',
      },
    });
    writeFileSync(
      path.join(dir, 'dynamicconfig.yaml'),
      toYaml({
        // As temporal-dev.yml: eager activities, and no per-shard poll limit in the way (few shards).
        'system.enableActivityEagerExecution': [{ value: true }],
        'history.transferProcessorMaxPollRPS': [{ value: 10000 }],
        'history.timerProcessorMaxPollRPS': [{ value: 10000 }],
        'history.visibilityProcessorMaxPollRPS': [{ value: 10000 }],
        // A namespace and search attributes registered by the test are seen at once, not after the caches' refresh.
        'system.namespaceCacheRefreshInterval': [{ value: '1s' }],
        'system.forceSearchAttributesCacheRefreshOnRead': [{ value: true }],
      }),
    );
    writeFileSync(
      path.join(dir, 'config', 'cluster.yaml'),
      toYaml({
        log: { stdout: true, level: 'info' },
        persistence: {
          defaultStore: 'postgres-default',
          visibilityStore: 'postgres-visibility',
          numHistoryShards: HISTORY_SHARDS,
          datastores: { 'postgres-default': store(databases.default, 20), 'postgres-visibility': store(databases.visibility, 4) },
        },
        global: {
          membership: { maxJoinDuration: '30s', broadcastAddress: '127.0.0.1' },
          tls: {
            // Clients (forgelink, the CLI) must present a certificate from the run's CA.
            frontend: {
              server: { certFile: ca.file('frontend.pem'), keyFile: ca.file('frontend.key'), requireClientAuth: true, clientCaFiles: [ca.file('ca.pem')] },
              client: { serverName: CLUSTER_SERVER_NAME, rootCaFiles: [ca.file('ca.pem')] },
            },
            // The server's own system workers reach the frontend the same way.
            systemWorker: {
              certFile: ca.file('system-worker.pem'),
              keyFile: ca.file('system-worker.key'),
              client: { serverName: CLUSTER_SERVER_NAME, rootCaFiles: [ca.file('ca.pem')] },
            },
          },
        },
        services: Object.fromEntries(Object.entries(services).map(([name, ports]) => [name, { rpc: { ...ports, bindOnLocalHost: true } }])),
        clusterMetadata: {
          enableGlobalNamespace: false,
          failoverVersionIncrement: 10,
          masterClusterName: 'active',
          currentClusterName: 'active',
          clusterInformation: { active: { enabled: true, initialFailoverVersion: 1, rpcName: 'frontend', rpcAddress: address } },
        },
        dcRedirectionPolicy: { policy: 'noop' },
        dynamicConfigClient: { filepath: path.join(dir, 'dynamicconfig.yaml'), pollInterval: '10s' },
      }),
    );
    const logFile = path.join(dir, 'server.log');
    const connect = () =>
      Connection.connect({
        address,
        connectTimeout: '5s',
        tls: { serverNameOverride: CLUSTER_SERVER_NAME, serverRootCACertificate: readFileSync(tls.caFile), clientCertPair: { crt: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) } },
      });
    const namespace = 'default';

    /** Runs the server process; resolves once its frontend answers healthy on mTLS. */
    const launch = async () => {
      const out = openSync(logFile, 'a');
      const started = spawn(binaries.server, ['--root', dir, '--config', 'config', '--env', 'cluster', '--allow-no-auth', 'start'], { cwd: dir, stdio: ['ignore', out, out] });
      closeSync(out);
      child = started;
      exited = new Promise((resolve) => started.once('exit', () => resolve()));
      let connection: Connection | undefined;
      try {
        await until(`the Temporal server's frontend at ${address} (log: ${logFile})`, 120_000, async () => {
          if (started.exitCode !== null) throw new Error(`the server exited (${started.exitCode}); the end of its log:\n${readFileSync(logFile, 'utf8').slice(-3000)}`);
          connection ??= await connect();
          const { status } = await connection.healthService.check({ service: 'temporal.api.workflowservice.v1.WorkflowService' });
          return status === SERVING;
        });
      } catch (error) {
        await connection?.close();
        await kill();
        throw error;
      }
      return connection!;
    };

    const ready = async (connection: Connection) => {
      await until(`namespace ${namespace} served by ${address}`, 60_000, async () => {
        await connection.workflowService.describeNamespace({ namespace });
        return true;
      });
    };

    let connection = await launch();
    log(`temporal cluster: frontend serving on mTLS at ${address}, ${HISTORY_SHARDS} history shards (${elapsed()}; log ${logFile})`);
    try {
      await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
      await ready(connection);
      // One create per attribute, with the command the worker's start-up check gives an operator.
      for (const { name, type } of options.searchAttributes) {
        const result = spawnSync(
          binaries.cli,
          [
            ...['operator', 'search-attribute', 'create', '--namespace', namespace, '--name', name, '--type', type],
            ...['--address', address, '--tls-ca-path', tls.caFile, '--tls-cert-path', tls.certFile, '--tls-key-path', tls.keyFile, '--tls-server-name', CLUSTER_SERVER_NAME],
          ],
          { encoding: 'utf8' },
        );
        if (result.status !== 0) throw new Error(`temporal operator search-attribute create ${name} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
      }
      const names = options.searchAttributes.map((a) => `${a.name} (${a.type})`).join(', ');
      await until(`search attributes ${names} listed`, 60_000, async () => {
        const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
        return options.searchAttributes.every(({ name, type }) => customAttributes?.[name] === INDEXED[type]);
      });
    } finally {
      await connection.close();
    }
    log(`temporal cluster: namespace ${namespace} with search attributes ${options.searchAttributes.map((a) => a.name).join(', ')} (${elapsed()})`);

    return {
      address,
      namespace,
      tls,
      logFile,
      connect,
      kill,
      async start() {
        if (child && child.exitCode === null && child.signalCode === null) throw new Error('the Temporal server is running');
        const startedAt = Date.now();
        connection = await launch();
        try {
          await ready(connection);
        } finally {
          await connection.close();
        }
        log(`temporal cluster: started again, serving in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
      },
      async stop() {
        await kill();
        await dropDatabases().finally(() => admin.destroy());
      },
    };
  } catch (error) {
    await kill();
    await dropDatabases()
      .catch(() => {})
      .finally(() => admin.destroy());
    throw error;
  }
}
