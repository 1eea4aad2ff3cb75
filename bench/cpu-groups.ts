/**
 * CPU groups for the benchmark's "pods" topology (bench/ingest.ts, --pods=1): each part of the stack
 * in a Linux CPU control group of its own, all of equal weight, as separate containers (or systemd
 * services) run. The kernel's scheduler then shares the cores between the groups first and between
 * a group's threads second, so a process with one busy thread (the API's acknowledging thread) is not
 * one runnable thread among the worker's and the Temporal server's dozens. Needs the cgroup `cpu`
 * controller writable (root; cgroup v1 `/sys/fs/cgroup/cpu`, or v2 with `cpu` in the root's
 * controllers); without it the topology is refused with the reason, not silently measured as shared.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface CpuGroups {
  /** Which hierarchy holds the groups, and where. */
  readonly where: string;
  /** Moves process `pid` (every thread of it; processes it starts later stay with it) into group `name`. */
  place(pid: number | undefined, name: string): void;
  /** The group each placed process is in now, read back from /proc (what the results file reports). */
  placements(): Record<string, string>;
  /** Moves what is left back where it came from and removes the groups. */
  remove(): void;
}

const V1_CPU = '/sys/fs/cgroup/cpu';
const V2_ROOT = '/sys/fs/cgroup';

export function createCpuGroups(label: string): CpuGroups {
  const v1 = existsSync(path.join(V1_CPU, 'cpu.shares'));
  const v2 = !v1 && existsSync(path.join(V2_ROOT, 'cgroup.controllers')) && readFileSync(path.join(V2_ROOT, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('cpu');
  if (!v1 && !v2) throw new Error('the pods topology needs the cgroup cpu controller (cgroup v1 /sys/fs/cgroup/cpu or v2 with cpu enabled): not found on this machine');
  const base = path.join(v1 ? V1_CPU : V2_ROOT, `forgelink-bench-${label}`);
  // Each placed process and the group it left, to put it back (v2 keeps processes in leaves, not the root).
  const origins = new Map<number, { group: string; name: string }>();
  try {
    if (v2) writeFileSync(path.join(V2_ROOT, 'cgroup.subtree_control'), '+cpu');
    mkdirSync(base, { recursive: true });
    if (v2) writeFileSync(path.join(base, 'cgroup.subtree_control'), '+cpu');
  } catch (error) {
    throw new Error(`the pods topology needs to create CPU groups under ${path.dirname(base)} (root): ${(error as Error).message}`);
  }

  const controllerLine = (pid: number): string | undefined =>
    readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((line) => (v1 ? /^\d+:([^:]*,)?cpu(,[^:]*)?:/.test(line) : line.startsWith('0::')));

  return {
    where: base,
    place(pid, name) {
      if (pid === undefined) return;
      const group = path.join(base, name);
      mkdirSync(group, { recursive: true });
      if (!origins.has(pid)) {
        const line = controllerLine(pid);
        origins.set(pid, { group: line ? path.join(v1 ? V1_CPU : V2_ROOT, line.slice(line.lastIndexOf(':') + 1)) : v1 ? V1_CPU : V2_ROOT, name });
      }
      origins.get(pid)!.name = name;
      // cgroup.procs takes a process: all its threads move, and threads and children it starts later are born there.
      writeFileSync(path.join(group, 'cgroup.procs'), String(pid));
    },
    placements() {
      const seen: Record<string, string> = {};
      for (const [pid, { name }] of origins) {
        try {
          const line = controllerLine(pid);
          seen[`${name} (pid ${pid})`] = line ? line.slice(line.lastIndexOf(':') + 1) : 'unknown';
        } catch {
          seen[`${name} (pid ${pid})`] = 'exited';
        }
      }
      return seen;
    },
    remove() {
      for (const [pid, { group }] of origins) {
        try {
          writeFileSync(path.join(group, 'cgroup.procs'), String(pid));
        } catch {
          // Exited, or its old group is gone: nothing to put back.
        }
      }
      for (const name of new Set([...origins.values()].map((o) => o.name))) {
        try {
          rmdirSync(path.join(base, name));
        } catch {
          // A process the benchmark started is still in it; the kernel removes nothing in use.
        }
      }
      try {
        rmdirSync(base);
      } catch {
        // As above.
      }
    },
  };
}
