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
    // burns 0.4 s of its own CPU time (read from /proc, so a loaded machine only makes it take
    // longer), burns 0.1 s on its event loop, then says so and idles until killed.
    const burn = `const { readFileSync } = require('node:fs');
      const threadCpu = () => { const s = readFileSync('/proc/thread-self/stat', 'utf8'); const f = s.slice(s.lastIndexOf(')') + 2).split(' '); return (Number(f[11]) + Number(f[12])) / 100; };
      const burn = (seconds) => { const until = threadCpu() + seconds; while (threadCpu() < until) for (let i = 0; i < 1e5; i++); };`;
    const child = spawn(
      process.execPath,
      [
        '-e',
        `${burn}
         const { Worker } = require('node:worker_threads');
         setTimeout(() => {
           const w = new Worker(${JSON.stringify(`${burn} burn(0.4); require('node:worker_threads').parentPort.postMessage('burnt'); setInterval(() => {}, 1000);`)}, { eval: true });
           w.once('message', () => { burn(0.1); process.stdout.write('ready\\n'); });
         }, 800);
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await once(child.stdout!, 'data');
      const cpu = threadCpuSeconds(child.pid);
      expect(cpu.workflows).toBeGreaterThanOrEqual(0.38);
      expect(cpu.main).toBeGreaterThanOrEqual(0.08);
      expect(cpu.helpers).toBeLessThan(0.2);
      expect(cpu.sdkCore).toBe(0);
    } finally {
      child.kill();
    }
  });
});
