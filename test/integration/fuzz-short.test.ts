import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { formatReport, runFuzz } from '../fuzz/run.ts';
import { startWorld, type World } from '../fuzz/world.ts';

/**
 * The fuzz suite's short form (`npm run fuzz` is the long one, with a seed of its own each run):
 * the same fuzzer, a fixed seed, against the API and the worker as separate processes on the test
 * run's Temporal server and database. Hostile deliveries to the four receivers and hostile API
 * calls: no 5xx, no crash, no run or event without a valid credential, every run ending.
 */
const SEED = 20261206;
const REQUESTS = 1000;

describe('fuzz (short form)', () => {
  let world: World;

  beforeAll(async () => {
    world = await startWorld({ temporalAddress: inject('temporalAddress'), databaseUrl: inject('databaseUrl') }, () => {});
  });
  afterAll(async () => {
    await world?.close();
  });

  it(`${REQUESTS} hostile requests: no 5xx, no crash, nothing started without a valid credential`, { timeout: 120_000 }, async () => {
    const report = await runFuzz(world, { seed: SEED, requests: REQUESTS, concurrency: 8, drainMs: 30_000, log: () => {} });
    expect(report.failures, formatReport(report)).toEqual([]);
    expect(report.requests).toBe(REQUESTS);
    // The run reached past verification: valid deliveries started runs that recorded events, forged ones were refused.
    expect(report.runsStarted).toBeGreaterThan(20);
    expect(report.eventsRecorded).toBeGreaterThan(20);
    expect(report.statuses.receiver[401]).toBeGreaterThan(100);
  });
});
