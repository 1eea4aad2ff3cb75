/**
 * Whether a Worker's heap limit (resourceLimits) bounds JSON.parse of a costly body: the worker
 * decodes and parses `{"a":[<unit>,<unit>,…]}` of MiB with maxOldGenerationSizeMb (and 16 MiB of
 * young generation); prints what the worker answered (its heap used, or ERR_WORKER_OUT_OF_MEMORY),
 * and the process's peak RSS. Node 20.20.2, 2026-12-07: the parse is not stopped at the limit (V8
 * raises it 16 MiB at a time while JSON.parse runs), and the process often aborts ("FATAL ERROR:
 * Reached heap limit", exit 134): objects 25 MiB at 128/256/512 MiB, arrays 25/128, objects 12/128,
 * even zeros 25/64 (its parse done, 131 MiB used); objects 4/64 and 8/64 and arrays 8/64 end with
 * ERR_WORKER_OUT_OF_MEMORY, but 8/64 after 13 s at 326 MiB RSS. Why the receivers count a body's
 * parse instead (lib/parse-cost.ts).
 *
 * Run: node bench/worker-heap-limit.mjs <objects|arrays|zeros> <MiB> <maxOldGenerationSizeMb>
 */
import { readFileSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';

if (isMainThread) {
  const [shape, mib, limit] = [process.argv[2] ?? 'objects', Number(process.argv[3] ?? 25), Number(process.argv[4] ?? 256)];
  const unit = { objects: '{},', arrays: '[],', zeros: '0,' }[shape];
  const body = new TextEncoder().encode(`{"a":[${unit.repeat(Math.floor((mib * 1024 * 1024) / unit.length) - 4)}0]}`);
  const started = performance.now();
  const worker = new Worker(new URL(import.meta.url), { resourceLimits: { maxOldGenerationSizeMb: limit, maxYoungGenerationSizeMb: 16 } });
  const report = (fields) => console.log(JSON.stringify({ shape, mib, limit, ...fields, ms: Math.round(performance.now() - started) }));
  worker.on('message', (m) => (report({ outcome: 'parsed', ...m }), void worker.terminate()));
  worker.on('error', (e) => report({ outcome: 'error', code: e.code }));
  worker.on('exit', (code) => console.log(JSON.stringify({ exit: code, peakRssMiB: Math.round(Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024) })));
  worker.postMessage(body, [body.buffer]);
} else {
  parentPort.once('message', (body) => {
    const value = JSON.parse(new TextDecoder().decode(body));
    parentPort.postMessage({ usedMiB: Math.round(getHeapStatistics().used_heap_size / 1048576), keys: Object.keys(value).length });
  });
}
