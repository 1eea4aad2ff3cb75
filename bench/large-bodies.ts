/**
 * Deliveries of a given size for the body-thread benchmarks (bench/body-thread-heap.ts,
 * bench/body-thread-oom.ts): the recorded pushes of test/fixtures grown to the size the way a real
 * one grows (a GitHub push's commits and their file lists, GitLab's commits, Bitbucket's and Azure
 * DevOps' ref changes), the same with one non-ASCII character (the whole decoded text is then two
 * bytes a character) or CJK paths, and JSON built to be costly once parsed (`[{},{},…]`, `[[],[],…]`).
 */
import { randomUUID } from 'node:crypto';
import type { Provider } from '../lib/domain.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type DeliveryOptions, type Payload } from '../test/fakes/webhook-deliveries.ts';

export interface SizedDelivery {
  provider: Provider;
  headers: Record<string, string>;
  body: Buffer;
}

/** Where a delivery goes: its hook's secret and URL, the repository it names (default: the fixture's). */
export interface Target {
  options?: Partial<DeliveryOptions>;
  repository?: { externalId: string; fullName: string };
}

const hex = (i: number, salt: number) => (BigInt(i) * 2654435761n + BigInt(salt)).toString(16).padStart(40, '0').slice(-40);
const path = (i: number, cjk = false) => (cjk ? `源代码/模块${i % 97}/组件${i}/文件${i}.ts` : `packages/module-${i % 97}/src/components/widget-${i}/index.ts`);

/** `payload` with `grow(payload, n)` applied for the largest n whose JSON fits in maxBodyBytes. */
function fill(maxBodyBytes: number, target: Target, provider: Provider, base: Payload, grow: (payload: Payload, n: number) => void, unit: number): SizedDelivery {
  const start = target.repository ? withRepository(provider, base, target.repository) : base;
  const build = (n: number) => {
    const payload = structuredClone(start);
    grow(payload, n);
    const d = delivery(provider, payload, { deliveryId: randomUUID(), ...target.options });
    return { provider, headers: d.headers, body: Buffer.from(d.body) };
  };
  let n = Math.floor((maxBodyBytes - 8192) / unit);
  let made = build(n);
  while (made.body.length > maxBodyBytes) made = build((n = Math.floor(n * 0.99)));
  return made;
}

const github = (cjk: boolean, oneNonAscii: boolean) => (maxBodyBytes: number, target: Target) =>
  fill(
    maxBodyBytes,
    target,
    'github',
    fixture(PUSH_FIXTURES.github),
    (p, n) => {
      // GitHub sends at most 2,048 commits; a large push is large by its file lists.
      const commits = Math.min(2048, n);
      const files = Math.ceil(n / commits);
      p.commits = Array.from({ length: commits }, (_, c) => ({
        ...p.commits[0],
        id: hex(c, 1),
        tree_id: hex(c, 2),
        message: `${oneNonAscii && c === 0 ? 'Café: ' : ''}Refactor the widgets, part ${c}\n\nMoves each widget into a package of its own.`,
        url: `https://github.com/Codertocat/Hello-World/commit/${hex(c, 1)}`,
        added: [],
        removed: [],
        modified: Array.from({ length: files }, (_, f) => path(c * files + f, cjk)),
      }));
    },
    Buffer.byteLength(JSON.stringify(path(1_000_000, cjk))) + 1,
  );

const gitlab = (maxBodyBytes: number, target: Target) =>
  fill(
    maxBodyBytes,
    target,
    'gitlab',
    fixture(PUSH_FIXTURES.gitlab),
    (p, n) => {
      const commits = Math.min(20_000, n);
      const files = Math.ceil(n / commits);
      p.commits = Array.from({ length: commits }, (_, c) => ({
        ...p.commits[0],
        id: hex(c, 1),
        message: `Refactor the widgets, part ${c}\n`,
        title: `Refactor the widgets, part ${c}`,
        url: `https://gitlab.example.com/group/project/-/commit/${hex(c, 1)}`,
        added: [],
        removed: [],
        modified: Array.from({ length: files }, (_, f) => path(c * files + f)),
      }));
      p.total_commits_count = commits;
    },
    Buffer.byteLength(JSON.stringify(path(1_000_000))) + 1,
  );

const bitbucket = (short: boolean) => (maxBodyBytes: number, target: Target) =>
  fill(
    maxBodyBytes,
    target,
    'bitbucket',
    fixture(PUSH_FIXTURES.bitbucket),
    (p, n) => {
      const change = p.changes[0];
      p.changes = Array.from({ length: n }, (_, i) =>
        short
          ? // bench/big-body-stall.ts' body: the most ref changes the limit holds (their events pass twice the limit: 200 ignored once counted).
            { refId: `refs/heads/${i}`, fromHash: 'a', toHash: 'b' }
          : { ...change, ref: { ...change.ref, id: `refs/heads/feature/widget-${i}`, displayId: `feature/widget-${i}` }, refId: `refs/heads/feature/widget-${i}`, fromHash: hex(i, 1), toHash: hex(i, 2) },
      );
    },
    short ? 50 : 230,
  );

const azure = (maxBodyBytes: number, target: Target) =>
  fill(
    maxBodyBytes,
    target,
    'azure-devops',
    fixture(PUSH_FIXTURES['azure-devops']),
    (p, n) => {
      p.resource.refUpdates = Array.from({ length: n }, (_, i) => ({ name: `refs/heads/feature/widget-${i}`, oldObjectId: hex(i, 1), newObjectId: hex(i, 2) }));
    },
    140,
  );

/** A GitLab push whose `padding` is `unit` repeated to the limit: JSON.parse builds it all, the receiver reads none of it. */
const hostile = (unit: string) => (maxBodyBytes: number, target: Target): SizedDelivery => {
  const base = fixture(PUSH_FIXTURES.gitlab);
  const payload = target.repository ? withRepository('gitlab', base, target.repository) : base;
  const head = `${JSON.stringify(payload).slice(0, -1)},"padding":[`;
  const n = Math.floor((maxBodyBytes - head.length - 2) / unit.length);
  const d = delivery('gitlab', payload, { deliveryId: randomUUID(), ...target.options, rawBody: `${head}${unit.repeat(n)}0]}` });
  return { provider: 'gitlab', headers: d.headers, body: Buffer.from(d.body) };
};

/** Each body of at most `maxBodyBytes`, as delivered to `target`. */
export const LARGE_BODIES: Record<string, (maxBodyBytes: number, target: Target) => SizedDelivery> = {
  'github-files': github(false, false),
  'github-files-one-non-ascii': github(false, true),
  'github-files-cjk': github(true, false),
  'gitlab-commits': gitlab,
  'bitbucket-changes': bitbucket(false),
  'bitbucket-short-changes': bitbucket(true),
  'azure-devops-ref-updates': azure,
  'hostile-objects': hostile('{},'),
  'hostile-arrays': hostile('[],'),
};

