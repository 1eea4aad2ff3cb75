import { serveThreadJobs } from '../../lib/thread-pool.ts';

/**
 * The thread test/unit/thread-pool.test.ts runs jobs on: each job says what to do. `gate` (a
 * SharedArrayBuffer's first Int32) holds a job until the test opens it, so which jobs are running
 * and which are waiting is decided by the test, not by timing.
 */
export type TestJob =
  | { kind: 'echo'; name: string; body?: Uint8Array; gate?: SharedArrayBuffer }
  | { kind: 'throw'; message: string }
  | { kind: 'crash' }
  | { kind: 'progress' };

serveThreadJobs<TestJob, { name: string; bytes?: number }>((job, progress) => {
  switch (job.kind) {
    case 'echo':
      if (job.gate) Atomics.wait(new Int32Array(job.gate), 0, 0);
      return { result: { name: job.name, ...(job.body ? { bytes: job.body.byteLength } : {}) } };
    case 'throw':
      throw new RangeError(job.message);
    case 'crash':
      // Ends the thread as an uncaught error would, before any answer.
      process.exit(3);
    case 'progress':
      progress();
      return { result: { name: 'progressed' } };
  }
});
