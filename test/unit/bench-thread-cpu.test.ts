import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { threadCpuSeconds } from '../../bench/worker-usage.ts';

/**
 * The benchmarks' split of a process's CPU by thread (bench/worker-usage.ts): a Node thread the
 * process's JavaScript starts later (as the Temporal SDK starts its workflow thread) is counted as
 * `workflows`, not with V8's threads started with the process.
 */
describe('threadCpuSeconds', () => {
  it("counts a thread started by the process's JavaScript as `workflows` and the event loop as `main`", async () => {
    // The child waits past the half second that tells the threads apart, starts a thread that
    // burns ~400 ms of CPU, then says so and idles until killed.
    const child = spawn(
      process.execPath,
      [
        '-e',
        `const { Worker } = require('node:worker_threads');
         const burn = (ms) => { const end = Date.now() + ms; while (Date.now() < end); };
         setTimeout(() => {
           const w = new Worker("const end = Date.now() + 400; while (Date.now() < end); require('node:worker_threads').parentPort.postMessage('burnt'); setInterval(() => {}, 1000)", { eval: true });
           w.once('message', () => { burn(100); process.stdout.write('ready\\n'); });
         }, 800);
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await once(child.stdout!, 'data');
      const cpu = threadCpuSeconds(child.pid);
      expect(cpu.workflows).toBeGreaterThanOrEqual(0.3);
      expect(cpu.main).toBeGreaterThanOrEqual(0.08);
      expect(cpu.helpers).toBeLessThan(0.2);
      expect(cpu.sdkCore).toBe(0);
    } finally {
      child.kill();
    }
  });
});
