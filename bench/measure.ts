/** Load generation and statistics shared by the benchmarks. */
import http from 'node:http';

export interface LoadResult<T> {
  durationMs: number;
  /** Per operation, in the order the operations were given. */
  latenciesMs: number[];
  outcomes: T[];
  throughputPerSecond: number;
}

/** Runs `operation` over `items` with at most `concurrency` in flight, timing each one. */
export async function runConcurrently<I, T>(items: readonly I[], concurrency: number, operation: (item: I) => Promise<T>): Promise<LoadResult<T>> {
  const latenciesMs = new Array<number>(items.length);
  const outcomes = new Array<T>(items.length);
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        const t0 = performance.now();
        outcomes[index] = await operation(items[index]!);
        latenciesMs[index] = performance.now() - t0;
      }
    }),
  );
  const durationMs = performance.now() - started;
  return { durationMs, latenciesMs, outcomes, throughputPerSecond: (items.length / durationMs) * 1000 };
}

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? Number.NaN;
}

export function latencySummary(values: readonly number[]) {
  const round = (v: number) => Math.round(v * 10) / 10;
  return { p50: round(percentile(values, 50)), p90: round(percentile(values, 90)), p99: round(percentile(values, 99)), max: round(Math.max(...values)) };
}

/** Waits (polling, this is a benchmark) until `done` holds; returns how long it took. */
export async function waitUntil(done: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const started = performance.now();
  while (!(await done())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return performance.now() - started;
}

/**
 * Open loop: starts operation i at `i / ratePerSecond` seconds whether or not earlier ones have
 * finished (at most `maxInFlight` at once), and times each from when it was due, so a backlog
 * shows in the latencies instead of slowing the arrivals down.
 */
export async function runPaced<I, T>(items: readonly I[], ratePerSecond: number, maxInFlight: number, operation: (item: I) => Promise<T>): Promise<LoadResult<T>> {
  const latenciesMs = new Array<number>(items.length);
  const outcomes = new Array<T>(items.length);
  const started = performance.now();
  let inFlight = 0;
  let freed: (() => void) | undefined;
  const running: Promise<void>[] = [];
  for (const [index, item] of items.entries()) {
    const due = started + (index / ratePerSecond) * 1000;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    while (inFlight >= maxInFlight) await new Promise<void>((resolve) => (freed = resolve));
    inFlight++;
    running.push(
      operation(item).then((outcome) => {
        outcomes[index] = outcome;
        latenciesMs[index] = performance.now() - due;
        inFlight--;
        freed?.();
      }),
    );
  }
  await Promise.all(running);
  const durationMs = performance.now() - started;
  return { durationMs, latenciesMs, outcomes, throughputPerSecond: (items.length / durationMs) * 1000 };
}

/**
 * POSTs `body` from `from` (a loopback address: the receivers budget unverified bodies per sender
 * address), on a connection of its own, resolving with the status and the ms it took.
 */
export function postFrom(url: string, headers: Record<string, string>, body: Buffer | string, from: string): Promise<{ status: number; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', localAddress: from, headers: { ...headers, 'content-length': Buffer.byteLength(body) }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, ms: performance.now() - started }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
