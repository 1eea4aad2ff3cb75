import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { INLINE_DISPATCH_LIMIT } from '../../activities/events.ts';
import { refusedDispatchWaitMs, refusedDrainWaitMs, refusedWaitCeilingMs } from '../../workflows/activity-slot.ts';
import { HISTORIES_DIR } from '../support/histories.ts';

const HOUR_MS = 60 * 60_000;
const DAY_MS = 24 * HOUR_MS;
/** Temporal terminates a run whose history reaches this many events (its default history count limit). */
const HISTORY_EVENT_LIMIT = 51_200;
/** What a run's refusals may add at most: its INLINE_DISPATCH_LIMIT pairs all refused for a whole deadline. */
const REFUSALS_EVENT_BUDGET = 22_000;

/** The events one refusal adds to a run's history, counted in a recorded run refused until its deadline. */
function eventsPerRefusal(): number {
  const history = JSON.parse(readFileSync(path.join(HISTORIES_DIR, 'event-activity-refused-until-deadline.json'), 'utf8')) as { events: { eventType: string }[] };
  const scheduled = history.events.flatMap((e, i) => (e.eventType === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED' ? [i] : []));
  return scheduled[1]! - scheduled[0]!;
}

/**
 * The asks of one pair refused from its first ask until its deadline, as workflows/event.ts's
 * dispatchAsActivity makes them (each ask refused at once): the waits, and when the pair is given
 * up on (the next ask would fall past the deadline). `random` stands for the workflow's Math.random.
 */
function refusedUntilDeadline(deadlineMs: number, random: () => number): { asks: number; waits: number[]; lastAskAt: number } {
  let now = 0;
  let refusedSince: number | undefined;
  const waits: number[] = [];
  for (let refusals = 0; ; refusals++) {
    const waitMs = refusedSince !== undefined ? refusedDispatchWaitMs(refusals, now - refusedSince, deadlineMs - now, deadlineMs, random()) : refusedWaitCeilingMs(refusals);
    refusedSince ??= now;
    if (deadlineMs - now <= waitMs) return { asks: refusals + 1, waits, lastAskAt: now };
    waits.push(waitMs);
    now += waitMs;
  }
}

/** A seeded generator, so that a failure reproduces. */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
    return seed / 2 ** 31;
  };
}

describe('a dispatch refused until its deadline', () => {
  it('is asked again as promptly as before for its first minutes: 1 s doubling, at most 30 s', () => {
    const { waits } = refusedUntilDeadline(DAY_MS, () => 0);
    expect(waits.slice(0, 8)).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    let refusedForMs = 0;
    for (const wait of waits) {
      if (refusedForMs >= 2.5 * 60_000) break;
      expect(wait).toBeLessThanOrEqual(30_000);
      refusedForMs += wait;
    }
  });

  it.each([
    ['an hour', HOUR_MS],
    ['a day (the default)', DAY_MS],
    ['a week', 7 * DAY_MS],
  ])('with a deadline of %s, keeps a run of INLINE_DISPATCH_LIMIT such pairs well inside the history limit', (_name, deadlineMs) => {
    const perRefusal = eventsPerRefusal();
    expect(perRefusal).toBe(11);
    // The smallest waits (the bottom of each jittered range) ask most often.
    const worst = refusedUntilDeadline(deadlineMs, () => 0);
    const typical = refusedUntilDeadline(deadlineMs, seeded(7));
    console.log(`deadline ${deadlineMs / HOUR_MS} h: ${worst.asks} asks at most (${typical.asks} with a random jitter), ${worst.asks * perRefusal} events per pair, ${INLINE_DISPATCH_LIMIT * worst.asks * perRefusal} for ${INLINE_DISPATCH_LIMIT} pairs`);
    expect(worst.asks).toBeLessThanOrEqual(120);
    expect(INLINE_DISPATCH_LIMIT * worst.asks * perRefusal).toBeLessThan(REFUSALS_EVENT_BUDGET);
    expect(REFUSALS_EVENT_BUDGET).toBeLessThan(HISTORY_EVENT_LIMIT / 2);
    expect(typical.asks).toBeLessThanOrEqual(worst.asks);
  });

  it('still asks a last time shortly before its deadline, and waits at most an hour on a day', () => {
    for (const random of [() => 0, () => 1, seeded(3)]) {
      const { waits, lastAskAt } = refusedUntilDeadline(DAY_MS, random);
      expect(DAY_MS - lastAskAt).toBeLessThanOrEqual(30_000);
      expect(Math.max(...waits)).toBeLessThanOrEqual(HOUR_MS);
    }
  });
});

/**
 * The drains of a queued run refused from its first ask until its deadline, as workflows/event.ts's
 * drainQueue makes them: each refusal is a round, and after `roundsPerRun` rounds the run continues
 * as new, its refusal count starting again while its first refusal's time is carried over.
 */
function drainRefusedUntilDeadline(deadlineMs: number, roundsPerRun: number, random: () => number): { asks: number; runs: number; longestWait: number } {
  let now = 0;
  let asks = 0;
  let runs = 1;
  let longestWait = 0;
  const refusedSince = 0;
  for (let round = 1, refusals = 0; now < deadlineMs; round++) {
    asks++;
    if (round >= roundsPerRun) {
      runs++;
      round = 0;
      refusals = 0;
    }
    const wait = Math.max(1, Math.min(refusedDrainWaitMs(refusals++, now - refusedSince, deadlineMs - now, random()), deadlineMs - now));
    longestWait = Math.max(longestWait, wait);
    now += wait;
  }
  return { asks, runs, longestWait };
}

describe('a drain refused until its deadline', () => {
  it.each([
    ['an hour', HOUR_MS],
    ['a day (the default)', DAY_MS],
    ['a week', 7 * DAY_MS],
  ])('with a deadline of %s, asks about a hundred times a day across its runs, at most an hour apart', (_name, deadlineMs) => {
    const worst = drainRefusedUntilDeadline(deadlineMs, 100, () => 0);
    const typical = drainRefusedUntilDeadline(deadlineMs, 100, seeded(11));
    console.log(`drain, deadline ${deadlineMs / HOUR_MS} h: ${worst.asks} asks at most (${typical.asks} with a random jitter) in ${worst.runs} run(s)`);
    // Before: one ask every 30 s after the first minute, ~2,900 a day.
    expect(worst.asks).toBeLessThanOrEqual(Math.max(1, deadlineMs / DAY_MS) * 120);
    expect(worst.longestWait).toBeLessThanOrEqual(HOUR_MS);
    expect(typical.asks).toBeLessThanOrEqual(worst.asks);
  });

  it('asks as promptly as before for its first minutes, and again so after it was admitted', () => {
    const waits = Array.from({ length: 6 }, (_, refusals) => refusedDrainWaitMs(refusals, 0, DAY_MS, 0));
    expect(waits).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000]);
  });
});
