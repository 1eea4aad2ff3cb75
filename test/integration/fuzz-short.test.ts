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

  // The worker loads the run's workflow bundle instead of bundling at start (a fifth of the setup's
  // CPU). What remains is mostly two processes importing their sources under tsx: 60-115 s measured
  // at load 18-24 on 2 cores (the API 17-42 s, the worker 39-86 s, side by side), then ~10 s of
  // organizations set up through the API; the hooks' 120 s was too close.
  beforeAll(async () => {
    world = await startWorld({ temporalAddress: inject('temporalAddress'), databaseUrl: inject('databaseUrl'), workflowBundlePath: inject('workflowBundlePath') }, () => {});
  }, 240_000);
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
