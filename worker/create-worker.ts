import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode, type NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { type ActivityDeps, createActivities } from '../activities/index.ts';
import { PermanentErrorsInterceptor } from '../activities/permanent-errors.ts';

export const WORKFLOWS_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'workflows', 'index.ts');

export interface WorkerParams {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  deps: ActivityDeps;
  /** A prebuilt bundle (tests bundle once per run); otherwise the workflows are bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  identity?: string;
}

export async function createWorker(params: WorkerParams): Promise<Worker> {
  return Worker.create({
    connection: params.connection,
    namespace: params.namespace,
    taskQueue: params.taskQueue,
    activities: createActivities(params.deps),
    interceptors: { activity: [() => ({ inbound: new PermanentErrorsInterceptor() })] },
    workflowBundle: params.workflowBundle ?? (await bundleWorkflows()),
    ...(params.identity ? { identity: params.identity } : {}),
  });
}

/** Bundles the workflow code once, without webpack's per-module chatter. */
export async function bundleWorkflows(): Promise<{ code: string }> {
  const quiet = () => {};
  const { code } = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    logger: { info: quiet, debug: quiet, trace: quiet, log: quiet, warn: console.warn, error: console.error },
  });
  return { code };
}
