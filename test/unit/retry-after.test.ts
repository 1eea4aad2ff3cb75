import { describe, expect, it } from 'vitest';
import { retryDelayMs, toActivityFailure } from '../../activities/errors.ts';
import { parseRetryAfter, ProviderHttpError } from '../../activities/providers/port.ts';

/**
 * Retry-After is a tenant's server's header. HTTP allows whole seconds or a date; a fraction
 * ("1e-7") handed to Temporal as the duration "1e-7s" failed the whole worker (test:
 * connect-gitlab's "Retry-After of 0.0000001 s", end to end).
 */
describe("a provider's Retry-After", () => {
  it('is read as whole seconds, rounded up, or a date; anything else is no value', () => {
    expect(parseRetryAfter('3')).toBe(3);
    expect(parseRetryAfter('0')).toBe(0);
    expect(parseRetryAfter('1.5')).toBe(2);
    expect(parseRetryAfter('0.0000001')).toBe(1);
    expect(parseRetryAfter('1e2')).toBe(100);
    expect(parseRetryAfter('Infinity')).toBeUndefined();
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(new Date(10_500).toUTCString(), 0)).toBe(10);
  });

  it("becomes the failure's retry delay in whole milliseconds of whole seconds, at most 15 minutes, whatever the error was handed", () => {
    expect(retryDelayMs(undefined)).toBeUndefined();
    expect(retryDelayMs(Number.NaN)).toBeUndefined();
    expect(retryDelayMs(-1)).toBeUndefined();
    expect(retryDelayMs(1e-7)).toBe(1000);
    expect(retryDelayMs(2.5)).toBe(3000);
    expect(retryDelayMs(1e21)).toBe(900_000);
    const failure = toActivityFailure(new ProviderHttpError('gitlab', 429, 'slow down', 1e-7));
    expect(failure).toMatchObject({ type: 'ProviderThrottled', nonRetryable: false, nextRetryDelay: 1000 });
  });
});
