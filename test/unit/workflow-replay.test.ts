import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { beforeAll, describe, expect, it } from 'vitest';
import * as workflows from '../../workflows/index.ts';
import { bundleWorkflows, workflowSinks } from '../../worker/create-worker.ts';
import { HISTORIES_DIR } from '../support/histories.ts';

/**
 * Runs in flight when forgelink is upgraded are replayed by the new worker: every recorded history
 * in test/fixtures/histories must replay against today's workflow code without a determinism error.
 * A change that breaks one needs `patched()` (or a new workflow type), not a re-recorded fixture.
 * The bundle is the worker's, with the OpenTelemetry workflow interceptors (most histories were
 * recorded before them), and the replay worker gets the sinks they call.
 */
const fixtures = readdirSync(HISTORIES_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((file) => {
    // Written by recordHistory from protobufjs's JSON form. (historyFromJSON from @temporalio/common
    // fails here: it meets @temporalio/proto's types from a second protobufjs copy.)
    const history = proto.temporal.api.history.v1.History.fromObject(JSON.parse(readFileSync(path.join(HISTORIES_DIR, file), 'utf8')));
    const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
    return { file, history, workflowType: started?.workflowType?.name ?? '' };
  });

let workflowBundle: { code: string };
beforeAll(async () => {
  workflowBundle = await bundleWorkflows();
}, 60_000);

describe('recorded workflow histories', () => {
  it('cover every workflow type the worker registers', () => {
    expect(new Set(fixtures.map((f) => f.workflowType))).toEqual(new Set(Object.keys(workflows)));
  });

  it.each(fixtures.map((f) => [f.file, f] as const))('%s replays against the current workflow code', async (_file, fixture) => {
    await expect(Worker.runReplayHistory({ workflowBundle, sinks: workflowSinks() }, fixture.history, `replay-${fixture.file}`)).resolves.toBeUndefined();
  });
});
