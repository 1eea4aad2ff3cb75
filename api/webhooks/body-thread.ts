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
  /**
   * Jobs waiting for a thread, in all. A job's key is its organization (GitHub App deliveries and
   * legacy hooks': one provider's, all tenants alike: the installation is in the body, not known
   * before it is parsed). Every job is a verified body, so none is refused for its key alone: it
   * waits its round-robin turn, and a full queue is shared out by displacing the newest job of the
   * key holding the most (lib/thread-pool.ts).
   */
  maxQueued: number;
  /** A job's deadline on its thread (bodyThreadDeadlineMs): past it the thread is ended and replaced, and the delivery answered 503. */
  deadlineMs?: number;
}

/**
 * How long a body may take on its thread: 1 s per MiB of webhooks.maxBodyBytes, at least 10 s (25 s
 * at 25 MiB). A 25 MiB body took 0.05-1.6 s to count (bench/parse-cost.ts, every shape) and ~0.4-1 s
 * to parse, so this leaves ~10 times that for a loaded machine and the threads' lower priority;
 * past it the thread is ended (lib/thread-pool.ts), so nothing a tenant sends holds the shared
 * thread longer. Answered 503 with Retry-After, not 413: the pool cannot tell a slow body from a
 * slow machine, and the count is linear in the body (test/unit/parse-cost.test.ts), so a legitimate
 * delivery that ran out of time on a busy machine is delivered again rather than refused for good.
 */
export function bodyThreadDeadlineMs(maxBodyBytes: number): number {
  return Math.max(10_000, Math.ceil((1000 * maxBodyBytes) / (1024 * 1024)));
}

export function bodyPoolSizes(threads = 1, maxBodyBytes?: number): BodyPoolSizes {
  return { threads, maxQueued: 4 * threads, ...(maxBodyBytes === undefined ? {} : { deadlineMs: bodyThreadDeadlineMs(maxBodyBytes) }) };
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
