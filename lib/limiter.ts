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
