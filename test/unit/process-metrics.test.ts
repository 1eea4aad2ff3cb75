import { createRequire } from 'node:module';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createApiMetrics, createWorkerMetrics, EVENT_LOOP_MONITORING_PRECISION_MS } from '../../lib/metrics.ts';

// The module object prom-client's default metrics call (CommonJS), so a spy on it sees their monitor and observers.
const perfHooks = createRequire(import.meta.url)('node:perf_hooks') as typeof import('node:perf_hooks');

/** Names of the metric families in a Prometheus text exposition. */
const families = (text: string) => [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!).sort();

/**
 * Node's process metrics cost a process their event-loop monitor's wake-ups (prom-client's default
 * 10 ms) and a PerformanceObserver called on every garbage collection (README "Metrics overhead"):
 * both processes sample every EVENT_LOOP_MONITORING_PRECISION_MS, observe no GC, and export every
 * other default metric.
 */
describe("Node's process metrics", () => {
  afterEach(() => vi.restoreAllMocks());

  it.each([
    ['API', () => createApiMetrics({ processMetrics: true }).registry],
    ['worker', () => createWorkerMetrics({ processMetrics: true }).registry],
  ])("the %s samples event-loop delay every 100 ms, observes no GC and exports prom-client's other defaults", async (_, create) => {
    const monitor = vi.spyOn(perfHooks, 'monitorEventLoopDelay');
    const observer = vi.spyOn(perfHooks, 'PerformanceObserver');
    const registry = create();
    // The monitor would otherwise keep waking this test process.
    for (const { value } of monitor.mock.results) (value as { disable(): void }).disable();
    expect(EVENT_LOOP_MONITORING_PRECISION_MS).toBe(100);
    expect(monitor.mock.calls.map(([options]) => options?.resolution)).toEqual([100]);
    expect(observer).not.toHaveBeenCalled();
    vi.restoreAllMocks();

    // prom-client's full set, in a registry of its own: ours is the same but nodejs_gc_duration_seconds.
    const full = new Registry();
    collectDefaultMetrics({ register: full, eventLoopMonitoringPrecision: 1000 });
    const expected = families(await full.metrics()).filter((name) => name !== 'nodejs_gc_duration_seconds');
    expect(expected).toContain('nodejs_eventloop_lag_p99_seconds');
    const own = families(await registry.metrics()).filter((name) => !name.startsWith('forgelink_'));
    expect(own).toEqual(expected);
  });

  it('leaves them out without processMetrics', async () => {
    const monitor = vi.spyOn(perfHooks, 'monitorEventLoopDelay');
    const text = await createApiMetrics().registry.metrics();
    expect(monitor).not.toHaveBeenCalled();
    expect(text).not.toContain('nodejs_');
  });
});
