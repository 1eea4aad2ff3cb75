import { AsyncLocalStorage } from 'node:async_hooks';
import { openSync, readSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance, PerformanceObserver } from 'node:perf_hooks';

/**
 * Where an acknowledgement's time goes, for the ingest benchmark (bench/ingest.ts): on only when
 * FORGELINK_ACK_TRACE names a file, and then the API records, in wall-clock milliseconds (comparable
 * with the load generator's, same machine):
 * - per delivery acknowledged: when its request reached JavaScript, when its insert was issued, when
 *   the pool handed it a connection, when the insert returned, and when its answer was made;
 * - a 10 ms timer's ticks: how late each ran, and the main thread's time on a core and waiting
 *   for one since the tick before (the kernel's schedstat), so an event-loop stall shows as busy
 *   (JavaScript, GC) or waiting for a core; and the loop's delay percentiles;
 * - garbage collections (PerformanceObserver 'gc'): start, pause and kind.
 * SIGUSR2 writes what was recorded since the last signal to the file (JSON) and starts afresh.
 */
export interface AckTrace {
  /** The request reached JavaScript (the server's fetch handler was called). */
  arrived(request: object): void;
  /** Runs the delivery's insert, timing the pool checkout within it. */
  insert<T>(request: object | undefined, run: () => Promise<T>): Promise<T>;
  /** The answer is being made (status 202): the delivery's record is complete. */
  answered(request: object | undefined, deliveryId: string): void;
  /** For createDb's `onCheckout`: the pool handed out a connection (to the insert running, if any). */
  checkedOut(): void;
}

const TICK_MS = 10;

export function ackTraceFromEnv(env: NodeJS.ProcessEnv = process.env): AckTrace | undefined {
  const file = env.FORGELINK_ACK_TRACE;
  return file ? startAckTrace(file) : undefined;
}

interface Receipt {
  arrived: number;
  insert?: number;
  acquired?: number;
  inserted?: number;
}

function startAckTrace(file: string): AckTrace {
  const now = () => performance.timeOrigin + performance.now();
  const round = (v: number) => Math.round(v * 100) / 100;
  const receipts = new WeakMap<object, Receipt>();
  const current = new AsyncLocalStorage<Receipt>();
  let deliveries: (Receipt & { deliveryId: string; answered: number })[] = [];
  let ticks: [at: number, lateMs: number, onCpuMs: number, runqueueMs: number][] = [];
  let gcs: [at: number, pauseMs: number, kind: number][] = [];
  let since = now();

  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  // The main thread's nanoseconds on a core and waiting in a run queue (Linux with schedstats; zeros elsewhere).
  // Opened once and read in place (pread) each tick: a readFileSync a tick was ~6 % of the thread's busy time.
  let schedstat: number | undefined;
  try {
    schedstat = openSync(`/proc/self/task/${process.pid}/schedstat`, 'r');
  } catch {
    // Not Linux, or no schedstats: zeros.
  }
  const buffer = Buffer.alloc(128);
  const sched = () => {
    if (schedstat === undefined) return [0, 0] as const;
    const [onCpu, waiting] = buffer.toString('latin1', 0, readSync(schedstat, buffer, 0, buffer.length, 0)).split(' ');
    return [Number(onCpu) / 1e6, Number(waiting) / 1e6] as const;
  };
  let last = performance.now();
  let lastSched = sched();
  setInterval(() => {
    const t = performance.now();
    const sample = sched();
    ticks.push([round(performance.timeOrigin + t), round(Math.max(0, t - last - TICK_MS)), round(sample[0] - lastSched[0]), round(sample[1] - lastSched[1])]);
    last = t;
    lastSched = sample;
  }, TICK_MS).unref();
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcs.push([round(performance.timeOrigin + entry.startTime), round(entry.duration), ((entry as { detail?: { kind?: number } }).detail?.kind ?? 0)]);
  }).observe({ entryTypes: ['gc'] });
  process.on('SIGUSR2', () => {
    const ms = (ns: number) => round(ns / 1e6);
    writeFileSync(
      file,
      JSON.stringify({
        from: round(since),
        to: round(now()),
        eventLoopDelayMs: { p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max) },
        deliveries,
        ticks,
        gcs,
      }),
    );
    delay.reset();
    [deliveries, ticks, gcs, since] = [[], [], [], now()];
  });

  return {
    arrived(request) {
      receipts.set(request, { arrived: now() });
    },
    insert(request, run) {
      const receipt = request && receipts.get(request);
      if (!receipt) return run();
      receipt.insert = now();
      return current.run(receipt, run).finally(() => (receipt.inserted = now()));
    },
    checkedOut() {
      const receipt = current.getStore();
      if (receipt && receipt.acquired === undefined) receipt.acquired = now();
    },
    answered(request, deliveryId) {
      const receipt = request && receipts.get(request);
      if (receipt) deliveries.push({ deliveryId, ...receipt, answered: now() });
    },
  };
}
