/**
 * Where reading a webhook body on a thread starts to pay (webhooks.threadBodyBytes): for signed
 * Bitbucket pushes of growing size, the event loop's CPU and the wall time of the body's step
 * (api/webhooks/delivery-body.ts) run on the loop, against the same step on the receivers' pool
 * (one thread, started before). The loop's CPU is this thread's (/proc/self/task/<pid>/stat), so
 * the thread's own work is not counted in it.
 *
 * Run: npx tsx bench/body-thread-threshold.ts [rounds=5]
 */
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createBodyPool } from '../api/webhooks/body-thread.ts';
import { readDeliveryBody, type BodyJob } from '../api/webhooks/delivery-body.ts';
import { percentile } from './measure.ts';

const SECRET = 'a-connection-secret-of-32-bytes-or-more';
const rounds = Number(process.argv[2] ?? 5);
const SIZES = [16, 64, 128, 256, 512, 1024, 4096].map((k) => k * 1024);

/** A push of ref changes with long commit-like fields, `bytes` long: what a busy repository's delivery looks like. */
function body(bytes: number): Uint8Array {
  const change = (i: number) => ({ refId: `refs/heads/feature/${i}`, ref: { id: `refs/heads/feature/${i}`, displayId: `feature/${i}`, type: 'BRANCH' }, fromHash: 'a'.repeat(40), toHash: 'b'.repeat(40), type: 'UPDATE' });
  const one = JSON.stringify(change(1000)).length + 1;
  const changes = Array.from({ length: Math.max(1, Math.floor((bytes - 400) / one)) }, (_, i) => change(i));
  return new Uint8Array(Buffer.from(JSON.stringify({ eventKey: 'repo:refs_changed', actor: { name: 'a' }, repository: { id: 1, slug: 'r', name: 'r', project: { key: 'P' } }, changes })));
}

/** This thread's CPU so far (ms): the event loop's, without the pool's thread. */
function loopCpuMs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const pool = createBodyPool({ threads: 1, maxQueued: 4 });
const job = (b: Uint8Array): BodyJob => ({
  provider: 'bitbucket',
  headers: { 'content-type': 'application/json', 'x-event-key': 'repo:refs_changed', 'x-request-id': 'r-1', 'x-hub-signature': `sha256=${createHmac('sha256', SECRET).update(b).digest('hex')}` },
  body: b,
  credentials: [{ secret: SECRET }],
  maxEventsBytes: 50 * 1024 * 1024,
  bodyDigest: true,
  serialize: true,
});
// The thread's start (and its first module loads) is paid once per process, not per delivery.
await pool.run('warm', job(body(1024)), []);

const rows: Record<string, unknown>[] = [];
for (const size of SIZES) {
  const b = body(size);
  const repeat = Math.max(5, Math.round((4 * 1024 * 1024) / size));
  const measure = async (where: 'loop' | 'thread') => {
    const walls: number[] = [];
    const cpu0 = loopCpuMs();
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < repeat; i++) {
        const copy = b.slice();
        const t0 = performance.now();
        if (where === 'loop') readDeliveryBody({ ...job(copy), bodyDigest: false, serialize: false });
        else await pool.run('k', job(copy), [copy.buffer]);
        walls.push(performance.now() - t0);
      }
    }
    return { wallP50Ms: Math.round(percentile(walls, 50) * 1000) / 1000, loopCpuMsEach: Math.round(((loopCpuMs() - cpu0) / walls.length) * 1000) / 1000 };
  };
  // Alternating, so drift on a shared machine falls on both.
  const loop = await measure('loop');
  const thread = await measure('thread');
  const loopAgain = await measure('loop');
  const row = { kib: size / 1024, loop, thread, loopAgain };
  rows.push(row);
  console.log(JSON.stringify(row));
}
await pool.close();
