import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
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
