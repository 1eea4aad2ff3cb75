import { isMainThread, workerData } from 'node:worker_threads';
import { bodyPoolSizes, createBodyPool, serveBodyJobs, type BodyPool } from '../../api/webhooks/body-thread.ts';
import { moduleThread } from '../../lib/thread-pool.ts';

const OPEN = 1;
const END = 2;

/**
 * The receivers' body pool with a gate: each job waits on the thread, before the body's step, until
 * the test opens the gate (a SharedArrayBuffer's first Int32), so which large bodies are running
 * and which are waiting is decided by the test, not by how long a parse takes. Everything else is
 * the real pool and the real step (api/webhooks/body-thread.ts). `end` makes the threads waiting
 * at the gate (and any that reach it until it is opened) exit instead, as a thread that crashed.
 */
export function gatedBodyPool(threads = 1, deadlineMs?: number): { pool: BodyPool; open(): void; end(): void } {
  const gate = new SharedArrayBuffer(4);
  const pool = createBodyPool({ ...bodyPoolSizes(threads), ...(deadlineMs === undefined ? {} : { deadlineMs }) }, () => moduleThread(import.meta.url, { gatedBodyThread: gate }));
  return {
    pool,
    open() {
      Atomics.store(new Int32Array(gate), 0, OPEN);
      Atomics.notify(new Int32Array(gate), 0);
    },
    end() {
      Atomics.store(new Int32Array(gate), 0, END);
      Atomics.notify(new Int32Array(gate), 0);
    },
  };
}

if (!isMainThread && (workerData as { gatedBodyThread?: SharedArrayBuffer } | undefined)?.gatedBodyThread) {
  const gate = new Int32Array((workerData as { gatedBodyThread: SharedArrayBuffer }).gatedBodyThread);
  serveBodyJobs(() => {
    Atomics.wait(gate, 0, 0);
    if (Atomics.load(gate, 0) === END) process.exit(3);
  });
}
