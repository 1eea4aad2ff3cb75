/** What the scheduler says about the stack's processes: CPU used and time spent waiting for a CPU. */
import { readdirSync, readFileSync } from 'node:fs';

/** The stack's processes this benchmark started (children of this process): the API, the worker and the Temporal dev server. */
export function stackProcesses(): Record<'api' | 'worker' | 'temporal', number | undefined> {
  const found: Record<'api' | 'worker' | 'temporal', number | undefined> = { api: undefined, worker: undefined, temporal: undefined };
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== process.pid) continue;
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (/worker\/main\.[jt]s/.test(cmdline)) found.worker = Number(entry);
      else if (/api\/main\.[jt]s/.test(cmdline)) found.api = Number(entry);
      else if (cmdline.includes('start-dev')) found.temporal = Number(entry);
    } catch {
      // Gone while we looked.
    }
  }
  return found;
}

/**
 * CPU time a process has used and the time its threads were ready to run but waited for a CPU
 * (the scheduler's run-queue wait, /proc/PID/task/TID/schedstat), both in ms, summed over its threads.
 * On a machine with more runnable threads than cores the wait is what the load adds to a step.
 */
export function schedulerMs(pid: number | undefined): { cpuMs: number; waitingForCpuMs: number } {
  let cpu = 0;
  let wait = 0;
  if (pid === undefined) return { cpuMs: Number.NaN, waitingForCpuMs: Number.NaN };
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const [onCpu, waiting] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
      cpu += onCpu!;
      wait += waiting!;
    } catch {
      // The thread ended while we looked.
    }
  }
  return { cpuMs: cpu / 1e6, waitingForCpuMs: wait / 1e6 };
}
