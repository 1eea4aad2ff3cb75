/**
 * A small seeded PRNG (mulberry32). Each fuzz request draws from a generator of its own, derived
 * from the run's seed and the request's index, so request N is the same whatever ran before it
 * or beside it: `--seed=S --only=N` replays one request.
 */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The generator of request `index` of the run seeded `seed`. */
  static of(seed: number, index: number): Random {
    return new Random(Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b));
  }

  /** In [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }

  /** One key of `weights`, drawn in proportion to its weight. */
  weighted<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    let left = this.next() * entries.reduce((sum, [, w]) => sum + w, 0);
    for (const [key, weight] of entries) {
      left -= weight;
      if (left < 0) return key;
    }
    return entries[entries.length - 1]![0];
  }

  bytes(length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) out[i] = this.int(0, 255);
    return out;
  }

  hex(length: number): string {
    let out = '';
    for (let i = 0; i < length; i++) out += '0123456789abcdef'[this.int(0, 15)];
    return out;
  }

  /** A short string of troublesome characters: quotes, slashes, %, NUL, controls, astral and RTL code points. */
  nasty(maxLength = 12): string {
    const pieces = ['"', "'", '\\', '/', '..', '%', '%00', '\u0000', '\u0007', '\n', '\u202e', '\ud83d\ude00', '\ufeff', 'é', '*', '?', '[', '{', ' ', 'a', '0', '-1', 'null'];
    let out = '';
    const n = this.int(0, maxLength);
    for (let i = 0; i < n; i++) out += this.pick(pieces);
    return out;
  }
}
