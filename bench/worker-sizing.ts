/**
 * `npm run bench -- sizing`: what each worker setting costs (issue #16), in one run on one stack.
 * Each setting (the `worker` config keys and the worker's Node flags) gets blocks of signed
 * deliveries through the API, the worker restarted with that setting before each block; the
 * settings are run in order, then again in reverse (ABC…CBA), so a load that drifts over the run
 * weighs on each alike. Per setting: end-to-end throughput (first request to last event
 * dispatched), the worker's CPU per 1,000 events (from /proc, and by thread) and its peak RSS over
 * the block (after a warm-up of its own), with the machine's load average at each block.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { WorkerSizing } from '../lib/config.ts';
import { prepare, seed, startCountingSubscriber, type Prepared } from './ingest.ts';
import { runConcurrently, waitUntil } from './measure.ts';
import { chartWorkerNodeArgs, type BenchStack } from './stack.ts';
import { processCpuSeconds, threadCpuSeconds } from './worker-usage.ts';

export interface SizingOptions {
  /** Deliveries per block (each setting gets two blocks). */
  deliveries: number;
  /** Deliveries each restarted worker gets before its block is measured. */
  warmup: number;
  concurrency: number;
}

export const DEFAULT_SIZING_OPTIONS: SizingOptions = { deliveries: 300, warmup: 60, concurrency: 50 };

export interface WorkerSetting {
  name: string;
  /** `worker` keys over the defaults. */
  sizing?: Partial<WorkerSizing>;
  /** The worker's Node flags (default: the chart's worker.nodeArgs). */
  nodeArgs?: string[];
}

/** The settings compared by default; BENCH_SIZINGS (a JSON array of WorkerSetting) replaces them. */
export const DEFAULT_SETTINGS: WorkerSetting[] = [
  { name: 'defaults' },
  { name: 'cache 20', sizing: { maxCachedWorkflows: 20 } },
  { name: 'slots halved (5 workflow tasks, 10 local activities, 10 activities)', sizing: { maxConcurrentWorkflowTaskExecutions: 5, maxConcurrentLocalActivityExecutions: 10, maxConcurrentActivityTaskExecutions: 10 } },
  { name: 'reuseV8Context off', sizing: { reuseV8Context: false } },
  { name: '--max-semi-space-size=4', nodeArgs: ['--max-semi-space-size=4'] },
  { name: '--max-semi-space-size=32', nodeArgs: ['--max-semi-space-size=32'] },
  { name: '--max-old-space-size=160', nodeArgs: ['--max-old-space-size=160'] },
];

const round = (v: number, digits = 1) => Math.round(v * 10 ** digits) / 10 ** digits;

function peakRssMiB(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return round(kib / 1024);
}

/**
 * Runs the settings' blocks; after every block `checkpoint` gets the results so far (the settings
 * measured at least once, `partial: true`), so a run stopped or failed half-way keeps what it measured.
 */
export async function runSizingBench(
  stack: BenchStack,
  options: SizingOptions = DEFAULT_SIZING_OPTIONS,
  log: (line: string) => void = console.log,
  checkpoint: (partial: object) => void = () => {},
) {
  const settings = process.env.BENCH_SIZINGS ? (JSON.parse(process.env.BENCH_SIZINGS) as WorkerSetting[]) : DEFAULT_SETTINGS;
  const subscriber = await startCountingSubscriber();
  const subscriberUrl = subscriber.url;
  try {
    const repos = await seed(stack, { repositoriesPerProvider: 25, subscribers: 1 }, subscriberUrl);
    const post = async ({ delivery: d }: Prepared, resends = 3): Promise<number> => {
      try {
        const res = await fetch(`${stack.apiUrl}${d.path}`, { method: 'POST', headers: d.headers, body: d.body });
        await res.arrayBuffer();
        return res.status;
      } catch (error) {
        // A kept-alive connection the API closed as the request went out: sent again, as a provider redelivers.
        if (resends === 0) throw error;
        return post({ delivery: d } as Prepared, resends - 1);
      }
    };
    const dispatched = async () => Number((await stack.db.selectFrom('dispatch_attempts').select((eb) => eb.fn.countAll<string>().as('n')).where('succeeded', '=', true).executeTakeFirstOrThrow()).n);
    /** Sends `count` deliveries at the benchmark's concurrency and waits until each is dispatched. */
    const load = async (count: number) => {
      const before = await dispatched();
      const result = await runConcurrently(prepare(stack, repos, count), options.concurrency, post);
      const accepted = result.outcomes.filter((s) => s === 202).length;
      if (accepted !== count) throw new Error(`only ${accepted} of ${count} deliveries accepted`);
      const drainMs = await waitUntil(async () => (await dispatched()) >= before + count, 10 * 60_000, `${count} deliveries dispatched`);
      return { loadMs: result.durationMs, drainMs };
    };

    const order = [...settings.keys(), ...[...settings.keys()].reverse()];
    const blocks: SizingBlock[] = [];
    for (const [i, index] of order.entries()) {
      const setting = settings[index]!;
      log(`sizing block ${i + 1}/${order.length}: ${setting.name}`);
      await stack.restartWorker(setting.sizing ?? {}, setting.nodeArgs);
      await load(options.warmup);
      const pid = stack.workerPid;
      stack.resetPeakRss();
      const loadAverage = os.loadavg()[0]!;
      const cpuBefore = processCpuSeconds(pid);
      const threadsBefore = threadCpuSeconds(pid);
      const { loadMs, drainMs } = await load(options.deliveries);
      const threadsAfter = threadCpuSeconds(pid);
      blocks.push({
        setting: index,
        eventsPerSecond: (options.deliveries / (loadMs + drainMs)) * 1000,
        cpuSecondsPerThousand: ((processCpuSeconds(pid) - cpuBefore) / options.deliveries) * 1000,
        byThread: Object.fromEntries(Object.entries(threadsAfter).map(([k, v]) => [k, ((v - threadsBefore[k as keyof typeof threadsBefore]) / options.deliveries) * 1000])),
        peakRssMiB: peakRssMiB(pid),
        loadAverage: round((loadAverage + os.loadavg()[0]!) / 2, 2),
      });
      checkpoint({ ...summarize(options, settings, order, blocks), subscriberReceived: subscriber.received(), partial: true, blocksDone: `${i + 1}/${order.length}` });
    }
    // Back to the defaults for whatever runs next on this stack.
    await stack.restartWorker({});
    return { ...summarize(options, settings, order, blocks), subscriberReceived: subscriber.received() };
  } finally {
    await subscriber.close();
  }
}

interface SizingBlock {
  setting: number;
  eventsPerSecond: number;
  cpuSecondsPerThousand: number;
  byThread: Record<string, number>;
  peakRssMiB: number;
  loadAverage: number;
}

/** Each setting measured so far (means over its blocks, each block beside them), against the first setting. */
function summarize(options: SizingOptions, settings: WorkerSetting[], order: number[], blocks: SizingBlock[]) {
  const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
  const measured = settings.flatMap((setting, index) => {
    const own = blocks.filter((b) => b.setting === index);
    if (own.length === 0) return [];
    return {
      name: setting.name,
      sizing: setting.sizing ?? {},
      nodeArgs: setting.nodeArgs ?? chartWorkerNodeArgs(),
      // Means over its blocks (two once the run is over); each block's own numbers beside them.
      endToEndEventsPerSecond: round(mean(own.map((b) => b.eventsPerSecond))),
      workerCpuSecondsPerThousandEvents: round(mean(own.map((b) => b.cpuSecondsPerThousand)), 2),
      workerCpuByThread: Object.fromEntries(Object.keys(own[0]!.byThread).map((k) => [k, round(mean(own.map((b) => b.byThread[k]!)), 2)])),
      workerPeakRssMiB: Math.max(...own.map((b) => b.peakRssMiB)),
      blocks: own.map((b) => ({ eventsPerSecond: round(b.eventsPerSecond), cpuSecondsPerThousand: round(b.cpuSecondsPerThousand, 2), peakRssMiB: b.peakRssMiB, oneMinuteLoadAverage: b.loadAverage })),
    };
  });
  // The first block is the first setting's (the defaults): every summary has it.
  const base = measured[0]!;
  return {
    options,
    order: order.map((i) => settings[i]!.name),
    settings: measured.map((r) => ({
      ...r,
      // Against the first setting (the defaults), measured in the same run.
      throughputVsFirst: round(r.endToEndEventsPerSecond / base.endToEndEventsPerSecond, 3),
      cpuVsFirst: round(r.workerCpuSecondsPerThousandEvents / base.workerCpuSecondsPerThousandEvents, 3),
    })),
  };
}
