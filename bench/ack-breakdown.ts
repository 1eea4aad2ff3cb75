/**
 * Where a slow acknowledgement's time goes, and the floor under it (issue #18's ack p99 target):
 * the generator's timestamps of each delivery (due, sent, answered) joined with the API's trace of
 * it (api/ack-trace.ts), the API's event-loop stalls, its main thread's time on and off a core, and
 * its GC pauses around it.
 */
import { performance } from 'node:perf_hooks';
import { latencySummary, percentile } from './measure.ts';
import type { AckTraceRecording } from './stack.ts';

const now = () => performance.timeOrigin + performance.now();
const round1 = (v: number) => Math.round(v * 10) / 10;

/** When each delivery was sent and its answer read, in wall-clock ms (the API's trace uses the same clock). */
export type SendTimes = Map<string, { sent: number; done: number }>;

/** This process's event-loop stalls (a 10 ms timer late by more than 5 ms): the generator's own, which count in every latency it measures. */
export function recordStalls() {
  const stalls: [number, number][] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const t = performance.now();
    const late = t - last - 10;
    if (late > 5) stalls.push([performance.timeOrigin + last + 10, late]);
    last = t;
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      return stalls;
    },
  };
}

/**
 * The parts of one acknowledgement, in ms, adding up to its latency (from when it was due):
 * generatorLate (due → sent: the load generator's own delay), toHandler (sent → the API's handler
 * called: the kernel, and the API's event loop busy or waiting for a core before it read the
 * request), beforeInsert (middleware, body, verification, normalization, targets), poolWait (the
 * insert waiting for a pool connection), query (the INSERT's round trip and commit), afterInsert
 * (back on the event loop to the answer made), answerBack (the answer written, read by the generator).
 */
const PARTS = ['generatorLate', 'toHandler', 'beforeInsert', 'poolWait', 'query', 'afterInsert', 'answerBack'] as const;
type Part = (typeof PARTS)[number];

/**
 * `ids[i]` answered in `latenciesMs[i]` (from when it was due): its parts, and for the slowest 1 %
 * (at least 5) what happened around each (the API's main thread: its worst stall, its time on a core
 * and waiting for one; GC pauses; the generator's stalls).
 */
export function ackBreakdown(ids: readonly string[], latenciesMs: readonly number[], sends: SendTimes, trace: AckTraceRecording, generatorStalls: [number, number][]) {
  const traced = new Map(trace.deliveries.map((d) => [d.deliveryId, d]));
  const rows = ids.flatMap((id, i) => {
    const s = sends.get(id);
    const a = traced.get(id);
    const latency = latenciesMs[i];
    if (!s || !a || a.insert === undefined || a.inserted === undefined || latency === undefined) return [];
    const due = s.done - latency;
    const acquired = a.acquired ?? a.insert;
    const parts: Record<Part, number> = {
      generatorLate: s.sent - due,
      toHandler: a.arrived - s.sent,
      beforeInsert: a.insert - a.arrived,
      poolWait: acquired - a.insert,
      query: a.inserted - acquired,
      afterInsert: a.answered - a.inserted,
      answerBack: s.done - a.answered,
    };
    return [{ id, due, done: s.done, arrived: a.arrived, latency, parts }];
  });
  const slowCount = Math.max(5, Math.ceil(rows.length / 100));
  const slowest = [...rows].sort((a, b) => b.latency - a.latency).slice(0, slowCount);
  const overlaps = (from: number, to: number) => (at: number, ms: number) => at < to && at + ms > from;
  const stalls = trace.ticks.filter(([, late]) => late > 5);
  const sum = (values: number[]) => round1(values.reduce((a, b) => a + b, 0));
  const slow = slowest.map((r) => {
    const within = overlaps(r.due, r.done);
    // Ticks that ran while the delivery waited: the API's main thread's time on a core and waiting for one then.
    const ticks = trace.ticks.filter(([at]) => at > r.due && at <= r.done);
    const gcs = trace.gcs.filter(([at, ms]) => within(at, ms));
    return {
      latencyMs: round1(r.latency),
      parts: Object.fromEntries(PARTS.map((p) => [p, round1(r.parts[p])])),
      apiMainThread: { worstStallMs: round1(Math.max(0, ...ticks.map(([, late]) => late))), onCpuMs: sum(ticks.map(([, , cpu]) => cpu)), waitingForCoreMs: sum(ticks.map(([, , , wait]) => wait)) },
      gcPauses: gcs.length,
      gcMs: round1(gcs.reduce((sum, [, ms]) => sum + ms, 0)),
      generatorWorstStallMs: round1(Math.max(0, ...generatorStalls.filter(([at, late]) => within(at, late)).map(([, late]) => late))),
    };
  });
  const summarize = (values: number[]) => (values.length ? latencySummary(values) : null);
  const meanOfSlow = (p: Part) => round1(slowest.reduce((sum, r) => sum + r.parts[p], 0) / Math.max(1, slowest.length));
  const windowS = (trace.to - trace.from) / 1000;
  return {
    traced: rows.length,
    // Each part over every delivery of the phase (p50 / p90 / p99 / max).
    partsMs: Object.fromEntries(PARTS.map((p) => [p, summarize(rows.map((r) => r.parts[p]))])),
    // The mean of each part over the slowest 1 % (at least 5): where their time went.
    slowestMeanPartsMs: Object.fromEntries(PARTS.map((p) => [p, meanOfSlow(p)])),
    slowest: slow,
    api: {
      eventLoopDelayMs: trace.eventLoopDelayMs,
      stalls: { count: stalls.length, maxMs: round1(Math.max(0, ...stalls.map(([, late]) => late))), over50Ms: stalls.filter(([, late]) => late > 50).length },
      // The main thread over the phase: ms on a core and ms runnable but waiting for one (per second of the phase).
      mainThreadPerSecond: { onCpuMs: round1(sum(trace.ticks.map(([, , cpu]) => cpu)) / windowS), waitingForCoreMs: round1(sum(trace.ticks.map(([, , , wait]) => wait)) / windowS) },
      gc: { count: trace.gcs.length, totalMs: round1(trace.gcs.reduce((sum, [, ms]) => sum + ms, 0)), maxMs: round1(Math.max(0, ...trace.gcs.map(([, ms]) => ms))), perSecond: round1(trace.gcs.length / windowS) },
    },
    generator: { stalls: generatorStalls.length, maxMs: round1(Math.max(0, ...generatorStalls.map(([, late]) => late))) },
  };
}

/** The floor's numbers: its acknowledgement latency, its INSERT's round trip, the generator's delay. */
export function floorSummary(latenciesMs: number[], insertMs: number[], generatorLateMs: number[]) {
  return {
    ackLatencyMs: latencySummary(latenciesMs),
    insertMs: latencySummary(insertMs),
    generatorLateMs: latencySummary(generatorLateMs),
    // The acknowledgements over 20 ms, and how many of them had an insert over 20 ms.
    over20Ms: latenciesMs.filter((l) => l > 20).length,
    insertOver20Ms: insertMs.filter((l) => l > 20).length,
    p99WithoutGeneratorLateMs: round1(percentile(latenciesMs.map((l, i) => l - (generatorLateMs[i] ?? 0)), 99)),
  };
}

export { now as wallClockMs };
