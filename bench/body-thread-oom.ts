/**
 * A tenant's signed bodies built to be costly once parsed, sent again and again, against the API as
 * production runs it (bench/stack.ts: dist/, the defaults: webhooks.maxBodyBytes 25 MiB, one body
 * thread, a large body's parse bounded by maxParseCost). Tenant A's GitLab pushes of 25 MiB padded with
 * `[{},{},…]` (~560-720 MiB of heap to parse) fill its organization's places on the thread (threads +
 * 4 per thread: 5 in flight), each answered 413 once its cost is counted, unparsed;
 * tenant B's real-shaped Bitbucket pushes of 25 MiB (~110,000 ref changes, stored) are sent one at a
 * time: B alone, then with A. Reported: the answers, B's time to its answer, each 413's time, and the
 * API's peak RSS per phase (VmHWM, reset between phases), the last with both tenants keeping every
 * place of the pool's queue taken with bodies of the limit (A 5 in flight, B 4 at once).
 *
 * Run: npx tsx bench/body-thread-oom.ts [seconds=30]   (writes bench/results/body-thread-oom.json)
 */
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { maxParseCost } from '../lib/parse-cost.ts';
import type { Provider } from '../lib/domain.ts';
import { receiverPath } from '../test/fakes/webhook-deliveries.ts';
import { LARGE_BODIES } from './large-bodies.ts';
import { latencySummary, postFrom } from './measure.ts';
import { seedBenchTenant, startBenchStack } from './stack.ts';

const MAX_BODY_BYTES = 25 * 1024 * 1024;
const seconds = Number(process.argv[2] ?? 30);

async function main() {
  const log = (line: string) => console.log(line);
  const stack = await startBenchStack(log);
  try {
    // B's stored deliveries would each start a run recording ~110,000 events: the worker is frozen, this measures the API.
    stack.setWorkerPaused(true);
    const a = await seedBenchTenant(stack, 'gitlab', 'a', 'oom');
    const b = await seedBenchTenant(stack, 'bitbucket', 'b', 'oom');
    const url = (provider: Provider, connectionId: string) => `${stack.apiUrl}${receiverPath(provider)}?c=${connectionId}`;
    const costly = LARGE_BODIES['hostile-objects']!(MAX_BODY_BYTES, { options: { secret: a.secret }, repository: a.repository });
    // B's body is re-made per post (a delivery id of its own, so each is stored).
    const valid = () => LARGE_BODIES['bitbucket-changes']!(MAX_BODY_BYTES, { options: { secret: b.secret, deliveryId: randomUUID() }, repository: b.repository });
    const bBodies = Array.from({ length: 4 }, valid);
    log(`A's body ${costly.body.length} bytes, B's ${bBodies[0]!.body.length} bytes; parse bound ${maxParseCost(MAX_BODY_BYTES)} bytes`);
    const statuses = (rs: { status: number }[]) => rs.reduce<Record<string, number>>((m, r) => ((m[r.status] = (m[r.status] ?? 0) + 1), m), {});

    /** For `seconds`: A keeps `aInFlight` costly bodies posted, B `bInFlight` valid ones (each B stream re-sends its own body: redeliveries after the first). */
    const phase = async (name: string, aInFlight: number, bInFlight: number) => {
      stack.resetPeakRss();
      const load0 = os.loadavg()[0]!;
      const until = performance.now() + seconds * 1000;
      const aResults: { status: number; ms: number }[] = [];
      const bResults: { status: number; ms: number }[] = [];
      await Promise.all([
        ...Array.from({ length: aInFlight }, async () => {
          while (performance.now() < until) aResults.push(await postFrom(url('gitlab', a.connectionId), costly.headers, costly.body, '127.0.0.1'));
        }),
        ...Array.from({ length: bInFlight }, async (_, i) => {
          // Bitbucket bodies count against the unverified budget per sender address (a quarter of 64 MiB, and always one body): an address each.
          while (performance.now() < until) bResults.push(await postFrom(url('bitbucket', b.connectionId), bBodies[i]!.headers, bBodies[i]!.body, `127.0.0.${2 + i}`));
        }),
      ]);
      const result = {
        phase: name,
        a: { posts: aResults.length, statuses: statuses(aResults), ms: latencySummary(aResults.map((r) => r.ms)) },
        b: { posts: bResults.length, statuses: statuses(bResults), ms: latencySummary(bResults.map((r) => r.ms)) },
        apiPeakRssMiB: stack.peakRssMiB().api,
        loadAverage1m: [Math.round(load0 * 100) / 100, Math.round(os.loadavg()[0]! * 100) / 100],
      };
      log(JSON.stringify(result));
      return result;
    };
    // Warm-up: the thread starts at the first large body.
    log(`warm-up: ${JSON.stringify(await postFrom(url('bitbucket', b.connectionId), bBodies[0]!.headers, bBodies[0]!.body, '127.0.0.2'))}`);
    const phases = [];
    for (let round = 0; round < 2; round++) {
      phases.push(await phase('B alone', 0, 1));
      phases.push(await phase('A 5 in flight, B 1', 5, 1));
    }
    phases.push(await phase('queue full: A 5 in flight, B 4', 5, 4));
    const services = stack.services();
    const out = {
      date: new Date().toISOString(),
      machine: { cores: os.availableParallelism(), note: 'shared with other work' },
      settings: { seconds, maxBodyBytes: MAX_BODY_BYTES, maxParseCost: maxParseCost(MAX_BODY_BYTES), aBodyBytes: costly.body.length, bBodyBytes: bBodies[0]!.body.length, runMode: stack.runMode },
      apiExited: services.api,
      phases,
    };
    writeFileSync(new URL('./results/body-thread-oom.json', import.meta.url), `${JSON.stringify(out, null, 2)}\n`);
  } finally {
    stack.setWorkerPaused(false);
    await stack.stop();
  }
}

await main();
