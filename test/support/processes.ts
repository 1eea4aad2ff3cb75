import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as toYaml } from 'yaml';

/**
 * forgelink's own processes as production runs them, for the tests that start them separately
 * (the build's smoke test, the worker's shutdown, the cluster suite): the build into a directory of
 * its own with production dependencies only, and `node <entry>` started until it says it is ready.
 */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface StartedProcess {
  child: ChildProcess;
  /** The exit code (null when a signal ended it). */
  exited: Promise<number | null>;
  /** Everything it wrote to stdout and stderr so far. */
  output: () => string;
  /** Resolves once its output contains `text` (from the start), rejects if it exits first. */
  waitForOutput: (text: string) => Promise<void>;
}

/**
 * Writes `file`, the config of processes whose API listens on 127.0.0.1:`port` (publicUrl that
 * address) with the rest of `config` as given, and returns that URL and the environment such a
 * process runs with: the config file and nothing else of this process's but PATH and HOME.
 */
export function writeProcessConfig(file: string, { port, ...config }: { port: number } & Record<string, unknown>): { apiUrl: string; env: NodeJS.ProcessEnv } {
  const apiUrl = `http://127.0.0.1:${port}`;
  writeFileSync(file, toYaml({ publicUrl: apiUrl, api: { host: '127.0.0.1', port }, ...config }), { mode: 0o600 });
  return { apiUrl, env: { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: file } };
}

/** Kills (SIGKILL) those of `started` still running, as a test's last cleanup, and waits for them to exit. */
export async function killRemaining(started: readonly StartedProcess[]): Promise<void> {
  const running = started.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
  for (const p of running) p.child.kill('SIGKILL');
  await Promise.all(running.map((p) => p.exited));
}

export function runOrThrow(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production' }): void {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', env });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
}

/** `npm run build` into `dir`/dist, then `npm ci --omit=dev` in `dir`: what the image holds. */
export function buildForProduction(dir: string): void {
  runOrThrow(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts/build.ts'), path.join(dir, 'dist')], ROOT);
  for (const file of ['package.json', 'package-lock.json']) copyFileSync(path.join(ROOT, file), path.join(dir, file));
  runOrThrow('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], dir);
}

/** Starts `node ...args` in `cwd` and resolves once it writes `readyMessage`. */
export function startProcess(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv; readyMessage: string }): Promise<StartedProcess> {
  const child = spawn(process.execPath, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const waiters: { text: string; resolve: () => void }[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const onData = (chunk: Buffer) => {
    output += chunk.toString('utf8');
    for (const waiter of waiters.filter((w) => output.includes(w.text))) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve();
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const waitForOutput = (text: string) =>
    new Promise<void>((resolve, reject) => {
      if (output.includes(text)) return resolve();
      waiters.push({ text, resolve });
      void exited.then((code) => reject(new Error(`${args.join(' ')} exited (${code}) before it wrote "${text}":\n${output}`)));
    });
  const started: StartedProcess = { child, exited, output: () => output, waitForOutput };
  return waitForOutput(options.readyMessage).then(() => started);
}
