import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import proto from '@temporalio/proto';

/** Recorded run histories that every later version of the workflow code must replay (test/unit/workflow-replay.test.ts). */
export const HISTORIES_DIR = path.resolve('test/fixtures/histories');

/**
 * What RECORD_HISTORIES asks of recordHistory: nothing when unset or empty; `overwrite`, to replace
 * a fixture of the same name; any other value (`1`), to add fixtures that do not exist yet.
 */
export type RecordMode = 'off' | 'new' | 'overwrite';

export function recordMode(value = process.env.RECORD_HISTORIES): RecordMode {
  if (!value) return 'off';
  return value === 'overwrite' ? 'overwrite' : 'new';
}

/**
 * Writes a recorded history as `<dir>/<name>.json` (withoutCheckoutPaths) unless `mode` forbids
 * it. A fixture that exists is kept in `new` mode: it may be the one run of a shape recorded before
 * a later `patched()` change, there to prove such runs still replay, and a test recording today's
 * shape under its old name would silently replace it. Answers what it did.
 */
export function saveHistoryFixture(dir: string, name: string, history: unknown, mode: RecordMode): 'off' | 'written' | 'kept' {
  if (mode === 'off') return 'off';
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  try {
    writeFileSync(file, `${JSON.stringify(withoutCheckoutPaths(history), null, 1)}\n`, { flag: mode === 'overwrite' ? 'w' : 'wx' });
    return 'written';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    console.warn(
      `recordHistory: kept ${path.relative(process.cwd(), file)}, which exists (it may prove that runs recorded before a patched() change still replay). ` +
        'Record a new run shape under a new name; RECORD_HISTORIES=overwrite replaces existing fixtures.',
    );
    return 'kept';
  }
}

/**
 * With RECORD_HISTORIES set, saves the run's history (the latest run of `workflowId` unless `runId`
 * names one) as `test/fixtures/histories/<name>.json`
 * (see saveHistoryFixture: an existing fixture is replaced only with RECORD_HISTORIES=overwrite);
 * does nothing otherwise. Called at the end of the integration tests whose runs stand for what can
 * be in flight when forgelink is upgraded.
 */
export async function recordHistory(client: Client, workflowId: string, name: string, runId?: string): Promise<void> {
  const mode = recordMode();
  if (mode === 'off') return;
  const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
  // protobufjs's JSON form (enum names, base64 bytes), which historyFromJSON reads back.
  saveHistoryFixture(HISTORIES_DIR, name, proto.temporal.api.history.v1.History.fromObject(history).toJSON(), mode);
}

/**
 * The history with the checkout's own directory taken out of its failures' stack traces
 * (`/work/wt-x/activities/dispatch.ts:93:32` becomes `activities/dispatch.ts:93:32`): a committed
 * fixture should not name the machine and worktree it was recorded in. Replay does not read stack
 * traces; nothing else in the history is changed.
 */
export function withoutCheckoutPaths<T>(history: T, root = path.resolve('.')): T {
  const prefix = new RegExp(`(file://)?${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/`, 'g');
  const walk = (value: unknown, key?: string): unknown => {
    if (typeof value === 'string') return key === 'stackTrace' ? value.replace(prefix, '') : value;
    if (Array.isArray(value)) return value.map((item) => walk(item));
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v, k)]));
    return value;
  };
  return walk(history) as T;
}

/** Temporal's default limit per payload is 2 MB and a history warns at 10 MB; forgelink's runs stay far below. */
export const MAX_HISTORY_BYTES = 1024 * 1024;

/** The run's history as Temporal stores it (protobuf bytes): its size must not grow with a delivery. */
export async function historyBytes(client: Client, workflowId: string): Promise<number> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return proto.temporal.api.history.v1.History.encode(proto.temporal.api.history.v1.History.fromObject(history)).finish().length;
}

/** The run's history events, as Temporal stores them. */
export async function historyEvents(client: Client, workflowId: string): Promise<HistoryEvent[]> {
  return (await client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
}

/** The run's start input, decoded, as the Temporal UI shows it. */
export async function startInput<T>(client: Client, workflowId: string): Promise<T> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const payload = history.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
  if (!payload) throw new Error(`${workflowId} has no start input`);
  return defaultPayloadConverter.fromPayload<T>(payload as Payload);
}

/** The largest history among the runs on a task queue (every run of every workflow id, continued-as-new ones included). */
export async function largestHistory(client: Client, taskQueue: string): Promise<{ runs: number; bytes: number; workflowId?: string; runId?: string }> {
  let largest: { runs: number; bytes: number; workflowId?: string; runId?: string } = { runs: 0, bytes: 0 };
  for await (const run of client.workflow.list({ query: `TaskQueue = '${taskQueue}'` })) {
    const history = await client.workflow.getHandle(run.workflowId, run.runId).fetchHistory();
    const bytes = proto.temporal.api.history.v1.History.encode(proto.temporal.api.history.v1.History.fromObject(history)).finish().length;
    largest = bytes > largest.bytes ? { runs: largest.runs + 1, bytes, workflowId: run.workflowId, runId: run.runId } : { ...largest, runs: largest.runs + 1 };
  }
  return largest;
}

/**
 * Fails when a run on the task queue has a history of MAX_HISTORY_BYTES or more: the harness checks
 * its test file's runs as it closes, so the largest run history of the whole suite stays under it.
 */
export async function assertHistoriesBounded(client: Client, taskQueue: string): Promise<void> {
  const largest = await largestHistory(client, taskQueue);
  if (process.env.HISTORY_SIZES) console.log(`largest run history on ${taskQueue}: ${largest.bytes} bytes (${largest.workflowId ?? 'none'}; ${largest.runs} runs)`);
  if (largest.bytes >= MAX_HISTORY_BYTES) {
    throw new Error(`run ${largest.workflowId} (${largest.runId}) has a history of ${largest.bytes} bytes, over the ${MAX_HISTORY_BYTES} a run may grow to`);
  }
}

type HistoryEvent = NonNullable<proto.temporal.api.history.v1.IHistory['events']>[number];

/** localStepsOf (below), with each step's result as recorded in its marker (absent when it failed). */
export function localStepsWithResultsOf(events: HistoryEvent[]): { activityType: string; event: HistoryEvent; result?: unknown }[] {
  return localStepsOf(events).map((step) => {
    const result = step.event.markerRecordedEventAttributes?.details?.result?.payloads?.[0]?.data;
    return result ? { ...step, result: JSON.parse(Buffer.from(result).toString('utf8')) as unknown } : step;
  });
}

/**
 * The steps a run ran inside its workflow tasks (local activities), from their markers: the step's
 * activity type and the marker event (recorded once the step has ended, with its failure if it failed).
 */
export function localStepsOf(events: HistoryEvent[]): { activityType: string; event: HistoryEvent }[] {
  return events.flatMap((event) => {
    const marker = event.markerRecordedEventAttributes;
    if (marker?.markerName !== 'core_local_activity') return [];
    const data = marker.details?.data?.payloads?.[0]?.data;
    if (!data) return [];
    const { activity_type: activityType } = JSON.parse(Buffer.from(data).toString('utf8')) as { activity_type: string };
    return [{ activityType, event }];
  });
}

/** The patches a run recorded (patched() in its workflow code), from their markers, in the order recorded. */
export function patchesOf(events: HistoryEvent[]): string[] {
  return events.flatMap((event) => {
    const marker = event.markerRecordedEventAttributes;
    if (marker?.markerName !== 'core_patch') return [];
    const data = marker.details?.['patch-data']?.payloads?.[0]?.data;
    return data ? [(JSON.parse(Buffer.from(data).toString('utf8')) as { id: string }).id] : [];
  });
}
