import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import type { ActivitySettings } from '../../activities/index.ts';
import type { Harness } from './harness.ts';
import { SPEC_ENV } from './worker-process-main.ts';

/**
 * A worker in a process of its own, on the harness's task queue and database, for tests that kill
 * it (SIGKILL: no shutdown, no failure reported, exactly like a crashed or evicted pod).
 */
export interface WorkerProcessSpec {
  address: string;
  databaseUrl: string;
  taskQueue: string;
  keyId: string;
  key: string;
  bundlePath: string;
  settings: ActivitySettings;
}


/** Starts the process and resolves once its worker polls the task queue. */
export async function startWorkerProcess(h: Harness): Promise<ChildProcess> {
  const spec: WorkerProcessSpec = {
    address: inject('temporalAddress'),
    databaseUrl: inject('databaseUrl'),
    taskQueue: h.taskQueue,
    keyId: h.keys.current.id,
    key: h.keys.current.key.toString('base64'),
    bundlePath: inject('workflowBundlePath'),
    settings: h.settings,
  };
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./worker-process-main.ts', import.meta.url))], {
    env: { ...process.env, [SPEC_ENV]: JSON.stringify(spec) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the worker process exited with ${code} before it was ready`)));
    createInterface({ input: child.stdout! }).on('line', (line) => line === 'ready' && resolve());
  });
  return child;
}
