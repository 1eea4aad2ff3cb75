/**
 * `npx tsx bench/cpuprofile-summary.ts FILE.cpuprofile [--top=N] [--from=S --to=S]`: where a
 * process's CPU went, from a V8 profile (`BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=DIR'`): self
 * time by function and by package or file, and the idle share. `--from`/`--to` (seconds since the
 * profile began) keep a window of it, e.g. one phase of a benchmark.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A package (node_modules/<name>), Node's own code, or a file of ours relative to the repository. */
export function ownerOf(url: string): string {
  if (!url) return '(native / V8)';
  if (url.startsWith('node:')) return url;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return `pkg:${pkg[1]}`;
  const file = url.replace(/^file:\/\//, '');
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
  return file.startsWith(root) ? path.relative(root, file) : file;
}

export function summarize(profile: Profile, window: { fromS?: number; toS?: number } = {}) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfByFunction = new Map<string, number>();
  const selfByOwner = new Map<string, number>();
  let t = profile.startTime;
  let total = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i]!;
    const at = (t - profile.startTime) / 1e6;
    if ((window.fromS !== undefined && at < window.fromS) || (window.toS !== undefined && at > window.toS)) continue;
    // A sample stands for the interval up to the next one.
    const dt = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i]!)!;
    const { functionName, url, lineNumber } = node.callFrame;
    total += dt;
    if (functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const owner = ownerOf(url);
    const fn = `${functionName || '(anonymous)'} ${owner}${url ? `:${lineNumber + 1}` : ''}`;
    selfByFunction.set(fn, (selfByFunction.get(fn) ?? 0) + dt);
    selfByOwner.set(owner, (selfByOwner.get(owner) ?? 0) + dt);
  }
  const busy = total - idle;
  const rows = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1]).map(([name, us]) => ({ name, ms: Math.round(us / 100) / 10, share: Math.round((us / busy) * 1000) / 10 }));
  return { wallMs: Math.round(total / 1000), busyMs: Math.round(busy / 1000), idleMs: Math.round(idle / 1000), byOwner: rows(selfByOwner), byFunction: rows(selfByFunction) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith('--'));
  if (!file) throw new Error('usage: tsx bench/cpuprofile-summary.ts FILE.cpuprofile [--top=N] [--from=S] [--to=S]');
  const flag = (name: string) => {
    const value = args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
    return value === undefined ? undefined : Number(value);
  };
  const top = flag('top') ?? 30;
  const summary = summarize(JSON.parse(readFileSync(file, 'utf8')) as Profile, { fromS: flag('from'), toS: flag('to') });
  console.log(`wall ${summary.wallMs} ms, busy ${summary.busyMs} ms (main thread), idle ${summary.idleMs} ms`);
  console.log('\nself time by package / file:');
  for (const r of summary.byOwner.slice(0, top)) console.log(`${String(r.ms).padStart(9)} ms ${String(r.share).padStart(5)} %  ${r.name}`);
  console.log('\nself time by function:');
  for (const r of summary.byFunction.slice(0, top)) console.log(`${String(r.ms).padStart(9)} ms ${String(r.share).padStart(5)} %  ${r.name}`);
}
