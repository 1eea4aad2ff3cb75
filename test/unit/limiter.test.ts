import { describe, expect, it } from 'vitest';
import { createKeyedLimiter, createLimiter } from '../../lib/limiter.ts';

/** A task that runs until released, recording when it started. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

describe('createLimiter', () => {
  it('runs at most `limit` tasks at once, the rest in arrival order, and frees a slot when a task fails', async () => {
    const limiter = createLimiter(2);
    const gates = Array.from({ length: 5 }, gate);
    const started: number[] = [];
    let running = 0;
    let peak = 0;
    const results = gates.map((g, i) =>
      limiter.run(async () => {
        started.push(i);
        running++;
        peak = Math.max(peak, running);
        await g.opened;
        running--;
        if (i === 1) throw new Error('task 1 failed');
        return i;
      }),
    );
    await Promise.resolve();
    expect(started).toEqual([0, 1]);
    gates[1]!.open();
    await expect(results[1]).rejects.toThrow('task 1 failed');
    expect(started).toEqual([0, 1, 2]);
    for (const g of gates) g.open();
    expect(await Promise.all([results[0], results[2], results[3], results[4]])).toEqual([0, 2, 3, 4]);
    expect(started).toEqual([0, 1, 2, 3, 4]);
    expect(peak).toBe(2);
  });

  it('refuses a limit that is not a positive integer', () => {
    expect(() => createLimiter(0)).toThrow(RangeError);
    expect(() => createLimiter(1.5)).toThrow(RangeError);
  });
});

describe('createKeyedLimiter', () => {
  /** Tasks of `key` that each run until their gate opens, recording the order they started in. */
  function tasks(limiter: ReturnType<typeof createKeyedLimiter>, started: string[]) {
    return (key: string, n: number) =>
      Array.from({ length: n }, (_, i) => {
        const g = gate();
        const name = `${key}${i}`;
        const done = limiter.run(key, async () => {
          started.push(name);
          await g.opened;
          if (name === 'a1') throw new Error('a1 failed');
          return name;
        });
        return { ...g, done };
      });
  }
  /** Lets every task that can start do so. */
  const settle = () => new Promise((resolve) => setImmediate(resolve));

  it("a freed place goes to the key with the fewest tasks running, not to the earliest queued of another key's", async () => {
    const started: string[] = [];
    const of = tasks(createKeyedLimiter(2), started);
    // Organization a takes both places and queues two more; b comes after them.
    const a = of('a', 4);
    const b = of('b', 2);
    await settle();
    expect(started).toEqual(['a0', 'a1']);
    a[0]!.open();
    await settle();
    // b has none running: its first task starts before a's queued ones.
    expect(started).toEqual(['a0', 'a1', 'b0']);
    a[1]!.open();
    await expect(a[1]!.done).rejects.toThrow('a1 failed');
    await settle();
    // One each running (a none, b one): a's next.
    expect(started).toEqual(['a0', 'a1', 'b0', 'a2']);
    // b0 ends: b has none running, a one: b's next, though a3 waited longer.
    b[0]!.open();
    await settle();
    expect(started).toEqual(['a0', 'a1', 'b0', 'a2', 'b1']);
    for (const g of [...a, ...b]) g.open();
    expect(await Promise.all([a[0]!.done, a[2]!.done, a[3]!.done, b[0]!.done, b[1]!.done])).toEqual(['a0', 'a2', 'a3', 'b0', 'b1']);
    expect(started).toEqual(['a0', 'a1', 'b0', 'a2', 'b1', 'a3']);
  });

  it('among keys with as many running, the earliest waiting starts first', async () => {
    const started: string[] = [];
    const of = tasks(createKeyedLimiter(1), started);
    const a = of('a', 2);
    const b = of('b', 1);
    const c = of('c', 1);
    await settle();
    // a0 ends: a, b and c have none running; a1 came first.
    a[0]!.open();
    await settle();
    expect(started).toEqual(['a0', 'a1']);
    a[1]!.open();
    await expect(a[1]!.done).rejects.toThrow('a1 failed');
    await settle();
    expect(started).toEqual(['a0', 'a1', 'b0']);
    for (const g of [...b, ...c]) g.open();
    await Promise.all([...b, ...c].map((t) => t.done));
    expect(started).toEqual(['a0', 'a1', 'b0', 'c0']);
  });

  it('one key alone takes every place, its tasks in arrival order; the places are free again once all have ended', async () => {
    const limiter = createKeyedLimiter(2);
    const started: string[] = [];
    const of = tasks(limiter, started);
    const a = of('a', 4);
    await settle();
    expect(started).toEqual(['a0', 'a1']);
    a[0]!.open();
    await settle();
    expect(started).toEqual(['a0', 'a1', 'a2']);
    for (const g of a) g.open();
    await Promise.allSettled(a.map((t) => t.done));
    // Both places free: two tasks of a new key start at once.
    const b = of('b', 2);
    await settle();
    expect(started.slice(4)).toEqual(['b0', 'b1']);
    for (const g of b) g.open();
    await Promise.all(b.map((t) => t.done));
  });

  it('refuses a limit that is not a positive integer', () => {
    expect(() => createKeyedLimiter(0)).toThrow(RangeError);
    expect(() => createKeyedLimiter(2.5)).toThrow(RangeError);
  });
});
