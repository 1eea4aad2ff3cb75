/**
 * At most `limit` tasks at a time, the rest wait their turn in arrival order. Shared by every
 * repository listing of a worker, so the provider calls in flight stay bounded however many
 * connections are listed at once.
 */
export interface Limiter {
  run<T>(task: () => Promise<T>): Promise<T>;
  readonly limit: number;
}

export function createLimiter(limit: number): Limiter {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`a limiter needs a positive integer limit, got ${limit}`);
  let active = 0;
  const waiting: (() => void)[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next();
    else active--;
  };
  return {
    limit,
    async run(task) {
      if (active < limit) active++;
      // A released slot passes straight to the next waiter: `active` does not change.
      else await new Promise<void>((resolve) => waiting.push(resolve));
      try {
        return await task();
      } finally {
        release();
      }
    },
  };
}

/**
 * A Limiter whose tasks have a key (the worker's repository listings: their organization), and
 * whose freed place goes to the waiting task of the key with the fewest tasks running, the
 * earliest among equals, instead of to the earliest of all. One key alone still takes every place
 * (one organization's refresh lists at full speed on a worker nobody else uses), but a key with
 * none running waits for the next task to end, however many of another key's are queued before
 * it, and from there the keys waiting share the places evenly. Listing calls go to the tenants'
 * servers, which may take 30 s a page: in arrival order one organization listing several
 * connections at once kept enough calls queued to hold every other organization's listings behind
 * them, round after round.
 */
export interface KeyedLimiter {
  run<T>(key: string, task: () => Promise<T>): Promise<T>;
  readonly limit: number;
}

export function createKeyedLimiter(limit: number): KeyedLimiter {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`a limiter needs a positive integer limit, got ${limit}`);
  let active = 0;
  let arrivals = 0;
  /** Each key's tasks running and waiting (in arrival order); a key with neither is forgotten. */
  const keys = new Map<string, { running: number; waiting: { arrival: number; start: () => void }[] }>();
  /** The key whose first waiting task starts next: the fewest running, then the earliest waiting. */
  const nextKey = () => {
    let best: { running: number; waiting: { arrival: number; start: () => void }[] } | undefined;
    for (const key of keys.values()) {
      const first = key.waiting[0];
      if (first && (!best || key.running < best.running || (key.running === best.running && first.arrival < best.waiting[0]!.arrival))) best = key;
    }
    return best;
  };
  return {
    limit,
    async run(key, task) {
      let own = keys.get(key);
      if (!own) keys.set(key, (own = { running: 0, waiting: [] }));
      if (active < limit) {
        active++;
        own.running++;
      } else {
        // Started by release: the place passes straight to it (`active` does not change).
        await new Promise<void>((resolve) => own!.waiting.push({ arrival: arrivals++, start: resolve }));
      }
      try {
        return await task();
      } finally {
        own.running--;
        const next = nextKey();
        if (next) {
          next.running++;
          next.waiting.shift()!.start();
        } else active--;
        if (own.running === 0 && own.waiting.length === 0) keys.delete(key);
      }
    },
  };
}
