import { describe, expect, it } from 'vitest';
import { describeStartFailure } from '../../api/intake-relay.ts';
import { isStorableText } from '../../lib/text.ts';

/** What a failed start leaves on its intake row: an outage told from a refusal, short, without credentials. */
describe('describeStartFailure', () => {
  const grpc = (code: number, details: string) => Object.assign(new Error(`${code} ${details}`), { code, details });

  it('tells Temporal being unreachable from a start it refuses, by the gRPC status on the error or its causes', () => {
    expect(describeStartFailure(new Error('Failed to start', { cause: grpc(14, 'No connection established') }))).toEqual({ unreachable: true, error: 'UNAVAILABLE: No connection established' });
    expect(describeStartFailure(grpc(4, 'Deadline exceeded'))).toMatchObject({ unreachable: true, error: 'DEADLINE_EXCEEDED: Deadline exceeded' });
    expect(describeStartFailure(grpc(3, 'WorkflowId length exceeds limit.'))).toEqual({ unreachable: false, error: 'INVALID_ARGUMENT: WorkflowId length exceeds limit.' });
    expect(describeStartFailure(grpc(5, 'Namespace tenant-a is not found.'))).toMatchObject({ unreachable: false });
    expect(describeStartFailure(new Error('Failed to connect before the deadline'))).toMatchObject({ unreachable: true, error: 'ERROR: Failed to connect before the deadline' });
    expect(describeStartFailure(new TypeError('payload could not be converted'))).toMatchObject({ unreachable: false });
  });

  it('keeps the reason short and drops the user info of any URL in it', () => {
    const failure = describeStartFailure(grpc(14, `connect to https://user:s3cret@temporal.example:7233 failed ${'and again '.repeat(100)}`));
    expect(failure.error).not.toContain('s3cret');
    expect(failure.error).toContain('https://temporal.example:7233');
    expect(failure.error.length).toBeLessThanOrEqual(300);
  });

  it('cuts the reason between characters, never within a surrogate pair (its row would hold half of one)', () => {
    // 100 emoji start at every offset from 200 to 219: whatever the status prefix's length, the cut at
    // 299 UTF-16 units falls between the two halves of a pair for half of them.
    let withinPair = 0;
    for (let pad = 200; pad < 220; pad++) {
      const message = `${'x'.repeat(pad)}${'\u{1F600}'.repeat(100)}`;
      const { error } = describeStartFailure(grpc(3, message));
      expect(error.length).toBeLessThanOrEqual(300);
      expect(error.endsWith('…')).toBe(true);
      expect(isStorableText(error), `pad ${pad}: ${JSON.stringify(error.slice(-4))}`).toBe(true);
      const kept = error.slice(0, -1);
      // The longest start that holds whole characters: 299 units, or 298 where the 299th is a pair's first half.
      expect(kept.length).toBeGreaterThanOrEqual(298);
      // The status prefix, whatever its length, then the message's start.
      const prefix = kept.slice(0, kept.indexOf('x'));
      expect(prefix).toMatch(/^INVALID_ARGUMENT: ?$/);
      expect(message.startsWith(kept.slice(prefix.length))).toBe(true);
      if (kept.length === 298) withinPair++;
    }
    expect(withinPair).toBe(10);
  });
});
