/**
 * `tsx bench/profile-summary.ts FILE.cpuprofile… [--top=N] [--skip=SECONDS]`: where a thread spent
 * its time, from a V8 CPU profile (`BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=DIR' npm run bench --
 * ingest` writes one per thread of each process it starts): self time by owner (forgelink's own
 * files, each npm package, Node's internals and native bindings, V8's garbage collector), by file
 * and by function, in ms and as a share of the time the thread was not idle; and the time spent
 * inside each forgelink function (its callees included). `--skip` leaves out the first seconds
 * (start-up: loading modules, connecting).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Who a frame's code belongs to: forgelink, an npm package (scope included), Node, or V8's pseudo-frames. */
export function ownerOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : 'node (native bindings)';
  if (url.startsWith('node:')) return 'node (internals)';
  const file = url.startsWith('file://') ? fileURLToPath(url) : url;
  const modules = file.lastIndexOf('/node_modules/');
  if (modules >= 0) {
    const parts = file.slice(modules + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  if (file.includes('workflow-bundle')) return 'workflow bundle';
  return file.startsWith(ROOT) ? 'forgelink' : file;
}

function fileOf(url: string): string {
  if (!url) return '';
  const file = url.startsWith('file://') ? fileURLToPath(url) : url;
  return file.startsWith(ROOT) ? path.relative(ROOT, file) : file;
}

export function summarize(profile: CpuProfile, top = 25, skipSeconds = 0) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const selfUs = new Map<number, number>();
  // Each forgelink function's time with its callees: a sample counts once for every distinct such frame on its stack.
  const inclusive = new Map<string, number>();
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    at += us;
    if (at - profile.startTime < skipSeconds * 1e6) return;
    selfUs.set(id, (selfUs.get(id) ?? 0) + us);
    const seen = new Set<string>();
    for (let node: number | undefined = id; node !== undefined; node = parent.get(node)) {
      const { functionName, url, lineNumber } = byId.get(node)!.callFrame;
      if (ownerOf(url, functionName) !== 'forgelink') continue;
      const key = `${functionName || '(anonymous)'} ${fileOf(url)}:${lineNumber + 1}`;
      if (!seen.has(key)) inclusive.set(key, (inclusive.get(key) ?? 0) + us);
      seen.add(key);
    }
  });
  const owners = new Map<string, number>();
  const files = new Map<string, number>();
  const functions = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    totalUs += us;
    if (functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const add = (map: Map<string, number>, key: string) => map.set(key, (map.get(key) ?? 0) + us);
    add(owners, ownerOf(url, functionName));
    add(files, fileOf(url) || functionName);
    add(functions, `${functionName || '(anonymous)'} ${fileOf(url)}${url ? `:${lineNumber + 1}` : ''}`);
  }
  const busyUs = totalUs - idleUs;
  const table = (map: Map<string, number>) =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, ms: Math.round(us / 1000), percentOfBusy: Math.round((us / busyUs) * 1000) / 10 }));
  return {
    wallMs: Math.round((profile.endTime - profile.startTime) / 1000 - skipSeconds * 1000),
    busyMs: Math.round(busyUs / 1000),
    idleMs: Math.round(idleUs / 1000),
    byOwner: table(owners),
    byFile: table(files),
    byFunction: table(functions),
    forgelinkInclusive: table(inclusive),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const files = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const flag = (name: string, fallback: number) => Number(new RegExp(`^--${name}=(\\d+)$`).exec(process.argv.find((a) => a.startsWith(`--${name}=`)) ?? '')?.[1] ?? fallback);
  const top = flag('top', 25);
  const skip = flag('skip', 0);
  if (!files.length) throw new Error('usage: tsx bench/profile-summary.ts FILE.cpuprofile… [--top=N]');
  for (const file of files) {
    const s = summarize(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, top, skip);
    console.log(`${file}: wall ${s.wallMs} ms, busy ${s.busyMs} ms, idle ${s.idleMs} ms (self time, main thread)`);
    for (const [title, rows] of [['self time by owner', s.byOwner], ['self time by file', s.byFile], ['self time by function', s.byFunction], ['forgelink functions, callees included', s.forgelinkInclusive]] as const) {
      console.log(`\n  ${title}:`);
      for (const row of rows) console.log(`  ${String(row.ms).padStart(8)} ms ${row.percentOfBusy.toFixed(1).padStart(5)} %  ${row.name}`);
    }
    console.log('');
  }
}
