/**
 * `npm run bench:dispatch`: how long the dev server takes to hand a task to a waiting worker, with
 * temporal-dev.yml's dynamic config as it is (`configured`), without its history poll-rate keys
 * (`defaultPollRates`: the shard's queue readers at their default 20 polls a second), and each with
 * and without eager activity execution. Each variant gets a dev server of its own and runs a
 * workflow of 100 sequential no-op activities; the run's history gives the gaps
 * WorkflowTaskScheduled → WorkflowTaskStarted and ActivityTaskScheduled → ActivityTaskStarted.
 * Writes bench/results/dispatch.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import proto from '@temporalio/proto';
import type { temporal } from '@temporalio/proto';
import { readDevServerSettings, startDevServer } from '../lib/temporal/dev-server.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ACTIVITIES = 100;
// The package is CommonJS: under plain Node ESM only its default export is there.
const EventType = proto.temporal.api.enums.v1.EventType;

function gapsMs(events: temporal.api.history.v1.IHistoryEvent[], from: number, to: number): number[] {
  const at = (e: temporal.api.history.v1.IHistoryEvent) => Number(e.eventTime!.seconds) * 1000 + (e.eventTime!.nanos ?? 0) / 1e6;
  const gaps: number[] = [];
  for (let i = 1; i < events.length; i++) {
    if (events[i]!.eventType === to && events[i - 1]!.eventType === from) gaps.push(at(events[i]!) - at(events[i - 1]!));
  }
  return gaps;
}

const p50 = (values: number[]) => Math.round([...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]! * 10) / 10;

const POLL_RATE_KEY = /^history\.\w+ProcessorMaxPollRPS$/;

async function measure(eager: boolean, pollRates: 'configured' | 'default') {
  const settings = readDevServerSettings(path.join(ROOT, 'temporal-dev.yml'));
  const configured = Object.entries(settings.dynamicConfig).filter(([key]) => pollRates === 'configured' || !POLL_RATE_KEY.test(key));
  const dynamicConfig = { ...Object.fromEntries(configured), 'system.enableActivityEagerExecution': eager };
  const server = await startDevServer({ ...settings, dynamicConfig, port: undefined, uiPort: undefined, dbFilename: undefined });
  try {
    const connection = await NativeConnection.connect({ address: server.address });
    const client = new Client({ connection, namespace: server.namespace });
    const taskQueue = `dispatch-${eager ? 'eager' : 'queued'}-${pollRates}`;
    const worker = await Worker.create({
      connection,
      namespace: server.namespace,
      taskQueue,
      workflowsPath: path.join(ROOT, 'bench', 'dispatch-workflow.ts'),
      activities: { async noop() {} },
    });
    return await worker.runUntil(async () => {
      // A short run first: the worker's workflow sandbox and the server's queues are warm after it.
      await client.workflow.execute('sequentialActivities', { taskQueue, workflowId: 'warm-up', args: [5] });
      const started = performance.now();
      await client.workflow.execute('sequentialActivities', { taskQueue, workflowId: 'measured', args: [ACTIVITIES] });
      const wallMs = performance.now() - started;
      const { events } = await client.workflow.getHandle('measured').fetchHistory();
      return {
        eagerActivityExecution: eager,
        pollRates: Object.fromEntries(configured.filter(([key]) => POLL_RATE_KEY.test(key))),
        wallMs: Math.round(wallMs),
        msPerActivity: Math.round((wallMs / ACTIVITIES) * 10) / 10,
        workflowTaskDispatchP50Ms: p50(gapsMs(events!, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)),
        activityTaskDispatchP50Ms: p50(gapsMs(events!, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)),
      };
    });
  } finally {
    await server.stop();
  }
}

const result = {
  benchmark: 'dispatch',
  startedAt: new Date().toISOString(),
  machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version },
  sequentialActivities: ACTIVITIES,
  configured: { queued: await measure(false, 'configured'), eager: await measure(true, 'configured') },
  defaultPollRates: { queued: await measure(false, 'default'), eager: await measure(true, 'default') },
};
mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
writeFileSync(path.join(ROOT, 'bench', 'results', 'dispatch.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
