import { createRequire } from 'node:module';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createApiMetrics, createWorkerMetrics, EVENT_LOOP_MONITORING_PRECISION_MS } from '../../lib/metrics.ts';

// The module object prom-client's default metrics call (CommonJS), so a spy on it sees their monitor.
const perfHooks = createRequire(import.meta.url)('node:perf_hooks') as typeof import('node:perf_hooks');

/**
 * Node's process metrics cost an idle process its event-loop monitor's wake-ups (prom-client's
 * default 10 ms: about 1 % of a core on the benchmark machine): both processes sample every
 * EVENT_LOOP_MONITORING_PRECISION_MS instead, and still export the event-loop metrics.
 */
describe("Node's process metrics", () => {
  afterEach(() => vi.restoreAllMocks());

  it.each([
    ['API', () => createApiMetrics({ processMetrics: true }).registry],
    ['worker', () => createWorkerMetrics({ processMetrics: true }).registry],
  ])('the %s samples event-loop delay every 100 ms and exports the lag metrics', async (_, create) => {
    const monitor = vi.spyOn(perfHooks, 'monitorEventLoopDelay');
    const registry = create();
    expect(EVENT_LOOP_MONITORING_PRECISION_MS).toBe(100);
    expect(monitor.mock.calls.map(([options]) => options?.resolution)).toEqual([100]);
    const text = await registry.metrics();
    for (const name of ['nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_gc_duration_seconds', 'process_cpu_seconds_total', 'nodejs_heap_size_used_bytes']) {
      expect(text).toContain(`# TYPE ${name} `);
    }
    // The monitor started by the metrics would otherwise keep waking this test process.
    for (const { value } of monitor.mock.results) (value as { disable(): void }).disable();
  });

  it('leaves them out without processMetrics', async () => {
    const monitor = vi.spyOn(perfHooks, 'monitorEventLoopDelay');
    const text = await createApiMetrics().registry.metrics();
    expect(monitor).not.toHaveBeenCalled();
    expect(text).not.toContain('nodejs_eventloop_lag');
  });
});
