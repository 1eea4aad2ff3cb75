import { readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The memory limit of the container (the Linux cgroup) this process runs in, in bytes: the lowest
 * of cgroup v2's `memory.max` and cgroup v1's `memory.limit_in_bytes` over the process's cgroup and
 * its ancestors as /proc/self/cgroup names them, and the cgroup mount's own root (what a container
 * without a cgroup namespace sees of its own cgroup). Undefined when none is set ("max", v1's
 * page-rounded 2^63, which is past a safe integer) or none can be read: no file, not Linux,
 * unreadable or garbled content. A kernel OOM kill comes at this limit, whatever V8's heap limit.
 * `root` is where / is (tests point it at a directory of their own).
 */
export function containerMemoryLimit(root = '/'): number | undefined {
  const read = (file: string): string | undefined => {
    try {
      return readFileSync(path.join(root, file), 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const lines = read('proc/self/cgroup')?.split('\n') ?? [];
  // "hierarchy-id:controllers:path"; the path may hold colons.
  const entries = lines.map((line) => line.split(':')).map(([, controllers, ...rest]) => ({ controllers: controllers?.split(',') ?? [], path: rest.join(':') }));
  const unified = entries.find((e) => e.controllers.length === 1 && e.controllers[0] === '')?.path;
  const v1 = entries.find((e) => e.controllers.includes('memory'))?.path;
  const limits = [
    ...cgroupDirs('sys/fs/cgroup', unified).map((dir) => limitIn(read(path.join(dir, 'memory.max')))),
    ...cgroupDirs('sys/fs/cgroup/memory', v1).map((dir) => limitIn(read(path.join(dir, 'memory.limit_in_bytes')))),
  ].filter((limit): limit is number => limit !== undefined);
  return limits.length > 0 ? Math.min(...limits) : undefined;
}

/**
 * The mount's root, then each directory from it down to the cgroup's own. A path that climbs
 * (`/../…`: the cgroup lies outside this cgroup namespace) or is missing gives the root alone.
 */
function cgroupDirs(mount: string, cgroup: string | undefined): string[] {
  const parts = (cgroup ?? '').split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) return [mount];
  return [mount, ...parts.map((_, i) => path.join(mount, ...parts.slice(0, i + 1)))];
}

function limitIn(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d+$/.test(text)) return undefined;
  const bytes = Number(text);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}
