import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { beforeAll, describe, expect, it } from 'vitest';
import * as workflows from '../../workflows/index.ts';
import { type BundleVariant, bundleWorkflows, workflowSinks } from '../../worker/create-worker.ts';
import { HISTORIES_DIR } from '../support/histories.ts';

/**
 * Runs in flight when forgelink is upgraded are replayed by the new worker: every recorded history
 * in test/fixtures/histories must replay against today's workflow code without a determinism error.
 * A change that breaks one needs `patched()` (or a new workflow type), not a re-recorded fixture.
 * Each replays against both of the worker's bundles: with the OpenTelemetry workflow interceptors
 * (a worker with tracing on; most histories were recorded before them) and without (tracing off),
 * since a worker's tracing setting can change between a run's start and its replay. `event-traced`
 * was started in a trace, so its history carries trace headers the untraced bundle ignores.
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

const bundles: Partial<Record<BundleVariant, { code: string }>> = {};
beforeAll(async () => {
  for (const variant of ['traced', 'untraced'] as const) bundles[variant] = await bundleWorkflows(undefined, undefined, variant);
}, 120_000);

describe('recorded workflow histories', () => {
  it('cover every workflow type the worker registers', () => {
    expect(new Set(fixtures.map((f) => f.workflowType))).toEqual(new Set(Object.keys(workflows)));
  });

  it('run against a bundle with the tracing interceptors and one without', () => {
    expect(bundles.traced?.code).toContain('workflows/tracing-interceptors.ts');
    expect(bundles.untraced?.code).not.toContain('workflows/tracing-interceptors.ts');
    expect(bundles.untraced?.code).not.toContain('@opentelemetry');
  });

  it('include a run started in a trace', () => {
    const traced = fixtures.find((f) => f.file === 'event-traced.json');
    expect(traced?.history.events?.[0]?.workflowExecutionStartedEventAttributes?.header?.fields?.['_tracer-data']).toBeDefined();
  });

  it.each(fixtures.flatMap((f) => (['traced', 'untraced'] as const).map((variant) => [f.file, variant, f] as const)))(
    '%s replays against the current workflow code (%s bundle)',
    async (_file, variant, fixture) => {
      await expect(Worker.runReplayHistory({ workflowBundle: bundles[variant], sinks: workflowSinks() }, fixture.history, `replay-${variant}-${fixture.file}`)).resolves.toBeUndefined();
    },
  );
});
