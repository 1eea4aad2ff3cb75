/**
 * `npm run bench:replay [-- --runs=N --pairs=N --history=NAME]`: the workflow sandbox's CPU per run
 * with each of the worker's bundles (worker/create-worker.ts: `traced` with the OpenTelemetry
 * workflow interceptors, `untraced` without), no server needed: a recorded history
 * (test/fixtures/histories, `event-delivered-inline` by default) replayed N times in a row by one
 * replay worker with the production sizing's reusable V8 context, each replay a new run in the
 * sandbox as a new run is on a live worker. The bundles alternate (traced, untraced, untraced,
 * traced, …) so a drift in the machine's load weighs on both alike; CPU is this process's
 * (`process.cpuUsage`, every thread). Writes bench/results/replay-cpu.json.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { WORKER_SIZING_DEFAULTS } from '../lib/config.ts';
import { type BundleVariant, bundleWorkflows, workflowSinks } from '../worker/create-worker.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const flags = Object.fromEntries(process.argv.slice(2).map((arg) => /^--([a-zA-Z]+)=(.+)$/.exec(arg)?.slice(1) ?? [arg, '']));
const runs = Number(flags.runs ?? 200);
const pairs = Number(flags.pairs ?? 2);
const historyName = flags.history ?? 'event-delivered-inline';

const history = proto.temporal.api.history.v1.History.fromObject(JSON.parse(readFileSync(path.join(ROOT, 'test/fixtures/histories', `${historyName}.json`), 'utf8')));
const bundles = {} as Record<BundleVariant, { code: string }>;
for (const variant of ['traced', 'untraced'] as const) bundles[variant] = await bundleWorkflows(undefined, undefined, variant);

/** Replays the history `count` times as distinct runs; returns CPU and wall milliseconds per run. */
async function replay(variant: BundleVariant, count: number, tag: string): Promise<{ cpuMsPerRun: number; wallMsPerRun: number }> {
  async function* histories() {
    for (let i = 0; i < count; i++) yield { workflowId: `${tag}-${i}`, history };
  }
  const cpu = process.cpuUsage();
  const started = performance.now();
  for await (const result of Worker.runReplayHistories({ workflowBundle: bundles[variant], sinks: workflowSinks(), reuseV8Context: WORKER_SIZING_DEFAULTS.reuseV8Context }, histories())) {
    if (result.error) throw result.error;
  }
  const used = process.cpuUsage(cpu);
  return { cpuMsPerRun: round((used.user + used.system) / 1000 / count), wallMsPerRun: round((performance.now() - started) / count) };
}
const round = (n: number) => Math.round(n * 100) / 100;
const median = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length / 2;
  return round(Number.isInteger(mid) ? (sorted[mid - 1]! + sorted[mid]!) / 2 : sorted[Math.floor(mid)]!);
};

const startedAt = new Date().toISOString();
const loadAtStart = os.loadavg();
for (const variant of ['traced', 'untraced'] as const) await replay(variant, 50, `warm-${variant}`);
const blocks: { variant: BundleVariant; cpuMsPerRun: number; wallMsPerRun: number }[] = [];
for (let pair = 0; pair < pairs; pair++) {
  const order: BundleVariant[] = pair % 2 === 0 ? ['traced', 'untraced'] : ['untraced', 'traced'];
  for (const variant of order) blocks.push({ variant, ...(await replay(variant, runs, `${variant}-${pair}`)) });
}
const cpu = (variant: BundleVariant) => median(blocks.filter((b) => b.variant === variant).map((b) => b.cpuMsPerRun));
const result = {
  benchmark: 'replay-cpu',
  startedAt,
  machine: {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    node: process.version,
    loadAverage: { atStart: loadAtStart.map(round), atEnd: os.loadavg().map(round) },
  },
  options: { history: historyName, runsPerBlock: runs, pairs, reuseV8Context: WORKER_SIZING_DEFAULTS.reuseV8Context },
  blocks,
  medianCpuMsPerRun: { traced: cpu('traced'), untraced: cpu('untraced') },
  tracedToUntraced: round(cpu('traced') / cpu('untraced')),
};
mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
writeFileSync(path.join(ROOT, 'bench/results/replay-cpu.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
