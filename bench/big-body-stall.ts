/**
 * What one tenant's largest signed deliveries cost every other tenant's acknowledgements. Tenant B
 * sends small signed GitLab pushes at a steady rate (an attached repository: each one is stored,
 * 202); tenant A, whose Bitbucket server signs with its own connection's secret, sends bodies of
 * webhooks.maxBodyBytes (25 MiB of short ref changes, the receivers' costliest body: answered 200
 * "events over the size limit" once counted) back to back. B's acknowledgement latency, without A
 * and with A, for two APIs on the same stack that differ only in where a large body is read:
 * `loop` (webhooks.threadBodyBytes past the limit: every body on the event loop, as before
 * 2026-12-07's threads) and `threads` (the default). The other API is frozen (SIGSTOP) while one is
 * measured, and the two alternate round by round (ABBA). CPU from /proc: the API's main thread and
 * its other threads (the body thread among them).
 *
 * Run: npx tsx bench/big-body-stall.ts [rounds=4] [seconds=10]   (writes bench/results/big-body-stall.json)
 */
import { createHmac, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository } from '../test/fakes/webhook-deliveries.ts';
import { latencySummary, postFrom } from './measure.ts';
import { seedBenchTenant, startBenchStack, type BenchTenant } from './stack.ts';
import { threadCpuSeconds } from './worker-usage.ts';

const MAX_BODY_BYTES = 25 * 1024 * 1024;
const rounds = Number(process.argv[2] ?? 4);
const seconds = Number(process.argv[3] ?? 10);
/** B's deliveries a second, and A's bodies in flight at once. */
const B_RATE = 20;
const A_CONCURRENCY = 2;

/** Tenant A's body: a signed Bitbucket refs_changed of as many short ref changes as fit in the limit (its events would pass twice the limit: 200 ignored once counted). */
function largeBody(a: BenchTenant): { headers: Record<string, string>; body: Buffer } {
  // Short ref changes, as bench/normalize-bound.ts: the most a body of the limit holds (~446,000), counted and answered 200 ignored.
  const make = (i: number) => ({ refId: `refs/heads/${i}`, fromHash: 'a', toHash: 'b' });
  const wrap = (changes: unknown[]) => ({ eventKey: 'repo:refs_changed', date: new Date().toISOString(), actor: { name: 'a' }, repository: { id: Number(a.repository.externalId), slug: 'repo', name: 'repo', project: { key: 'A' } }, changes });
  let n = Math.floor((MAX_BODY_BYTES - 4_096) / (JSON.stringify(make(100_000)).length + 1));
  let body = Buffer.from(JSON.stringify(wrap(Array.from({ length: n }, (_, i) => make(i)))));
  while (body.length > MAX_BODY_BYTES) {
    n = Math.floor(n * 0.995);
    body = Buffer.from(JSON.stringify(wrap(Array.from({ length: n }, (_, i) => make(i)))));
  }
  const headers = {
    'content-type': 'application/json; charset=utf-8',
    'x-event-key': 'repo:refs_changed',
    'x-request-id': randomUUID(),
    'x-hub-signature': `sha256=${createHmac('sha256', a.secret).update(body).digest('hex')}`,
  };
  return { headers, body };
}

async function main() {
  const log = (line: string) => console.log(line);
  const stack = await startBenchStack(log);
  try {
    const loop = await stack.startVariant('loop', { webhooks: { threadBodyBytes: 2 * MAX_BODY_BYTES } });
    const apis = {
      threads: { url: stack.apiUrl, pid: stack.apiPid, pause: (p: boolean) => stack.setApiPaused(p) },
      loop: { url: loop.apiUrl, pid: loop.pids.api, pause: (p: boolean) => loop.setPaused(p) },
    };
    const a = await seedBenchTenant(stack, 'bitbucket', 'a', 'stall');
    const b = await seedBenchTenant(stack, 'gitlab', 'b', 'stall');
    const large = largeBody(a);
    log(`tenant A's body: ${large.body.length} bytes`);
    const smallPayload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), b.repository);
    const smallBytes = Buffer.byteLength(JSON.stringify(smallPayload));

    /**
     * What the API says of itself (its /metrics): the event loop's delay since the last scrape
     * (prom-client resets it at each), and B's acknowledgements' time inside the receiver so far.
     */
    const scrape = async (url: string) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      const value = (name: string) => Number(new RegExp(`^${name.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
      return {
        loopDelayMaxMs: Math.round(value('nodejs_eventloop_lag_max_seconds') * 1000),
        loopDelayP99Ms: Math.round(value('nodejs_eventloop_lag_p99_seconds') * 1000),
        ackSum: value('forgelink_webhook_ack_duration_seconds_sum{provider="gitlab",outcome="accepted"}'),
        ackCount: value('forgelink_webhook_ack_duration_seconds_count{provider="gitlab",outcome="accepted"}'),
      };
    };

    /** B's paced deliveries for `ms` (and A's back to back, when `withA`): B's latencies, A's answers, CPU. */
    const phase = async (mode: keyof typeof apis, withA: boolean) => {
      const api = apis[mode];
      const before = await scrape(api.url);
      const cpu0 = threadCpuSeconds(api.pid);
      const load0 = os.loadavg()[0]!;
      const until = performance.now() + seconds * 1000;
      const aResults: { status: number; ms: number }[] = [];
      const aStreams = withA
        ? Array.from({ length: A_CONCURRENCY }, async (_, i) => {
            while (performance.now() < until) aResults.push(await postFrom(`${api.url}${receiverPath('bitbucket')}?c=${a.connectionId}`, large.headers, large.body, `127.0.0.${2 + i}`));
          })
        : [];
      const bResults: Promise<{ status: number; ms: number }>[] = [];
      const started = performance.now();
      for (let i = 0; performance.now() < until; i++) {
        const due = started + (i / B_RATE) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        const d = delivery('gitlab', smallPayload, { deliveryId: randomUUID(), secret: b.secret });
        // Timed from when it was due, so a stalled loop shows in the latency instead of delaying the arrivals.
        bResults.push(postFrom(`${api.url}${receiverPath('gitlab')}?c=${b.connectionId}`, d.headers, d.body, '127.0.0.1').then((r) => ({ ...r, ms: performance.now() - due })));
      }
      const bs = await Promise.all(bResults);
      await Promise.all(aStreams);
      const cpu1 = threadCpuSeconds(api.pid);
      const after = await scrape(api.url);
      const wall = (performance.now() - started) / 1000;
      const statuses = (rs: { status: number }[]) => rs.reduce<Record<string, number>>((m, r) => ((m[r.status] = (m[r.status] ?? 0) + 1), m), {});
      return {
        mode,
        withA,
        wallSeconds: Math.round(wall * 100) / 100,
        b: { deliveries: bs.length, statuses: statuses(bs), latencyMs: latencySummary(bs.map((r) => r.ms)) },
        ...(withA ? { a: { bodies: aResults.length, statuses: statuses(aResults), latencyMs: latencySummary(aResults.map((r) => r.ms)) } } : {}),
        // The API's own view: its event loop's delay over the phase (from a 100 ms monitor: an idle loop reads ~100), and B's mean time in the receiver.
        api: { loopDelayMaxMs: after.loopDelayMaxMs, loopDelayP99Ms: after.loopDelayP99Ms, bAckMeanMs: Math.round(((after.ackSum - (before.ackSum || 0)) / (after.ackCount - (before.ackCount || 0))) * 1000 * 10) / 10 },
        apiCpuSeconds: { main: Math.round((cpu1.main - cpu0.main) * 100) / 100, otherThreads: Math.round((cpu1.helpers + cpu1.workflows + cpu1.sdkCore - cpu0.helpers - cpu0.workflows - cpu0.sdkCore) * 100) / 100 },
        loadAverage1m: [Math.round(load0 * 100) / 100, Math.round(os.loadavg()[0]! * 100) / 100],
      };
    };

    const results: Awaited<ReturnType<typeof phase>>[] = [];
    for (let round = 0; round < rounds; round++) {
      const order: (keyof typeof apis)[] = round % 2 === 0 ? ['loop', 'threads'] : ['threads', 'loop'];
      for (const mode of order) {
        const other = mode === 'loop' ? 'threads' : 'loop';
        apis[other].pause(true);
        apis[mode].pause(false);
        // A warm-up body and delivery (the thread starts at the first large body).
        await postFrom(`${apis[mode].url}${receiverPath('bitbucket')}?c=${a.connectionId}`, large.headers, large.body, '127.0.0.2');
        for (const withA of [false, true]) {
          const result = await phase(mode, withA);
          log(`round ${round + 1} ${mode} ${withA ? 'with A' : 'B alone'}: ${JSON.stringify(result)}`);
          results.push(result);
        }
      }
    }
    apis.loop.pause(false);
    apis.threads.pause(false);
    const summary = Object.fromEntries(
      (['loop', 'threads'] as const).flatMap((mode) =>
        [false, true].map((withA) => {
          const rs = results.filter((r) => r.mode === mode && r.withA === withA);
          return [
            `${mode}${withA ? 'WithA' : 'BAlone'}`,
            {
              bP50Ms: rs.map((r) => r.b.latencyMs.p50),
              bP99Ms: rs.map((r) => r.b.latencyMs.p99),
              bMaxMs: rs.map((r) => r.b.latencyMs.max),
              apiLoopDelayMaxMs: rs.map((r) => r.api.loopDelayMaxMs),
              apiBAckMeanMs: rs.map((r) => r.api.bAckMeanMs),
              aBodies: rs.map((r) => r.a?.bodies ?? 0),
              apiMainCpuSeconds: rs.map((r) => r.apiCpuSeconds.main),
              apiOtherThreadsCpuSeconds: rs.map((r) => r.apiCpuSeconds.otherThreads),
            },
          ];
        }),
      ),
    );
    const out = {
      date: new Date().toISOString(),
      machine: { cores: os.availableParallelism(), note: 'shared with other work; load average per phase in the rounds' },
      settings: { rounds, secondsPerPhase: seconds, bRatePerSecond: B_RATE, aConcurrency: A_CONCURRENCY, aBodyBytes: large.body.length, bBodyBytes: smallBytes, maxBodyBytes: MAX_BODY_BYTES },
      summary,
      // Peak resident set of each API over the whole run (its A bodies included).
      apiPeakRssMiB: { threads: stack.peakRssMiB().api, loop: loop.peakRssMiB().api },
      rounds: results,
    };
    const file = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results', 'big-body-stall.json');
    writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
    log(`summary: ${JSON.stringify(summary)}`);
    log(`written to ${file}`);
  } finally {
    await stack.stop();
  }
}

await main();
