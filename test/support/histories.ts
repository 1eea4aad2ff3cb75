import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import proto from '@temporalio/proto';

/** Recorded run histories that every later version of the workflow code must replay (test/unit/workflow-replay.test.ts). */
export const HISTORIES_DIR = path.resolve('test/fixtures/histories');

/**
 * With RECORD_HISTORIES=1, saves the run's history as `test/fixtures/histories/<name>.json`; does
 * nothing otherwise. Called at the end of the integration tests whose runs stand for what can be in
 * flight when forgelink is upgraded.
 */
export async function recordHistory(client: Client, workflowId: string, name: string): Promise<void> {
  if (!process.env.RECORD_HISTORIES) return;
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  mkdirSync(HISTORIES_DIR, { recursive: true });
  // protobufjs's JSON form (enum names, base64 bytes), which historyFromJSON reads back.
  const json = proto.temporal.api.history.v1.History.fromObject(history).toJSON();
  writeFileSync(path.join(HISTORIES_DIR, `${name}.json`), `${JSON.stringify(json, null, 1)}\n`);
}

/** Temporal's default limit per payload is 2 MB and a history warns at 10 MB; forgelink's runs stay far below. */
export const MAX_HISTORY_BYTES = 1024 * 1024;

/** The run's history as Temporal stores it (protobuf bytes): its size must not grow with a delivery. */
export async function historyBytes(client: Client, workflowId: string): Promise<number> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return proto.temporal.api.history.v1.History.encode(proto.temporal.api.history.v1.History.fromObject(history)).finish().length;
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
