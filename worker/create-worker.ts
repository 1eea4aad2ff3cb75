import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode, type NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { type ActivityDeps, createActivities } from '../activities/index.ts';
import { LogContextInterceptor } from '../activities/log-context.ts';
import { PermanentErrorsInterceptor } from '../activities/permanent-errors.ts';
import type { Logger } from '../lib/logger.ts';

const here = fileURLToPath(import.meta.url);
export const WORKFLOWS_PATH = path.join(path.dirname(here), '..', 'workflows', 'index.ts');
/** Where `npm run build` writes the workflow bundle: dist/workflow-bundle.js beside the compiled worker/. */
export const BUILT_BUNDLE_PATH = path.join(path.dirname(here), '..', 'workflow-bundle.js');

export interface WorkerParams {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  deps: ActivityDeps;
  /** A prebuilt bundle (tests bundle once per run); otherwise the built one, or (under tsx) the workflows bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  identity?: string;
  /** On shutdown: activities are cancelled after graceSeconds (they see it at their next heartbeat), the worker stops at forceSeconds. */
  shutdown?: { graceSeconds: number; forceSeconds: number };
}

export async function createWorker(params: WorkerParams): Promise<Worker> {
  return Worker.create({
    connection: params.connection,
    namespace: params.namespace,
    taskQueue: params.taskQueue,
    activities: createActivities(params.deps),
    interceptors: { activity: [() => ({ inbound: new LogContextInterceptor() }), () => ({ inbound: new PermanentErrorsInterceptor() })] },
    workflowBundle: params.workflowBundle ?? (await defaultWorkflowBundle(params.deps.logger)),
    // A run's next workflow task waits this long for the worker that ran its last one (10 s by
    // default) before any worker may take it: with a dead worker, that wait is all lost time.
    stickyQueueScheduleToStartTimeout: '3 seconds',
    ...(params.identity ? { identity: params.identity } : {}),
    ...(params.shutdown ? { shutdownGraceTime: params.shutdown.graceSeconds * 1000, shutdownForceTime: params.shutdown.forceSeconds * 1000 } : {}),
  });
}

/** The compiled worker (dist/) runs the bundle built with it; the TypeScript sources are bundled at start. */
async function defaultWorkflowBundle(logger: Logger): Promise<WorkerOptions['workflowBundle']> {
  if (existsSync(BUILT_BUNDLE_PATH)) return { codePath: BUILT_BUNDLE_PATH };
  if (here.endsWith('.js')) throw new Error(`${BUILT_BUNDLE_PATH} is missing: build with \`npm run build\``);
  return bundleWorkflows(logger);
}

/** Bundles the workflow code once, without webpack's per-module chatter; its warnings go to `logger` (default: the console). */
export async function bundleWorkflows(logger?: Logger): Promise<{ code: string }> {
  const quiet = () => {};
  const warn = logger ? (message: string, meta?: object) => logger.warn({ ...meta }, message) : console.warn;
  const error = logger ? (message: string, meta?: object) => logger.error({ ...meta }, message) : console.error;
  const { code } = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    logger: { info: quiet, debug: quiet, trace: quiet, log: quiet, warn, error },
  });
  return { code };
}
