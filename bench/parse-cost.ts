/**
 * parseCost (lib/parse-cost.ts) against the heap JSON.parse really takes: for each body of
 * `MiB` (the real-shaped deliveries of bench/large-bodies.ts and JSON built to be costly once
 * parsed), the heap used before and after decoding and parsing it (after a full GC each, the value
 * held), and parseCost's count of it. parseCost must be at least the heap (ratio ≥ 1) for every
 * body, or a costly body could pass its bound (a row under it is printed as UNDER and the exit code is 1).
 * Bodies: the real-shaped deliveries, JSON built to be costly, the shapes a review found counted
 * under their heap, and a random mix of those (seeded: the same bodies every run).
 *
 * Run: node --expose-gc --import tsx bench/parse-cost.ts [MiB=8]   (writes bench/results/parse-cost.json)
 */
import { writeFileSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { parseCost } from '../lib/parse-cost.ts';
import { LARGE_BODIES } from './large-bodies.ts';

const MiB = 1024 * 1024;
const size = Number(process.argv[2] ?? 8) * MiB;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

/** A seeded generator: the same bodies every run. */
let seed = 12345;
const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
const twoLetterKeys = Array.from({ length: 64 }, (_, i) => String.fromCharCode(65 + (i >> 3)) + String.fromCharCode(97 + (i & 7)));
/** `count` of 64 two-letter keys in a random order: each new order builds new maps. */
const pick = (count: number) => {
  const keys = new Set<string>();
  while (keys.size < count) keys.add(twoLetterKeys[Math.floor(random() * 64)]!);
  return [...keys];
};
/** The shapes a review found counted under their heap (2026-12-07): array-index keys, new key orders, \u escapes past \u00ff. */
const reviewed: Record<string, () => string> = {
  'array-index key {"9":null}': () => '{"9":null}',
  'array-index key {"99":null}': () => '{"99":null}',
  'array-index key {"1023":0}': () => '{"1023":0}',
  'array-index keys {"0":null,…,"8":null}': () => '{"0":null,"1":null,"2":null,"3":null,"4":null,"5":null,"6":null,"7":null,"8":null}',
  'two array-index keys {"1":null,"99":null}': () => '{"1":null,"99":null}',
  'nested array-index keys {"9":{"9":{"9":null}}}': () => '{"9":{"9":{"9":null}}}',
  '3 of 64 keys in random orders': () => `{${pick(3).map((k) => `"${k}":null`).join(',')}}`,
  '4 of 64 keys in random orders': () => `{${pick(4).map((k) => `"${k}":0`).join(',')}}`,
  '6 of 64 keys in random orders, {} values': () => `{${pick(6).map((k) => `"${k}":{}`).join(',')}}`,
  'an array-index key and 3 of 64 keys': () => `{"9":null,${pick(3).map((k) => `"${k}":null`).join(',')}}`,
  'strings with \\u0100': () => `"\\u0100${'x'.repeat(200)}"`,
  'objects of 200 keys': () => `{${Array.from({ length: 200 }, (_, i) => `"k${i}":0`).join(',')}}`,
};
const reviewedUnits = Object.values(reviewed);

/** `unit(i)` repeated inside `{"padding":[…]}` to `size` bytes. */
function repeated(unit: (i: number) => string): Buffer {
  const parts: string[] = [];
  let length = 14;
  for (let i = 0; length < size - 64; i++) {
    const part = unit(i);
    parts.push(part);
    length += part.length + 1;
  }
  return Buffer.from(`{"padding":[${parts.join(',')}]}`);
}

const bodies: Record<string, () => Buffer> = {
  'objects {}': () => repeated(() => '{}'),
  'arrays []': () => repeated(() => '[]'),
  'zeros 0': () => repeated(() => '0'),
  'doubles 1.5': () => repeated(() => '1.5'),
  'empty strings ""': () => repeated(() => '""'),
  'one-character strings "x"': () => repeated(() => '"x"'),
  'distinct short strings': () => repeated((i) => `"${i.toString(36)}"`),
  'objects {"a":0}': () => repeated(() => '{"a":0}'),
  'objects of distinct keys {"k<i>":0}': () => repeated((i) => `{"k${i.toString(36)}":0}`),
  'objects of distinct keys {"k<i>":{}}': () => repeated((i) => `{"k${i.toString(36)}":{}}`),
  'arrays [0]': () => repeated(() => '[0]'),
  'arrays [[]]': () => repeated(() => '[[]]'),
  'objects {"a":[],"b":{}}': () => repeated(() => '{"a":[],"b":{}}'),
  'non-ASCII strings "é"': () => repeated(() => '"é"'),
  ...Object.fromEntries(Object.entries(reviewed).map(([name, unit]) => [name, () => repeated(unit)])),
  'a random mix of the reviewed shapes': () => repeated(() => reviewedUnits[Math.floor(random() * reviewedUnits.length)]!()),
  'nesting [[[…]]]': () => Buffer.from(`${'['.repeat(size / 2 - 1)}${']'.repeat(size / 2 - 1)}`),
  // The second review's: one key sequence emitted at every length, {S[:1]} … {S[:124]}, a new sequence
  // each time (V8 starts an object's maps from a root per number of named keys).
  'key sequences at every length {S[:1]} … {S[:124]}': () => {
    const pairs = Array.from({ length: 82 * 82 }, (_, i) => String.fromCharCode(33 + (i % 82)) + String.fromCharCode(33 + Math.floor(i / 82))).filter((k) => !/["\\0-9]/.test(k));
    const parts: string[] = [];
    let length = 14;
    for (let family = 0; length < size - 64; family++) {
      const rest = pairs.filter((_, i) => i !== family % pairs.length);
      for (let i = rest.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [rest[i], rest[j]] = [rest[j]!, rest[i]!];
      }
      const sequence = [pairs[family % pairs.length]!, ...rest.slice(0, 123)];
      for (let n = 1; n <= sequence.length && length < size - 64; n++) {
        const part = `{${sequence.slice(0, n).map((k) => `"${k}":0`).join(',')}}`;
        parts.push(part);
        length += part.length + 1;
      }
    }
    return Buffer.from(`{"padding":[${parts.join(',')}]}`);
  },
  ...Object.fromEntries(Object.entries(LARGE_BODIES).filter(([name]) => !name.startsWith('hostile')).map(([name, make]) => [name, () => make(size, {}).body])),
};

/** The heap the body's text and parsed value hold (after a full GC, both still referenced), in a frame of its own so nothing of it outlives the call. */
function heapOf(body: Buffer): number {
  gc!();
  gc!();
  const before = getHeapStatistics().used_heap_size;
  const text = new TextDecoder().decode(body);
  const value = JSON.parse(text) as unknown;
  gc!();
  gc!();
  const heap = getHeapStatistics().used_heap_size - before;
  // Both held until measured.
  return value === undefined || text.length < 0 ? 0 : heap;
}

const rows = [];
let under = false;
for (const [name, make] of Object.entries(bodies)) {
  const body = make();
  const heap = heapOf(body);
  const started = performance.now();
  const cost = parseCost(body);
  const countMs = Math.round(performance.now() - started);
  const row = { name, bodyBytes: body.length, heapMiB: Math.round(heap / MiB), parseCostMiB: Math.round(cost / MiB), ratio: Math.round((cost / heap) * 100) / 100, heapPerByte: Math.round((heap / body.length) * 10) / 10, countMs };
  console.log(JSON.stringify(row));
  rows.push(row);
  if (cost < heap) {
    under = true;
    console.error(`UNDER: ${name} counted ${cost} bytes, took ${heap}`);
  }
}
writeFileSync(new URL('./results/parse-cost.json', import.meta.url), `${JSON.stringify({ at: new Date().toISOString(), node: process.version, bodyBytes: size, rows }, null, 2)}\n`);
// A shape counted under its heap is a bound a body of it could pass.
if (under) process.exitCode = 1;
