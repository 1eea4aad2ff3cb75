/**
 * parseCost (api/webhooks/parse-cost.ts) against the heap JSON.parse really takes: for each body of
 * `MiB` (the real-shaped deliveries of bench/large-bodies.ts and JSON built to be costly once
 * parsed), the heap used before and after decoding and parsing it (after a full GC each, the value
 * held), and parseCost's count of it. parseCost must be at least the heap (ratio ≥ 1) for every
 * body, or a costly body could pass its bound.
 *
 * Run: node --expose-gc --import tsx bench/parse-cost.ts [MiB=8]   (writes bench/results/parse-cost.json)
 */
import { writeFileSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { parseCost } from '../api/webhooks/parse-cost.ts';
import { LARGE_BODIES } from './large-bodies.ts';

const MiB = 1024 * 1024;
const size = Number(process.argv[2] ?? 8) * MiB;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

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
  'nesting [[[…]]]': () => Buffer.from(`${'['.repeat(size / 2 - 1)}${']'.repeat(size / 2 - 1)}`),
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
for (const [name, make] of Object.entries(bodies)) {
  const body = make();
  const heap = heapOf(body);
  const started = performance.now();
  const cost = parseCost(body);
  const countMs = Math.round(performance.now() - started);
  const row = { name, bodyBytes: body.length, heapMiB: Math.round(heap / MiB), parseCostMiB: Math.round(cost / MiB), ratio: Math.round((cost / heap) * 100) / 100, heapPerByte: Math.round((heap / body.length) * 10) / 10, countMs };
  console.log(JSON.stringify(row));
  rows.push(row);
}
writeFileSync(new URL('./results/parse-cost.json', import.meta.url), `${JSON.stringify({ at: new Date().toISOString(), node: process.version, bodyBytes: size, rows }, null, 2)}\n`);
