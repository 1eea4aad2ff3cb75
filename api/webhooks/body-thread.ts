import { isMainThread, workerData } from 'node:worker_threads';
import { createThreadPool, moduleThread, serveThreadJobs, type ThreadPool } from '../../lib/thread-pool.ts';
import { readDeliveryBody, type BodyJob, type BodyOutcome } from './delivery-body.ts';

/**
 * The threads that read large webhook bodies (api/webhooks/delivery-body.ts) off the event loop:
 * a tenant holds its own hook's credential, so it can send signed bodies of webhooks.maxBodyBytes
 * back to back, and decoding and parsing each took the one event loop every other tenant's
 * deliveries are answered on 0.4-1 s. This module is also the threads' entry.
 */
export type BodyPool = ThreadPool<BodyJob, BodyOutcome>;

export interface BodyPoolSizes {
  /**
   * Threads (default 1: one large body parsed at a time, as on the event loop before, so the
   * process's memory peak stays what it was; the point is isolation, not throughput).
   */
  threads: number;
  /** Jobs waiting for a thread, in all. */
  maxQueued: number;
  /** Jobs of one connection (or, without one, one provider's) running or waiting. */
  maxPerKey: number;
}

export function bodyPoolSizes(threads = 1): BodyPoolSizes {
  return { threads, maxQueued: 4 * threads, maxPerKey: threads + 1 };
}

export function createBodyPool(sizes: BodyPoolSizes): BodyPool {
  return createThreadPool<BodyJob, BodyOutcome>({ ...sizes, spawn: () => moduleThread(import.meta.url, { webhookBodyThread: true }) });
}

if (!isMainThread && (workerData as { webhookBodyThread?: boolean } | undefined)?.webhookBodyThread) {
  serveThreadJobs<BodyJob, BodyOutcome>((job, progress) => {
    const result = readDeliveryBody(job, progress);
    // A refused body goes back for a check against reloaded credentials.
    return { result, ...(result.kind === 'refused' ? { transfer: [result.body.buffer as ArrayBuffer] } : {}) };
  });
}
