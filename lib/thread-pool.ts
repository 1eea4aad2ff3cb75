import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parentPort, Worker, type Transferable } from 'node:worker_threads';

/**
 * A few worker threads that run CPU-heavy jobs (parsing a large webhook body) off the event loop
 * that answers everybody. Bounded: at most `threads` threads and `maxQueued` jobs waiting. A key
 * alone may take every place; when the queue is full, a job of a key holding fewer places than the
 * key holding the most takes the newest waiting job's place of that key (which is refused), so one
 * key cannot fill the queue against the others. Waiting jobs are
 * taken round-robin between keys: a key with many waiting never keeps another key's job waiting
 * for more than one job of its own per thread.
 */

/** The pool is full, or the job's place was given to another key's: nothing about the job itself; try again later. */
export class PoolBusy extends Error {
  override name = 'PoolBusy';
}

/** The thread running the job ended (crashed, ran out of memory, was terminated) before answering. */
export class PoolThreadFailed extends Error {
  override name = 'PoolThreadFailed';
}

/**
 * The job ran past the pool's deadline: its thread was ended (a new one starts for the next job).
 * Ending it stops its JavaScript at once, but not a JSON.parse in progress: V8 finishes the parse
 * before the thread exits (measured: a 60 MiB parse of objects ran 10.9 s after terminate(); a body
 * of webhooks.maxBodyBytes, 25 MiB, parses in under 3 s), and the next job waits for it.
 */
export class PoolJobTimedOut extends Error {
  override name = 'PoolJobTimedOut';
}

/** The job threw in its thread: the error's name and message, as the thread saw them. */
export class PoolJobFailed extends Error {
  override name = 'PoolJobFailed';
  constructor(
    message: string,
    readonly errorName: string,
  ) {
    super(message);
  }
}

/** Messages between the pool and a thread (serveThreadJobs speaks the thread's side). */
type ToThread<Job> = { id: number; job: Job };
type FromThread<Result> = { id: number; kind: 'started' } | { id: number; kind: 'progress' } | { id: number; kind: 'done'; result: Result } | { id: number; kind: 'failed'; name: string; message: string };

interface Pending<Job, Result> {
  id: number;
  key: string;
  job: Job;
  transfer: readonly Transferable[];
  onProgress: (() => void) | undefined;
  /** runHeld's: the job keeps its place after it is answered, until the caller releases it. */
  hold: boolean;
  resolve(result: Result): void;
  reject(error: Error): void;
}

export interface ThreadPoolOptions {
  /** Starts one thread (moduleThread, usually). Threads start when a job needs one, and keep the process alive only while they run one. */
  spawn: () => Worker;
  threads: number;
  maxQueued: number;
  /**
   * Milliseconds a job may run on its thread, from when the thread starts it (a new thread's
   * start-up and module loading not included; absent: no deadline). Past it the thread is ended and
   * replaced (once it has exited: a JSON.parse in progress finishes first), and the job rejected
   * with PoolJobTimedOut: JavaScript on a thread cannot be interrupted otherwise.
   */
  deadlineMs?: number;
}

export function createThreadPool<Job, Result>(options: ThreadPoolOptions) {
  const { threads, maxQueued, deadlineMs } = options;
  const idle: Worker[] = [];
  const running = new Map<Worker, Pending<Job, Result>>();
  // The deadline timers of running jobs, by thread.
  const deadlines = new Map<Worker, NodeJS.Timeout>();
  const stopDeadline = (thread: Worker) => {
    clearTimeout(deadlines.get(thread));
    deadlines.delete(thread);
  };
  let started = 0;
  // Waiting jobs by key; the map's order is the round-robin order (a key served goes to the back).
  const waiting = new Map<string, Pending<Job, Result>[]>();
  let queued = 0;
  // Answered runHeld jobs whose places their callers have not released yet.
  let held = 0;
  const perKey = new Map<string, number>();
  let nextId = 0;
  let closed = false;

  const settle = (pending: Pending<Job, Result>) => {
    const left = (perKey.get(pending.key) ?? 1) - 1;
    if (left > 0) perKey.set(pending.key, left);
    else perKey.delete(pending.key);
  };

  const spawn = (): Worker => {
    const thread = options.spawn();
    thread.unref();
    started++;
    thread.on('message', (message: FromThread<Result>) => {
      const pending = running.get(thread);
      if (!pending || pending.id !== message.id) return;
      if (message.kind === 'started') return startDeadline(thread, pending);
      if (message.kind === 'progress') return pending.onProgress?.();
      running.delete(thread);
      stopDeadline(thread);
      if (message.kind === 'done' && pending.hold) held++;
      else settle(pending);
      if (message.kind === 'done') pending.resolve(message.result);
      else pending.reject(new PoolJobFailed(message.message, message.name));
      // An idle thread keeps no process alive; one running a job does, as any pending I/O would.
      thread.unref();
      idle.push(thread);
      dispatch();
    });
    const ended = (error: Error) => {
      const pending = running.get(thread);
      running.delete(thread);
      stopDeadline(thread);
      const at = idle.indexOf(thread);
      if (at >= 0) idle.splice(at, 1);
      started--;
      if (pending) {
        settle(pending);
        pending.reject(new PoolThreadFailed(`the thread ended while running the job: ${error.message}`));
      }
      dispatch();
    };
    // An uncaught error ends the thread ('error', then 'exit'); ended runs once, whichever comes first.
    let gone = false;
    thread.on('error', (error) => gone || ((gone = true), ended(error)));
    thread.on('exit', (code) => gone || ((gone = true), ended(new Error(`exit code ${code}`))));
    return thread;
  };

  /** The next waiting job, round-robin between keys. */
  const next = (): Pending<Job, Result> | undefined => {
    for (const [key, jobs] of waiting) {
      const job = jobs.shift()!;
      waiting.delete(key);
      if (jobs.length > 0) waiting.set(key, jobs);
      queued--;
      return job;
    }
    return undefined;
  };

  const dispatch = () => {
    while (!closed && queued > 0 && (idle.length > 0 || started < threads)) {
      const thread = idle.pop() ?? spawn();
      const pending = next()!;
      try {
        thread.postMessage({ id: pending.id, job: pending.job } satisfies ToThread<Job>, pending.transfer as Transferable[]);
      } catch (error) {
        // The job cannot be cloned (or its buffer moved): its own failure, the thread stays free.
        idle.push(thread);
        settle(pending);
        pending.reject(error as Error);
        continue;
      }
      running.set(thread, pending);
      thread.ref();
    }
  };

  /** The job's deadline, from the thread's word that it started it. */
  const startDeadline = (thread: Worker, pending: Pending<Job, Result>) => {
    if (deadlineMs === undefined) return;
    const timer = setTimeout(() => {
      if (running.get(thread) !== pending) return;
      // Its place is freed now; the thread's exit (started--, then dispatch) follows its termination.
      running.delete(thread);
      deadlines.delete(thread);
      settle(pending);
      pending.reject(new PoolJobTimedOut(`the job ran past the pool's deadline (${deadlineMs} ms): its thread was ended`));
      void thread.terminate();
    }, deadlineMs);
    timer.unref();
    deadlines.set(thread, timer);
  };

  return {
    /**
     * Runs `job` on a thread; `transfer` (the job's ArrayBuffers) moves to the thread. Rejects with
     * PoolBusy at once when the pool is full and no key holds more places than `key` would
     * (nothing is transferred then), or later when a job of a key holding fewer takes its place
     * while it waits,
     * PoolThreadFailed when the thread ends, PoolJobFailed when the job throws. `onProgress` is
     * called each time the job reports progress (serveThreadJobs' `progress`).
     */
    run(key: string, job: Job, transfer: readonly Transferable[] = [], onProgress?: () => void): Promise<Result> {
      return enqueue(key, job, transfer, onProgress, false).then(({ result }) => result);
    },
    /**
     * As run, but the job keeps its place once answered (counted as running or waiting are, in all
     * and for its key) until `release` is called: what its result holds (a large delivery's events'
     * JSON) stays bounded by the pool's places until the caller is done with it.
     */
    runHeld(key: string, job: Job, transfer: readonly Transferable[] = [], onProgress?: () => void): Promise<{ result: Result; release: () => void }> {
      return enqueue(key, job, transfer, onProgress, true);
    },
    /** Jobs running and waiting now, and answered ones still held. */
    size: () => ({ running: running.size, waiting: queued, threads: started, held }),
    /** Ends the threads; jobs running or waiting are rejected with PoolBusy. */
    async close(): Promise<void> {
      closed = true;
      for (const thread of [...deadlines.keys()]) stopDeadline(thread);
      for (const jobs of waiting.values()) for (const pending of jobs) pending.reject(new PoolBusy('the pool is closed'));
      waiting.clear();
      queued = 0;
      const all = [...idle, ...running.keys()];
      for (const pending of running.values()) pending.reject(new PoolBusy('the pool is closed'));
      running.clear();
      idle.length = 0;
      await Promise.all(all.map((thread) => thread.terminate()));
    },
  };

  function enqueue(key: string, job: Job, transfer: readonly Transferable[], onProgress: (() => void) | undefined, hold: boolean): Promise<{ result: Result; release: () => void }> {
    if (closed) return Promise.reject(new PoolBusy('the pool is closed'));
    const own = perKey.get(key) ?? 0;
    const free = idle.length + (threads - started);
    // Held places count against the same bound as running and waiting jobs.
    if ((free === 0 && queued >= maxQueued) || running.size + queued + held >= threads + maxQueued) {
      if (queued === 0) return Promise.reject(new PoolBusy(`${held} answered jobs are held and ${running.size} running (at most ${threads + maxQueued} in all)`));
      // The queue is full: the key holding the most places, if it would still hold more than this
      // one with the job added, gives up its newest waiting job; otherwise this job is refused. So
      // one key flooding the queue cannot keep another key's first jobs out.
      const [largest, jobs] = [...waiting].reduce((most, entry) => ((perKey.get(entry[0]) ?? 0) > (perKey.get(most[0]) ?? 0) ? entry : most));
      if ((perKey.get(largest) ?? 0) <= own + 1) return Promise.reject(new PoolBusy(`${queued} jobs are waiting already (at most ${maxQueued})`));
      const displaced = jobs.pop()!;
      if (jobs.length === 0) waiting.delete(largest);
      queued--;
      settle(displaced);
      displaced.reject(new PoolBusy(`displaced from the full queue by another key's job (${maxQueued} waiting at most)`));
    }
    perKey.set(key, own + 1);
    return new Promise<{ result: Result; release: () => void }>((resolve, reject) => {
      const pending: Pending<Job, Result> = {
        id: nextId++,
        key,
        job,
        transfer,
        onProgress,
        hold,
        resolve: (result) => {
          let released = !hold;
          const release = () => {
            if (released) return;
            released = true;
            held--;
            settle(pending);
            dispatch();
          };
          resolve({ result, release });
        },
        reject,
      };
      const jobs = waiting.get(key);
      if (jobs) jobs.push(pending);
      else waiting.set(key, [pending]);
      queued++;
      dispatch();
    });
  }
}

export type ThreadPool<Job, Result> = ReturnType<typeof createThreadPool<Job, Result>>;

/**
 * A thread running the module at `moduleUrl` (its own import.meta.url), with `workerData`. Built,
 * that is a .js file; from source (tsx, tests) the thread registers tsx's loader before importing
 * it, as api/intake-relay-thread.ts does: on Node 20 a worker gets neither its parent's loader nor
 * one from `--import` in its execArgv.
 */
export function moduleThread(moduleUrl: string, workerData: unknown): Worker {
  const entry = fileURLToPath(moduleUrl);
  if (!entry.endsWith('.ts')) return new Worker(entry, { workerData });
  const tsx = pathToFileURL(path.join(path.dirname(createRequire(import.meta.url).resolve('tsx/package.json')), 'dist/esm/api/index.mjs')).href;
  const source = `import(${JSON.stringify(tsx)}).then(({ register }) => (register(), import(${JSON.stringify(pathToFileURL(entry).href)})));`;
  return new Worker(source, { eval: true, workerData });
}

/**
 * The thread's side: answers each job with `handle`'s result (its `transfer` moved back) or the
 * error it threw. `progress()` tells the pool the job got somewhere (createThreadPool's onProgress).
 */
export function serveThreadJobs<Job, Result>(handle: (job: Job, progress: () => void) => { result: Result; transfer?: Transferable[] }): void {
  const port = parentPort!;
  port.on('message', ({ id, job }: ToThread<Job>) => {
    // The pool's deadline for the job runs from here.
    port.postMessage({ id, kind: 'started' } satisfies FromThread<Result>);
    let answer: { result: Result; transfer?: Transferable[] };
    try {
      answer = handle(job, () => port.postMessage({ id, kind: 'progress' } satisfies FromThread<Result>));
    } catch (error) {
      const { name, message } = error instanceof Error ? error : { name: 'Error', message: String(error) };
      port.postMessage({ id, kind: 'failed', name, message } satisfies FromThread<Result>);
      return;
    }
    port.postMessage({ id, kind: 'done', result: answer.result } satisfies FromThread<Result>, answer.transfer ?? []);
  });
}
