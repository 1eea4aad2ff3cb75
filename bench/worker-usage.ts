/**
 * The worker's share of the ingest benchmark (issue #16): its peak RSS, its CPU per event, and the
 * floor under that CPU measured in the same run with the same worker settings. The floor is a
 * worker process of its own (bench/floor-worker.ts) running workflows that take the event
 * workflow's input and do nothing (`noopWorkflow`), or do nothing in the event workflow's shape
 * (`eventShapedWorkflow`: since b3aca70 one local activity that records and makes the first
 * attempts; `twoStepEventShapedWorkflow`: the shape before, a local activity, then one inline
 * attempt per dispatch): what the Temporal SDK costs per run whatever forgelink does. The three
 * are measured in blocks, each block in a random order, so heap growth does not always bias the same one.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { EventInput } from '../workflows/contract.ts';
import { runConcurrently } from './measure.ts';
import { startService, stopService, type BenchStack } from './stack.ts';

/** Before issue #16's work (bench/results/ingest.json of 2026-11-26, SDK default sizing). */
export const WORKER_BASELINE = { peakRssMiB: 713.5, cpuSecondsPerThousandEvents: 11.3, measured: '2026-11-26, worker running, signed deliveries' } as const;
export const WORKER_TARGETS = { peakRssMiB: 300, cpuSecondsPerThousandEvents: WORKER_BASELINE.cpuSecondsPerThousandEvents / 2 } as const;

const CLOCK_TICKS_PER_SECOND = 100;

export function processCpuSeconds(pid: number | undefined, statFile = `/proc/${pid}/stat`): number {
  if (pid === undefined) return Number.NaN;
  const stat = readFileSync(statFile, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * A process's CPU seconds by thread: `main` (the event loop: activities, the SDK's activation
 * plumbing, the database client, logging), `workflows` (Node threads started after the process's
 * first half second: in the worker the SDK's workflow thread running the workflow sandbox, in the
 * API the intake relay's and the large-body threads; libuv's pool too where it was first used
 * then), `sdkCore` (the Rust core's threads: tokio's, gRPC, and its `workflow-processing` thread,
 * the history and state machines) and `helpers` (the Node threads started with the process: V8's
 * GC and compiler threads, Node's own). A profile that needs no profiler.
 *
 * Every Node thread is named "node", so the sandbox thread is told from V8's by when it started
 * (the SDK makes it once its worker is created, seconds after V8's are). Before 2026-12-07 17:00
 * UTC `workflows` counted the Rust `workflow-processing` thread (its name starts "workflow") and
 * the sandbox thread was in `helpers`: results files older than that say so under those keys.
 */
export function threadCpuSeconds(pid: number | undefined): Record<'main' | 'workflows' | 'sdkCore' | 'helpers', number> {
  const total = { main: 0, workflows: 0, sdkCore: 0, helpers: 0 };
  if (pid === undefined) return total;
  const processStart = threadStartTicks(`/proc/${pid}/stat`);
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = `/proc/${pid}/task/${tid}/stat`;
      const comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      const kind =
        Number(tid) === pid ? 'main' : comm !== 'node' ? 'sdkCore' : threadStartTicks(stat) - processStart > LATER_THREAD_TICKS ? 'workflows' : 'helpers';
      total[kind] += processCpuSeconds(Number(tid), stat);
    } catch {
      // The thread ended while we looked.
    }
  }
  return total;
}

/** A Node thread started more than this many clock ticks (0.5 s) after its process was started by the JavaScript it runs, not with the process. */
const LATER_THREAD_TICKS = CLOCK_TICKS_PER_SECOND / 2;

/** When a process or thread started, in clock ticks since boot (/proc's stat, field 22). */
function threadStartTicks(statFile: string): number {
  const stat = readFileSync(statFile, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

type ThreadCpu = ReturnType<typeof threadCpuSeconds>;

function perThousand(before: ThreadCpu, after: ThreadCpu, count: number): ThreadCpu {
  const keys = Object.keys(before) as (keyof ThreadCpu)[];
  return Object.fromEntries(keys.map((k) => [k, round(((after[k] - before[k]) / count) * 1000, 2)])) as ThreadCpu;
}

/** perThousand over several measured stretches: the sum of each stretch's CPU per thread, per thousand runs. */
function sumThreads(before: readonly ThreadCpu[], after: readonly ThreadCpu[], count: number): ThreadCpu {
  const total = { main: 0, workflows: 0, sdkCore: 0, helpers: 0 };
  before.forEach((b, i) => {
    for (const k of Object.keys(total) as (keyof ThreadCpu)[]) total[k] += after[i]![k] - b[k];
  });
  return perThousand({ main: 0, workflows: 0, sdkCore: 0, helpers: 0 }, total, count);
}

/** The floor's measured runs of each type come in this many blocks, the types in a new random order in each. */
const FLOOR_BLOCKS = 4;

function memoryMiB(pid: number | undefined, field: 'VmHWM' | 'VmRSS'): number {
  if (pid === undefined) return Number.NaN;
  const kib = Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return Math.round((kib / 1024) * 10) / 10;
}

const round = (v: number, digits = 1) => Math.round(v * 10 ** digits) / 10 ** digits;

/** An input like the intake relay's for a GitLab delivery (a stored delivery's summary and the connection; GitLab's carries no body digest). */
function floorInput(): EventInput {
  const deliveryId = randomUUID();
  return {
    provider: 'gitlab',
    deliveryId,
    receivedAt: new Date().toISOString(),
    summary: { events: 1, kinds: { push: 1 }, repositories: ['bench/repo-0'] },
    connectionId: randomUUID(),
  };
}

export interface FloorOptions {
  /** Runs per workflow type (after a warm-up of a fifth as many). */
  runs: number;
  /** Runs in flight at once, as the benchmark's deliveries. */
  concurrency: number;
}

/**
 * Starts the floor worker with the stack's config (its Temporal, its `worker` sizing), runs each
 * floor workflow `runs` times at `concurrency`, and returns the floor process's CPU per thousand
 * runs of each (and its peak RSS).
 */
export async function measureWorkerFloor(stack: BenchStack, options: FloorOptions, log: (line: string) => void = console.log) {
  const taskQueue = `forgelink-floor-${randomBytes(4).toString('hex')}`;
  const floor = await startService('floor worker', 'bench/floor-worker.ts', { ...stack.env, FLOOR_TASK_QUEUE: taskQueue }, 'floor worker running', { mode: stack.runMode, nodeArgs: stack.workerNodeArgs });
  const pid = floor.child.pid;
  try {
    const run = async (workflowType: 'noopWorkflow' | 'eventShapedWorkflow' | 'twoStepEventShapedWorkflow', runs: number) => {
      const result = await runConcurrently(Array.from({ length: runs }, floorInput), options.concurrency, (input) =>
        stack.temporal.workflow.execute(workflowType, { taskQueue, workflowId: `floor:${input.deliveryId}`, args: [input] }),
      );
      return result.throughputPerSecond;
    };
    const types = ['noopWorkflow', 'eventShapedWorkflow', 'twoStepEventShapedWorkflow'] as const;
    for (const workflowType of types) await run(workflowType, Math.ceil(options.runs / 5));
    // Each type's runs in FLOOR_BLOCKS blocks, the types in a new random order in each block: a
    // fixed order let the process's heap growth weigh on whichever came last.
    const perBlock = Math.max(1, Math.ceil(options.runs / FLOOR_BLOCKS));
    const sums = new Map<string, { runs: number; cpu: number; seconds: number; threadsBefore: ThreadCpu[]; threadsAfter: ThreadCpu[] }>(types.map((t) => [t, { runs: 0, cpu: 0, seconds: 0, threadsBefore: [], threadsAfter: [] }]));
    const blocks: { order: string[]; cpuSecondsPerThousand: Record<string, number> }[] = [];
    for (let block = 0; block < FLOOR_BLOCKS; block++) {
      const order = [...types];
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      log(`floor block ${block + 1}/${FLOOR_BLOCKS}: ${perBlock} runs each of ${order.join(', ')} at concurrency ${options.concurrency}`);
      const cpuSecondsPerThousand: Record<string, number> = {};
      for (const workflowType of order) {
        const sum = sums.get(workflowType)!;
        const before = processCpuSeconds(pid);
        sum.threadsBefore.push(threadCpuSeconds(pid));
        const started = performance.now();
        await run(workflowType, perBlock);
        sum.seconds += (performance.now() - started) / 1000;
        const cpu = processCpuSeconds(pid) - before;
        sum.threadsAfter.push(threadCpuSeconds(pid));
        sum.cpu += cpu;
        sum.runs += perBlock;
        cpuSecondsPerThousand[workflowType] = round((cpu / perBlock) * 1000, 2);
      }
      blocks.push({ order, cpuSecondsPerThousand });
    }
    const measured: Record<string, { runs: number; cpuSecondsPerThousand: number; byThread: ThreadCpu; runsPerSecond: number }> = {};
    for (const [workflowType, sum] of sums) {
      measured[workflowType] = {
        runs: sum.runs,
        cpuSecondsPerThousand: round((sum.cpu / sum.runs) * 1000, 2),
        byThread: sumThreads(sum.threadsBefore, sum.threadsAfter, sum.runs),
        runsPerSecond: round(sum.runs / sum.seconds),
      };
    }
    return { ...measured, blocks, peakRssMiB: memoryMiB(pid, 'VmHWM') } as { blocks: typeof blocks; noopWorkflow: (typeof measured)[string]; eventShapedWorkflow: (typeof measured)[string]; twoStepEventShapedWorkflow: (typeof measured)[string]; peakRssMiB: number };
  } finally {
    await stopService(floor);
  }
}

export type WorkerFloor = Awaited<ReturnType<typeof measureWorkerFloor>>;

/**
 * The worker's figures for the result file: what it used (peak RSS over the measured part, CPU
 * per thousand events with the worker running) beside the floor and the baseline, and whether
 * each target was met.
 */
export function workerUsageReport(
  stack: BenchStack,
  measured: { peakRssMiB: number; cpuSecondsPerThousandEvents: number; threads: { before: ThreadCpu; after: ThreadCpu; events: number } },
  floor: WorkerFloor,
) {
  const floorCpu = floor.eventShapedWorkflow.cpuSecondsPerThousand;
  return {
    workerUsage: {
      sizing: stack.workerSizing,
      peakRssMiB: measured.peakRssMiB,
      rssNowMiB: memoryMiB(stack.workerPid, 'VmRSS'),
      cpuSecondsPerThousandEvents: measured.cpuSecondsPerThousandEvents,
      // Every event after the warm-up (worker running, paused, paced), split by the worker's threads.
      cpuSecondsPerThousandEventsByThread: perThousand(measured.threads.before, measured.threads.after, measured.threads.events),
      floor,
      // What the worker spends per event over what the SDK spends on a run of the same shape.
      cpuRatioToFloor: round(measured.cpuSecondsPerThousandEvents / floorCpu, 2),
      cpuAboveFloorSecondsPerThousand: round(measured.cpuSecondsPerThousandEvents - floorCpu, 2),
      baseline: WORKER_BASELINE,
      targets: WORKER_TARGETS,
    },
    targets: {
      workerPeakRssUnder300MiB: measured.peakRssMiB <= WORKER_TARGETS.peakRssMiB,
      workerCpuPerEventHalved: measured.cpuSecondsPerThousandEvents <= WORKER_TARGETS.cpuSecondsPerThousandEvents,
    },
    // Whether the floor (the SDK alone running the event run's shape: a run that records needs its
    // local activity) is itself within the CPU target: where it is not, no event run could meet it.
    floorWithinTarget: {
      workerCpuPerEventHalved: floorCpu <= WORKER_TARGETS.cpuSecondsPerThousandEvents,
    },
  };
}
