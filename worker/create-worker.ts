import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import type { Context } from '@temporalio/activity';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { makeWorkflowExporter, OpenTelemetryActivityInboundInterceptor, OpenTelemetryActivityOutboundInterceptor, type OpenTelemetrySinks } from '@temporalio/interceptors-opentelemetry';
import { type ActivityInterceptorsFactory, bundleWorkflowCode, type InjectedSinks, type NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { type ActivityDeps, createActivities } from '../activities/index.ts';
import { LogContextInterceptor } from '../activities/log-context.ts';
import { NotAdmittedInterceptor } from '../activities/not-admitted.ts';
import { PermanentErrorsInterceptor } from '../activities/permanent-errors.ts';
import type { Logger } from '../lib/logger.ts';
import { inlineCallsPerWorker, WORKER_SIZING_DEFAULTS, type WorkerSizing } from '../lib/config.ts';
import { TRACING_OFF, type Tracing } from '../lib/tracing.ts';

const here = fileURLToPath(import.meta.url);
export const WORKFLOWS_PATH = path.join(path.dirname(here), '..', 'workflows', 'index.ts');
/**
 * Where `npm run build` writes the workflow bundles, beside the compiled worker/: `traced` with the
 * OpenTelemetry workflow interceptors, for a worker with tracing on, and `untraced` without them.
 */
export const BUILT_BUNDLE_PATHS = {
  traced: path.join(path.dirname(here), '..', 'workflow-bundle.js'),
  untraced: path.join(path.dirname(here), '..', 'workflow-bundle-untraced.js'),
} as const;
/**
 * The OpenTelemetry workflow interceptors, in the bundle of a worker with tracing on and active in
 * runs started in a trace: such a run continues it, and each activity, child and continue-as-new it
 * schedules gets a span; the spans leave the sandbox through the `exporter` sink. A worker with
 * tracing off loads a bundle without them: their modules (OpenTelemetry's API, core, SDK and
 * semantic conventions, half the bundle) are evaluated again for every new run, ~6 ms of CPU a run
 * measured by replay, for spans that would go nowhere (its sink drops them). They add no command to a
 * run, so either bundle replays a run the other made.
 */
export const WORKFLOW_INTERCEPTOR_MODULES = [path.join(path.dirname(here), '..', 'workflows', 'tracing-interceptors.ts')];

/** Which bundle a worker loads: with the tracing interceptors only when it exports spans. */
export type BundleVariant = keyof typeof BUILT_BUNDLE_PATHS;
export const bundleVariant = (tracing: Tracing = TRACING_OFF): BundleVariant => (tracing.enabled ? 'traced' : 'untraced');

/**
 * A run's next workflow task waits this long for the worker that ran its last one (10 s by
 * default) before any worker may take it: with a dead worker, that wait is all lost time.
 */
export const STICKY_QUEUE_SCHEDULE_TO_START_TIMEOUT = '3 seconds';

export interface WorkerParams {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  deps: ActivityDeps;
  /** A prebuilt bundle (tests bundle once per run); otherwise the built one, or (under tsx) the workflows bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  identity?: string;
  /** OpenTelemetry (default off): activity spans, and where the workflows' spans are exported. */
  tracing?: Tracing;
  /** On shutdown: activities are cancelled after graceSeconds (they see it at their next heartbeat), the worker stops at forceSeconds. */
  shutdown?: { graceSeconds: number; forceSeconds: number };
  /** The config's `worker` keys: cache and slots (default: the config's defaults). */
  sizing?: WorkerSizing;
}

/**
 * Workflow task polls at once. A poll holds a workflow task slot, and each of the SDK's two poll
 * loops (sticky, not sticky) holds one more while it waits to start its next poll. The slots that
 * tenant-facing calls may hold taken (worker.inlineCallsPerWorker), the rest must cover them all:
 * otherwise the sticky loop's idle polls take the last ones and no new run, of any organization,
 * gets its first workflow task until one of those calls ends (seen with 3 and 6 slots and the SDK's
 * default of one poll a slot: runs waited the 10 s of another organization's call). Hence the SDK's
 * default (one a slot, up to 10) but at most the slots left less 2, of them 1 in 5 not sticky
 * (at least 1 of each). Covered for sure when the slots left are 4 or more (the SDK needs 2 polls).
 */
export function workflowTaskPolls(sizing: WorkerSizing): number {
  return Math.max(2, Math.min(10, sizing.maxConcurrentWorkflowTaskExecutions - inlineCallsPerWorker(sizing) - 2));
}

/** The Worker options a sizing stands for (the benchmark's floor worker takes the same ones). */
export function sizingOptions(sizing: WorkerSizing = WORKER_SIZING_DEFAULTS) {
  return {
    maxCachedWorkflows: sizing.maxCachedWorkflows,
    reuseV8Context: sizing.reuseV8Context,
    maxConcurrentWorkflowTaskExecutions: sizing.maxConcurrentWorkflowTaskExecutions,
    workflowTaskPollerBehavior: { type: 'simple-maximum', maximum: workflowTaskPolls(sizing) },
    maxConcurrentLocalActivityExecutions: sizing.maxConcurrentLocalActivityExecutions,
    maxConcurrentActivityTaskExecutions: sizing.maxConcurrentActivityTaskExecutions,
  } satisfies Partial<WorkerOptions>;
}

export async function createWorker(params: WorkerParams): Promise<Worker> {
  return Worker.create({
    connection: params.connection,
    namespace: params.namespace,
    taskQueue: params.taskQueue,
    activities: createActivities(params.deps),
    interceptors: { activity: activityInterceptors(params.deps, params.tracing) },
    sinks: workflowSinks(params.tracing),
    workflowBundle: params.workflowBundle ?? (await defaultWorkflowBundle(bundleVariant(params.tracing), params.deps.logger)),
    stickyQueueScheduleToStartTimeout: STICKY_QUEUE_SCHEDULE_TO_START_TIMEOUT,
    ...sizingOptions(params.sizing),
    ...(params.identity ? { identity: params.identity } : {}),
    ...(params.shutdown ? { shutdownGraceTime: params.shutdown.graceSeconds * 1000, shutdownForceTime: params.shutdown.forceSeconds * 1000 } : {}),
  });
}

/** The worker's activity interceptors, outermost first. */
export function activityInterceptors(deps: Pick<ActivityDeps, 'logger' | 'metrics'>, tracing: Tracing = TRACING_OFF): ActivityInterceptorsFactory[] {
  return [
    // Outermost, so that the activity's log lines carry the span's trace id.
    ...(tracing.enabled ? [(ctx: Context) => ({ inbound: new OpenTelemetryActivityInboundInterceptor(ctx), outbound: new OpenTelemetryActivityOutboundInterceptor(ctx) })] : []),
    () => ({ inbound: new LogContextInterceptor() }),
    // Inside the log context, so that its line says which run and activity was refused.
    () => ({ inbound: new NotAdmittedInterceptor(deps) }),
    () => ({ inbound: new PermanentErrorsInterceptor() }),
  ];
}

/**
 * The sinks the bundled workflow interceptors call: the workflows' spans go to the tracing's span
 * processor, or nowhere when tracing is off. A replay worker needs them too (it never calls them).
 */
export function workflowSinks(tracing: Tracing = TRACING_OFF): InjectedSinks<OpenTelemetrySinks> {
  if (!tracing.enabled) return { exporter: { export: { fn: () => {} } } };
  return { exporter: makeWorkflowExporter(tracing.spanProcessor, tracing.resource) };
}

/**
 * The compiled worker (dist/) runs the bundle built with it; the TypeScript sources are bundled at
 * start, unless FORGELINK_WORKFLOW_BUNDLE names a bundle of these sources made already (a test
 * run's, which bundles once for all its workers: bundling is most of a source worker's start).
 * Either variant serves (they replay each other's runs); the traced one costs a little CPU per run.
 */
async function defaultWorkflowBundle(variant: BundleVariant, logger: Logger): Promise<WorkerOptions['workflowBundle']> {
  const built = BUILT_BUNDLE_PATHS[variant];
  if (existsSync(built)) return { codePath: built };
  if (here.endsWith('.js')) throw new Error(`${built} is missing: build with \`npm run build\``);
  const prebuilt = process.env.FORGELINK_WORKFLOW_BUNDLE;
  if (prebuilt) return { codePath: prebuilt };
  return bundleWorkflowsInChildProcess(WORKFLOWS_PATH, logger, variant);
}

/**
 * Bundles in a process of its own (this file run with tsx): webpack leaves a few hundred MiB in
 * the heap of the process that ran it (the worker started at ~360 MiB RSS before its first task),
 * and a child's memory goes with it, so a worker run from source sizes like the compiled one.
 * The child's warnings go to `logger`.
 */
export async function bundleWorkflowsInChildProcess(workflowsPath = WORKFLOWS_PATH, logger?: Logger, variant: BundleVariant = 'traced'): Promise<{ code: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-workflow-bundle-'));
  try {
    const out = path.join(dir, 'workflow-bundle.js');
    const { stderr } = await promisify(execFile)(process.execPath, ['--import', import.meta.resolve('tsx'), here, out, workflowsPath, variant], { maxBuffer: 16 * 1024 * 1024 });
    if (stderr.trim()) (logger ? (m: string) => logger.warn(m) : console.warn)(`bundling the workflows: ${stderr.trim()}`);
    return { code: readFileSync(out, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Bundles the workflow code once, without webpack's per-module chatter; its warnings go to `logger` (default: the console). */
export async function bundleWorkflows(logger?: Logger, workflowsPath = WORKFLOWS_PATH, variant: BundleVariant = 'traced'): Promise<{ code: string }> {
  const quiet = () => {};
  const warn = logger ? (message: string, meta?: object) => logger.warn({ ...meta }, message) : console.warn;
  const error = logger ? (message: string, meta?: object) => logger.error({ ...meta }, message) : console.error;
  const { code } = await bundleWorkflowCode({
    workflowsPath,
    workflowInterceptorModules: variant === 'traced' ? WORKFLOW_INTERCEPTOR_MODULES : [],
    logger: { info: quiet, debug: quiet, trace: quiet, log: quiet, warn, error },
  });
  return { code };
}

// `node --import tsx worker/create-worker.ts OUT_FILE [WORKFLOWS_PATH] [traced|untraced]`: bundles the workflows into OUT_FILE (see bundleWorkflowsInChildProcess).
if (import.meta.url === `file://${process.argv[1]}` && process.argv[2]) {
  const variant = process.argv[4] ?? 'traced';
  if (variant !== 'traced' && variant !== 'untraced') throw new Error(`bundle variant ${variant}: traced or untraced`);
  writeFileSync(process.argv[2], (await bundleWorkflows(undefined, process.argv[3], variant)).code);
}
