import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const TEMPORAL_CLI_MODULE = 'github.com/temporalio/cli/cmd/temporal@v1.5.1';

export function temporalCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'forgelink', 'bin');
}

/** Whether `file` exists and this process may run it. */
export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, command))) return path.join(dir, command);
  }
  return undefined;
}

/**
 * Finds the Temporal CLI: TEMPORAL_CLI_PATH, then PATH, then our cache; otherwise builds it with
 * `go install` into the cache (v1.5.1: later tags carry a replace directive that blocks go install).
 * Returns undefined when there is no binary and no Go, so the caller can let the SDK download one.
 */
export function findOrBuildTemporalCli(log: (line: string) => void = () => {}): string | undefined {
  const fromEnv = process.env.TEMPORAL_CLI_PATH;
  if (fromEnv) {
    if (!isExecutable(fromEnv)) throw new Error(`TEMPORAL_CLI_PATH=${fromEnv} is not an executable file`);
    return fromEnv;
  }
  const found = onPath('temporal');
  if (found) return found;
  const cacheDir = temporalCacheDir();
  const cached = path.join(cacheDir, 'temporal');
  if (isExecutable(cached)) return cached;
  const go = onPath('go') ?? (isExecutable('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : undefined);
  if (!go) return undefined;
  log(`building the Temporal CLI (${TEMPORAL_CLI_MODULE}) into ${cacheDir}; this takes a few minutes once`);
  mkdirSync(cacheDir, { recursive: true });
  const result = spawnSync(go, ['install', TEMPORAL_CLI_MODULE], {
    env: { ...process.env, GOBIN: cacheDir, CGO_ENABLED: process.env.CGO_ENABLED ?? '0' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (result.status !== 0 || !isExecutable(cached)) {
    throw new Error(`go install ${TEMPORAL_CLI_MODULE} failed (exit ${result.status ?? result.signal})`);
  }
  log(`built ${execFileSync(cached, ['--version'], { encoding: 'utf8' }).trim()}`);
  return cached;
}
