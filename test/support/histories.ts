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
