import { afterEach, describe, expect, it } from 'vitest';
import { createThreadPool, moduleThread, PoolBusy, PoolJobFailed, PoolJobTimedOut, PoolThreadFailed, type ThreadPool } from '../../lib/thread-pool.ts';
import type { TestJob } from './thread-pool-thread.ts';

/**
 * The pool large webhook bodies are read on (lib/thread-pool.ts): real threads running
 * thread-pool-thread.ts. Jobs wait on gates the test opens, so what runs and what waits is
 * decided here, never by timing.
 */
const THREAD = new URL('./thread-pool-thread.ts', import.meta.url).href;
type Pool = ThreadPool<TestJob, { name: string; bytes?: number }>;

const pools: Pool[] = [];
afterEach(async () => {
  for (const pool of pools.splice(0)) await pool.close();
});

function pool(sizes: { threads: number; maxQueued: number; deadlineMs?: number }): Pool {
  const created = createThreadPool<TestJob, { name: string; bytes?: number }>({ ...sizes, spawn: () => moduleThread(THREAD, {}) });
  pools.push(created);
  return created;
}

/** A gate for echo jobs: closed until opened. */
function gate() {
  const buffer = new SharedArrayBuffer(4);
  return {
    buffer,
    open() {
      Atomics.store(new Int32Array(buffer), 0, 1);
      Atomics.notify(new Int32Array(buffer), 0);
    },
  };
}

/** Settles once the pool's jobs are as `check` wants them. */
async function until(p: Pool, check: (size: ReturnType<Pool['size']>) => boolean) {
  while (!check(p.size())) await new Promise((resolve) => setTimeout(resolve, 5));
}

describe('thread pool', () => {
  it('runs a job on a thread, moving its transferred buffer there, and reports progress', async () => {
    const p = pool({ threads: 1, maxQueued: 1 });
    const body = new Uint8Array(1024).fill(7);
    const running = p.run('k', { kind: 'echo', name: 'one', body }, [body.buffer]);
    // Moved, not copied: the caller's view is detached at once.
    expect(body.byteLength).toBe(0);
    expect(await running).toEqual({ name: 'one', bytes: 1024 });
    let progressed = 0;
    expect(await p.run('k', { kind: 'progress' }, [], () => progressed++)).toEqual({ name: 'progressed' });
    expect(progressed).toBe(1);
  });

  it('refuses a job at once (PoolBusy, nothing transferred) when the queue is full, and runs the queued ones once a thread is free', async () => {
    const p = pool({ threads: 1, maxQueued: 1 });
    const g = gate();
    const first = p.run('a', { kind: 'echo', name: 'first', gate: g.buffer });
    const second = p.run('b', { kind: 'echo', name: 'second' });
    await until(p, (s) => s.running === 1 && s.waiting === 1);
    const body = new Uint8Array(16);
    await expect(p.run('c', { kind: 'echo', name: 'third', body }, [body.buffer])).rejects.toBeInstanceOf(PoolBusy);
    expect(body.byteLength).toBe(16);
    g.open();
    expect(await first).toEqual({ name: 'first' });
    expect(await second).toEqual({ name: 'second' });
    expect(await p.run('c', { kind: 'echo', name: 'third' })).toEqual({ name: 'third' });
  });

  it("lets one key take every place, none refused for its key alone, and takes waiting jobs round-robin between keys", async () => {
    const p = pool({ threads: 1, maxQueued: 3 });
    const g = gate();
    const done: string[] = [];
    const run = (key: string, name: string, job: TestJob = { kind: 'echo', name }) => p.run(key, job).then((r) => void done.push(r.name));
    const all = [run('a', 'a1', { kind: 'echo', name: 'a1', gate: g.buffer })];
    await until(p, (s) => s.running === 1);
    // a holds the thread and the whole queue: every place of the pool.
    all.push(run('a', 'a2'), run('a', 'a3'), run('a', 'a4'));
    expect(p.size()).toMatchObject({ running: 1, waiting: 3 });
    // Full, and a alone: a fifth of a's is refused; b's takes a's newest waiting place (a4, refused).
    await expect(p.run('a', { kind: 'echo', name: 'a5' })).rejects.toBeInstanceOf(PoolBusy);
    const b1 = run('b', 'b1');
    await expect(all.pop()).rejects.toBeInstanceOf(PoolBusy);
    g.open();
    await Promise.all([...all, b1]);
    expect(done).toEqual(['a1', 'a2', 'b1', 'a3']);
  });

  it("gives a full queue's place of the key holding the most to another key's job, and refuses a job when no key holds more", async () => {
    const p = pool({ threads: 1, maxQueued: 2 });
    const g = gate();
    const done: string[] = [];
    const run = (key: string, name: string, job: TestJob = { kind: 'echo', name }) => p.run(key, job).then((r) => void done.push(r.name));
    const a1 = run('a', 'a1', { kind: 'echo', name: 'a1', gate: g.buffer });
    await until(p, (s) => s.running === 1);
    const a2 = run('a', 'a2');
    const a3 = p.run('a', { kind: 'echo', name: 'a3' });
    // Full: b (no place) takes a's newest waiting place; a3 is refused.
    const b1 = run('b', 'b1');
    await expect(a3).rejects.toBeInstanceOf(PoolBusy);
    expect(p.size()).toMatchObject({ running: 1, waiting: 2 });
    // a holds 2, b would hold 2: nobody gives way, b2 is refused, and so is a4.
    await expect(p.run('b', { kind: 'echo', name: 'b2' })).rejects.toBeInstanceOf(PoolBusy);
    await expect(p.run('a', { kind: 'echo', name: 'a4' })).rejects.toBeInstanceOf(PoolBusy);
    g.open();
    await Promise.all([a1, a2, b1]);
    expect(done).toEqual(['a1', 'a2', 'b1']);
  });

  it('keeps a runHeld job\'s place, once answered, until it is released', async () => {
    const p = pool({ threads: 1, maxQueued: 1 });
    const first = await p.runHeld('a', { kind: 'echo', name: 'a1' });
    expect(first.result.name).toBe('a1');
    const second = await p.runHeld('b', { kind: 'echo', name: 'b1' });
    expect(p.size()).toMatchObject({ running: 0, waiting: 0, held: 2 });
    // Two places held (one thread + one waiting): a third job is refused until one is released.
    await expect(p.run('c', { kind: 'echo', name: 'c1' })).rejects.toBeInstanceOf(PoolBusy);
    first.release();
    first.release();
    expect(p.size()).toMatchObject({ held: 1 });
    expect(await p.run('c', { kind: 'echo', name: 'c1' })).toMatchObject({ name: 'c1' });
    second.release();
    expect(p.size()).toMatchObject({ held: 0 });
  });

  it('rejects the job of a thread that ends (PoolThreadFailed) and runs the next job on a new thread', async () => {
    const p = pool({ threads: 1, maxQueued: 2 });
    const g = gate();
    const blocker = p.run('a', { kind: 'echo', name: 'blocker', gate: g.buffer });
    await until(p, (s) => s.running === 1);
    // Queued behind the blocker, then the crash: the crash takes the thread, the job after it gets another.
    const crash = p.run('a', { kind: 'crash' });
    const after = p.run('b', { kind: 'echo', name: 'after' });
    g.open();
    expect(await blocker).toEqual({ name: 'blocker' });
    await expect(crash).rejects.toBeInstanceOf(PoolThreadFailed);
    expect(await after).toEqual({ name: 'after' });
    expect(p.size()).toEqual({ running: 0, waiting: 0, threads: 1, held: 0 });
  });

  it('rejects a job that throws with its error (PoolJobFailed), keeping the thread', async () => {
    const p = pool({ threads: 1, maxQueued: 1 });
    const failed = p.run('a', { kind: 'throw', message: 'Invalid string length' });
    await expect(failed).rejects.toBeInstanceOf(PoolJobFailed);
    await expect(failed).rejects.toMatchObject({ message: 'Invalid string length', errorName: 'RangeError' });
    expect(await p.run('a', { kind: 'echo', name: 'next' })).toEqual({ name: 'next' });
  });

  it('ends the thread of a job past its deadline (PoolJobTimedOut), frees its place at once and runs the next job on a new thread', async () => {
    const p = pool({ threads: 1, maxQueued: 1, deadlineMs: 300 });
    // Answered before the deadline: as without one.
    expect(await p.run('a', { kind: 'echo', name: 'quick' })).toEqual({ name: 'quick' });
    // Held on a gate nobody opens: only the deadline ends it (a body the thread would work on for minutes).
    const stuck = p.run('a', { kind: 'echo', name: 'stuck', gate: gate().buffer });
    const waiting = p.run('a', { kind: 'echo', name: 'next' });
    await expect(stuck).rejects.toBeInstanceOf(PoolJobTimedOut);
    expect(await waiting).toEqual({ name: 'next' });
    expect(p.size()).toMatchObject({ running: 0, waiting: 0, threads: 1 });
  });
});
