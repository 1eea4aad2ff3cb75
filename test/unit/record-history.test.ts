import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { recordMode, saveHistoryFixture, withoutCheckoutPaths } from '../support/histories.ts';

/**
 * Replay fixtures stand for runs recorded before later patched() changes: RECORD_HISTORIES=1 on a
 * test that records under an existing name must not replace what such a fixture proves.
 */
describe('recording replay fixtures', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'histories-'));
    vi.spyOn(console, 'warn').mockImplementation(() => {});
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
    vi.restoreAllMocks();
  });

  const fixture = (name: string) => JSON.parse(readFileSync(path.join(dir, `${name}.json`), 'utf8'));

  it('reads RECORD_HISTORIES: unset or empty records nothing, overwrite replaces, any other value adds', () => {
    expect([undefined, '', '1', 'yes', 'overwrite'].map(recordMode)).toEqual(['off', 'off', 'new', 'new', 'overwrite']);
  });

  it('writes nothing when recording is off', () => {
    expect(saveHistoryFixture(dir, 'run', { events: [] }, 'off')).toBe('off');
    expect(() => fixture('run')).toThrow(/ENOENT/);
  });

  it('adds a fixture that does not exist yet, as recordHistory always wrote them', () => {
    expect(saveHistoryFixture(dir, 'run', { events: [{ eventId: '1' }] }, 'new')).toBe('written');
    expect(readFileSync(path.join(dir, 'run.json'), 'utf8')).toBe('{\n "events": [\n  {\n   "eventId": "1"\n  }\n ]\n}\n');
  });

  it("writes failures' stack traces without this checkout's directory", () => {
    const failure = { stackTrace: `Error: 503\n    at dispatchEvent (${process.cwd()}/activities/dispatch.ts:93:32)` };
    saveHistoryFixture(dir, 'failed', { events: [{ activityTaskFailedEventAttributes: { failure } }] }, 'new');
    expect(fixture('failed').events[0].activityTaskFailedEventAttributes.failure.stackTrace).toBe('Error: 503\n    at dispatchEvent (activities/dispatch.ts:93:32)');
  });

  it('keeps an existing fixture with RECORD_HISTORIES=1, and says how to replace it', () => {
    writeFileSync(path.join(dir, 'old-shape.json'), '{"events":"recorded before a patch"}\n');
    expect(saveHistoryFixture(dir, 'old-shape', { events: 'today' }, 'new')).toBe('kept');
    expect(fixture('old-shape')).toEqual({ events: 'recorded before a patch' });
    expect(console.warn).toHaveBeenCalledWith(expect.stringMatching(/kept .*old-shape\.json.*RECORD_HISTORIES=overwrite/));
  });

  it('replaces an existing fixture only with RECORD_HISTORIES=overwrite', () => {
    writeFileSync(path.join(dir, 'old-shape.json'), '{"events":"recorded before a patch"}\n');
    expect(saveHistoryFixture(dir, 'old-shape', { events: 'today' }, 'overwrite')).toBe('written');
    expect(fixture('old-shape')).toEqual({ events: 'today' });
  });

  it("takes the checkout's directory out of failures' stack traces, and nothing else", () => {
    const root = '/work/wt-some.branch';
    const stackTrace = `ApplicationFailure: subscriber answered 503\n    at create (${root}/node_modules/@temporalio/common/lib/failure.js:185:16)\n    at dispatchEvent (file://${root}/activities/dispatch.ts:93:32)\n    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)`;
    const failure = { message: `${root}/elsewhere`, stackTrace, cause: { stackTrace: `at x (${root}/lib/x.ts:1:1) at y (/work/wt-some-branch/lib/y.ts:1:1)` } };
    const history = { events: [{ eventId: '7', activityTaskFailedEventAttributes: { failure } }] };
    expect(withoutCheckoutPaths(history, root)).toEqual({
      events: [
        {
          eventId: '7',
          activityTaskFailedEventAttributes: {
            failure: {
              message: `${root}/elsewhere`,
              stackTrace:
                'ApplicationFailure: subscriber answered 503\n    at create (node_modules/@temporalio/common/lib/failure.js:185:16)\n    at dispatchEvent (activities/dispatch.ts:93:32)\n    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)',
              cause: { stackTrace: 'at x (lib/x.ts:1:1) at y (/work/wt-some-branch/lib/y.ts:1:1)' },
            },
          },
        },
      ],
    });
    expect(history.events[0]!.activityTaskFailedEventAttributes.failure.stackTrace).toBe(stackTrace);
  });
});
