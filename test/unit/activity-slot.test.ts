import { describe, expect, it } from 'vitest';
import { keptWaitingMs, REFUSED_FOR_AT_MOST_MS, refusedWaitMs, retryAfterAttempts } from '../../workflows/activity-slot.ts';

const retry = { initialInterval: 1000, backoffCoefficient: 2, maximumInterval: 60_000, maximumAttempts: 10 };

describe('retryAfterAttempts', () => {
  it('carries the attempts made over: the attempts left and the backoff the next attempt would have had', () => {
    expect(retryAfterAttempts(retry, 0)).toEqual(retry);
    expect(retryAfterAttempts(retry, 1)).toEqual({ ...retry, initialInterval: 2000, maximumAttempts: 9 });
    expect(retryAfterAttempts(retry, 7)).toEqual({ ...retry, initialInterval: 60_000, maximumAttempts: 3 });
  });

  it('keeps "no limit" (maximumAttempts 0) as no limit instead of a negative count Temporal refuses', () => {
    expect(retryAfterAttempts({ ...retry, maximumAttempts: 0 }, 3).maximumAttempts).toBe(0);
  });
});

describe('refusedWaitMs', () => {
  it('doubles from 1 s to at most 30 s, spread over the upper half of each wait', () => {
    expect(refusedWaitMs(0, 0, 0)).toBe(500);
    expect(refusedWaitMs(0, 0, 1)).toBe(1000);
    expect(refusedWaitMs(3, 0, 1)).toBe(8000);
    expect(refusedWaitMs(10, 0, 0)).toBe(15_000);
    expect(refusedWaitMs(10, 0, 1)).toBe(30_000);
    // 2 ** n overflows to Infinity long before a run would stop asking: still 30 s at most.
    expect(refusedWaitMs(2000, 0, 0.5)).toBe(22_500);
  });

  it('gives up once the step has been refused for the budget, under the hour a disconnect or a hook-health check waits', () => {
    expect(REFUSED_FOR_AT_MOST_MS).toBeLessThan(60 * 60_000);
    expect(refusedWaitMs(50, REFUSED_FOR_AT_MOST_MS - 1, 0.5)).toBeTypeOf('number');
    expect(refusedWaitMs(50, REFUSED_FOR_AT_MOST_MS, 0.5)).toBeUndefined();
    expect(refusedWaitMs(0, 5000, 0.5, 5000)).toBeUndefined();
  });
});

describe('keptWaitingMs', () => {
  it('waits as refusedWaitMs for the first 2.5 minutes, then up to a fifth of the time refused, at most 5 minutes', () => {
    expect(keptWaitingMs(0, 0, 1)).toBe(1000);
    expect(keptWaitingMs(10, 60_000, 1)).toBe(30_000);
    expect(keptWaitingMs(10, 10 * 60_000, 1)).toBe(2 * 60_000);
    expect(keptWaitingMs(10, 10 * 60_000, 0)).toBe(60_000);
    expect(keptWaitingMs(2000, 24 * 60 * 60_000, 1)).toBe(5 * 60_000);
  });

  it('never gives up, and asks about 180 times over ten hours of refusals', () => {
    let asks = 0;
    for (let refusedFor = 0; refusedFor < 10 * 60 * 60_000; asks++) refusedFor += keptWaitingMs(asks, refusedFor, 0.5);
    expect(asks).toBeGreaterThan(150);
    expect(asks).toBeLessThan(200);
  });
});
