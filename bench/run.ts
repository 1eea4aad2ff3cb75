/**
 * `npm run bench [-- <name>…] [--deliveries=N] [--concurrency=N] [--callsPerWorker=N] [--callsPerConnection=N] [--observabilityOnly=1] [--closedLoopOnly=1] [--apiFirst=1 | --pods=1]`: starts the benchmark stack
 * (bench/stack.ts), runs each named benchmark (all by default) against it, and writes each
 * result to bench/results/<name>.json. A benchmark is a function of the stack returning a
 * JSON-able result: add one to BENCHMARKS.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_ATTACH_OPTIONS, runAttachBench } from './attach.ts';
import { DEFAULT_INGEST_OPTIONS, runIngestBench } from './ingest.ts';
import { DEFAULT_PICKER_OPTIONS, runPickerBench } from './picker.ts';
import { DEFAULT_REFRESH_OPTIONS, runRefreshBench } from './refresh.ts';
import { DEFAULT_SIZING_OPTIONS, runSizingBench } from './worker-sizing.ts';
import { benchRunMode, DEFAULT_LISTING_CONCURRENCY, startBenchStack, type BenchStack } from './stack.ts';

type Flags = Record<string, number>;

/** `checkpoint` writes a benchmark's results so far to its file (marked partial), for runs that measure in blocks. */
type Benchmark = (stack: BenchStack, flags: Flags, checkpoint: (partial: object) => void) => Promise<object>;

const BENCHMARKS: Record<string, Benchmark> = {
  ingest: (stack, flags) => runIngestBench(stack, { ...DEFAULT_INGEST_OPTIONS, ...flags }),
  refresh: (stack, flags) => runRefreshBench(stack, { ...DEFAULT_REFRESH_OPTIONS, ...flags }),
  picker: (stack, flags) => runPickerBench(stack, { ...DEFAULT_PICKER_OPTIONS, ...flags }),
  attach: (stack, flags) => runAttachBench(stack, { ...DEFAULT_ATTACH_OPTIONS, ...flags }),
  // Not in the default set (about 10 minutes): `npm run bench -- sizing`.
  // Its results file is written after every block, so a run that stops half-way keeps what it measured.
  sizing: (stack, flags, checkpoint) => runSizingBench(stack, { ...DEFAULT_SIZING_OPTIONS, ...flags }, console.log, checkpoint),
};
const DEFAULT_SET = ['ingest', 'refresh', 'picker', 'attach'];

const RESULTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');

function parseArgs(argv: string[]): { names: string[]; flags: Flags } {
  const names: string[] = [];
  const flags: Flags = {};
  for (const arg of argv) {
    const flag = /^--([a-zA-Z]+)=(\d+)$/.exec(arg);
    if (flag) flags[flag[1]!] = Number(flag[2]);
    else if (arg in BENCHMARKS) names.push(arg);
    else throw new Error(`unknown argument ${arg}; benchmarks: ${Object.keys(BENCHMARKS).join(', ')}; flags: --name=<number>`);
  }
  return { names: names.length ? names : DEFAULT_SET, flags };
}

const { names, flags } = parseArgs(process.argv.slice(2));
// The API and the worker as production runs them (built, `node dist/…`) unless BENCH_RUN=source.
const stack = await startBenchStack(
  console.log,
  {
    callsPerConnection: flags.callsPerConnection ?? DEFAULT_LISTING_CONCURRENCY.callsPerConnection,
    callsPerWorker: flags.callsPerWorker ?? DEFAULT_LISTING_CONCURRENCY.callsPerWorker,
  },
  { run: benchRunMode() },
);
let failed = false;
try {
  mkdirSync(RESULTS, { recursive: true });
  for (const name of names) {
    stack.resetPeakRss();
    const started = new Date();
    const loadBefore = os.loadavg();
    // The modelled deployments (bench/ingest.ts, --apiFirst=1 and --pods=1) keep files of their own beside the shared one.
    // Only the closed loop (--closedLoopOnly=1, comparing builds) keeps a file of its own: it never replaces a full run's.
    const file = path.join(RESULTS, name === 'ingest' && flags.closedLoopOnly ? 'ingest-closed-loop.json' : name === 'ingest' && flags.apiFirst ? 'ingest-api-first.json' : name === 'ingest' && flags.pods ? 'ingest-pods.json' : `${name}.json`);
    const reportOf = (result: object) => ({
      benchmark: name,
      startedAt: started.toISOString(),
      machine: {
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model,
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        node: process.version,
        // What the API and the worker ran: the build (`node dist/…`, as production) or the sources under tsx.
        ran: stack.runMode === 'dist' ? 'node dist/ (npm run build)' : 'tsx (TypeScript sources)',
        nodeArgs: process.env.BENCH_NODE_ARGS ?? '',
        // The API's own flags (BENCH_API_NODE_ARGS), before BENCH_NODE_ARGS.
        apiNodeArgs: process.env.BENCH_API_NODE_ARGS ?? '',
        // 1, 5 and 15 minute load averages when the benchmark started and ended (or reached its last checkpoint): above the CPU count, other work competed for the cores.
        loadAverage: { atStart: loadBefore.map((l) => Math.round(l * 100) / 100), atEnd: os.loadavg().map((l) => Math.round(l * 100) / 100) },
      },
      ...result,
    });
    const checkpoint = (partial: object) => writeFileSync(file, `${JSON.stringify(reportOf(partial), null, 2)}\n`);
    const result = await BENCHMARKS[name]!(stack, flags, checkpoint);
    const report = reportOf(result);
    if (name === 'ingest' && flags.observabilityOnly && existsSync(file)) {
      // Only the metrics on/off comparison ran: it replaces its part of the last full run's file, with its own start, machine and options.
      const previous = JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>;
      const { observabilityOverhead, options, loadAverage } = result as Record<string, any>;
      const merged = {
        ...previous,
        observabilityOverhead: { startedAt: report.startedAt, machine: report.machine, options, runLoadAverage: loadAverage, ...observabilityOverhead },
        targets: { ...previous.targets, observabilityOverhead: observabilityOverhead.met },
      };
      writeFileSync(file, `${JSON.stringify(merged, null, 2)}\n`);
    } else writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`${name}: ${JSON.stringify(result, null, 2)}\nwritten to ${path.relative(process.cwd(), file)}`);
  }
} catch (error) {
  failed = true;
  console.error(error);
} finally {
  await stack.stop();
}
process.exit(failed ? 1 : 0);
