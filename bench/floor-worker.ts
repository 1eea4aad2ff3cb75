/**
 * A worker process for the floor workflows (bench/floor-workflows.ts), built like the real one
 * (worker/create-worker.ts): the config file's Temporal connection and `worker` sizing, the same
 * sticky-queue timeout, on the task queue in FLOOR_TASK_QUEUE. Prints `floor worker running`.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeConnection, Worker } from '@temporalio/worker';
import { loadConfig } from '../lib/config.ts';
import { temporalConnectOptions } from '../lib/temporal/connection.ts';
import { bundleWorkflowsInChildProcess, sizingOptions, STICKY_QUEUE_SCHEDULE_TO_START_TIMEOUT } from '../worker/create-worker.ts';
import { createFloorActivities } from './floor-activities.ts';

const taskQueue = process.env.FLOOR_TASK_QUEUE;
if (!taskQueue) throw new Error('FLOOR_TASK_QUEUE is required');
const config = loadConfig();
const connection = await NativeConnection.connect(temporalConnectOptions(config.temporal, config.temporal.address ?? '127.0.0.1:7233'));
// As the real worker with tracing off (the benchmarks'): compiled (bench/stack.ts buildForBench), it loads the bundle built beside it, without the tracing interceptors;
// from source, it bundles in a child process, so the bundler's memory is not counted.
const here = path.dirname(fileURLToPath(import.meta.url));
const built = path.join(here, 'floor-workflow-bundle.js');
const workflowBundle = existsSync(built) ? { codePath: built } : await bundleWorkflowsInChildProcess(path.join(here, 'floor-workflows.ts'), undefined, 'untraced');
const worker = await Worker.create({
  connection,
  namespace: config.temporal.namespace,
  taskQueue,
  workflowBundle,
  activities: createFloorActivities(),
  stickyQueueScheduleToStartTimeout: STICKY_QUEUE_SCHEDULE_TO_START_TIMEOUT,
  ...sizingOptions(config.worker),
});
const running = worker.run();
console.log(`floor worker running on ${taskQueue}`);
process.once('SIGTERM', () => worker.shutdown());
await running;
await connection.close();
