import { getPriority, setPriority } from 'node:os';
import { isMainThread, workerData, type Worker } from 'node:worker_threads';
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
   * Threads (default 1: one large body parsed at a time, as on the event loop before; each has a
   * heap of its own, ~180 MiB more peak RSS with 25 MiB bodies; the point is isolation, not throughput).
   */
  threads: number;
  /** Jobs waiting for a thread, in all. */
  maxQueued: number;
  /**
   * Jobs of one organization (GitHub App deliveries and legacy hooks': one provider's, all tenants
   * alike: the installation is in the body, not known before it is parsed) running or waiting. Every
   * job is a verified body, so none is refused for its key alone: it waits its round-robin turn,
   * and a full queue is shared out by displacing the newest job of the key holding the most.
   */
  maxPerKey: number;
}

export function bodyPoolSizes(threads = 1): BodyPoolSizes {
  return { threads, maxQueued: 4 * threads, maxPerKey: threads + 4 * threads };
}

/** The receivers' pool; `spawn` starts one thread serving serveBodyJobs (this module, unless a test's thread holds jobs on a gate). */
export function createBodyPool(sizes: BodyPoolSizes, spawn: () => Worker = () => moduleThread(import.meta.url, { webhookBodyThread: true })): BodyPool {
  return createThreadPool<BodyJob, BodyOutcome>({ ...sizes, spawn });
}

/** The thread's side: each job is the body's step; `before` runs first (a test's gate). */
export function serveBodyJobs(before: () => void = () => {}): void {
  // The receiver checks a large body's signature before it sends it here, with no credentials: a
  // job is never refused on the thread, so no body comes back.
  serveThreadJobs<BodyJob, BodyOutcome>((job, progress) => {
    before();
    return { result: readDeliveryBody(job, progress) };
  });
}

/**
 * The threads' nice value. On Linux it is a thread's own (setpriority with 0), and the CPU the API
 * gets is shared by its threads: on a loaded machine a body being parsed took CPU the event loop
 * was waiting for (the loop's longest delay with 25 MiB bodies on the thread 958-1,037 ms without
 * it, 319-1,921 ms with it, load 18-25: README, Hostile content). The loop answering everybody
 * comes first; a large body waits.
 */
const BODY_THREAD_NICE = 10;

if (!isMainThread && (workerData as { webhookBodyThread?: boolean } | undefined)?.webhookBodyThread) {
  try {
    setPriority(0, Math.max(BODY_THREAD_NICE, getPriority(0)));
  } catch {
    // Not allowed here (some sandboxes): the thread runs at the process's priority.
  }
  serveBodyJobs();
}
