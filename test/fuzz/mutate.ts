import type { Provider } from '../../lib/domain.ts';
import type { Random } from './random.ts';

/**
 * Mutations of a JSON body, named so a run can count them and a failure can say what was done.
 * Structural ones edit the parsed value (a field retyped, removed, grown huge, a key repeated,
 * a value buried under deep nesting); byte ones edit the serialized bytes (truncation, flips,
 * invalid UTF-8). The result is bytes: a body no JSON serializer would write.
 */

/** Every field api/webhooks/normalize.ts reads, per provider (numbers index arrays). */
export const NORMALIZER_FIELDS: Record<Provider, string[]> = {
  github: [
    'ref', 'before', 'after', 'commits', 'repository', 'repository.id', 'repository.full_name', 'sender.login', 'action',
    'pull_request.merged', 'pull_request.number', 'pull_request.head.ref', 'pull_request.base.ref', 'pull_request.head.sha',
    'pull_request.title', 'repositories', 'repositories_added', 'repositories_removed', 'repositories_added.0.id',
    'repositories_added.0.full_name', 'installation.id',
  ],
  gitlab: [
    'object_kind', 'project', 'project.id', 'project_id', 'project.path_with_namespace', 'project.web_url', 'repository.homepage',
    'user_username', 'ref', 'before', 'after', 'total_commits_count', 'object_attributes.action', 'object_attributes.oldrev',
    'user.username', 'object_attributes.iid', 'object_attributes.source_branch', 'object_attributes.target_branch',
    'object_attributes.last_commit.id', 'object_attributes.title',
  ],
  bitbucket: [
    'eventKey', 'repository', 'repository.id', 'repository.project.key', 'repository.slug', 'repository.links.self.0.href', 'actor.name',
    'changes', 'changes.0', 'changes.0.refId', 'changes.0.fromHash', 'changes.0.toHash', 'pullRequest.toRef.repository.id',
    'pullRequest.toRef.repository.project.key', 'pullRequest.toRef.repository.slug', 'pullRequest.toRef.repository.links.self.0.href',
    'pullRequest.links.self.0.href', 'pullRequest.id', 'pullRequest.fromRef.id', 'pullRequest.toRef.id',
    'pullRequest.fromRef.latestCommit', 'pullRequest.title',
  ],
  'azure-devops': [
    'eventType', 'id', 'resource', 'resource.repository.project.name', 'resource.repository.id', 'resource.repository.name',
    'resource.pushedBy.uniqueName', 'resource.refUpdates', 'resource.refUpdates.0.name', 'resource.refUpdates.0.oldObjectId',
    'resource.refUpdates.0.newObjectId', 'resource.commits', 'resource.status', 'resource.createdBy.uniqueName',
    'resource.closedBy.uniqueName', 'resource.pullRequestId', 'resource.sourceRefName', 'resource.targetRefName',
    'resource.lastMergeSourceCommit.commitId', 'resource.title',
  ],
};

/** Arrays the normalizer turns into one event each, or counts. */
const LIST_FIELDS = ['commits', 'changes', 'resource.refUpdates', 'resource.commits', 'repositories_added'];

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Values of every JSON type (and a few numbers JavaScript handles badly), to put where another type belongs. */
function wrongValue(rng: Random): Json {
  return rng.pick<() => Json>([
    () => null,
    () => rng.chance(0.5),
    () => 0,
    () => -1,
    () => 1.5,
    () => 1e308,
    () => 2 ** 53 + 1,
    () => -0,
    () => '',
    () => rng.nasty(),
    () => '0000000000000000000000000000000000000000',
    () => 'refs/heads/' + rng.nasty(),
    () => [],
    () => [rng.nasty(), 1, null],
    () => ({}),
    () => ({ id: rng.nasty(), full_name: 1 }),
    () => '__proto__',
    () => JSON.parse('{"__proto__":{"polluted":true},"constructor":{"prototype":1}}') as Json,
  ])();
}

function paths(value: Json, prefix = '', out: string[] = []): string[] {
  if (value === null || typeof value !== 'object') return out;
  for (const [key, child] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${key}` : key;
    out.push(path);
    if (out.length < 2000) paths(child, path, out);
  }
  return out;
}

/** Sets `path` in `root`, making the objects on the way when they are missing. */
function setPath(root: Json, path: string, value: Json): void {
  const keys = path.split('.');
  let node = root as Record<string, Json>;
  for (const key of keys.slice(0, -1)) {
    if (node[key] === null || typeof node[key] !== 'object') node[key] = {};
    node = node[key] as Record<string, Json>;
  }
  node[keys[keys.length - 1]!] = value;
}

function getPath(root: Json, path: string): Json | undefined {
  let node: Json | undefined = root;
  for (const key of path.split('.')) node = node !== null && typeof node === 'object' ? (node as Record<string, Json>)[key] : undefined;
  return node;
}

function deletePath(root: Json, path: string): void {
  const keys = path.split('.');
  const parent = keys.length === 1 ? root : getPath(root, keys.slice(0, -1).join('.'));
  if (parent !== null && typeof parent === 'object') delete (parent as Record<string, Json>)[keys[keys.length - 1]!];
}

/** A field to mutate: mostly one the normalizer reads, else any field of the payload. */
function fieldOf(rng: Random, body: Json, provider: Provider | undefined): string {
  const all = paths(body);
  if (provider && rng.chance(0.7)) return rng.pick(NORMALIZER_FIELDS[provider]);
  return all.length > 0 ? rng.pick(all) : 'x';
}

const DEEP = '"\u0000fuzz-deep\u0000"';
const DUPLICATE = '\u0000fuzz-duplicate\u0000';

/** The size of a huge string: mostly tens of KiB, now and then several MiB (over Temporal's 2 MB payload limit). */
function hugeLength(rng: Random): number {
  return rng.chance(0.03) ? rng.int(2, 4) * 1024 * 1024 : rng.int(1, 64) * 1024;
}

type Structural = (rng: Random, body: Json, provider: Provider | undefined) => { body: Json; fill?: (text: string) => string };
type ByteLevel = (rng: Random, bytes: Buffer) => Buffer;

const STRUCTURAL: Record<string, Structural> = {
  retype(rng, body, provider) {
    setPath(body, fieldOf(rng, body, provider), wrongValue(rng));
    return { body };
  },
  remove(rng, body, provider) {
    deletePath(body, fieldOf(rng, body, provider));
    return { body };
  },
  hugeString(rng, body, provider) {
    setPath(body, fieldOf(rng, body, provider), rng.pick(['x', 'é', '\ud83d\ude00', '\ud800', '\\', '\u0000']).repeat(hugeLength(rng)));
    return { body };
  },
  manyItems(rng, body) {
    const present = LIST_FIELDS.filter((p) => Array.isArray(getPath(body, p)));
    const path = present.length > 0 ? rng.pick(present) : rng.pick(LIST_FIELDS);
    const items = (getPath(body, path) as Json[] | undefined) ?? [{}];
    const count = rng.chance(0.1) ? rng.int(5_000, 20_000) : rng.int(10, 500);
    setPath(body, path, Array.from({ length: count }, (_, i) => items[i % Math.max(items.length, 1)] ?? {}));
    return { body };
  },
  deepNesting(rng, body, provider) {
    setPath(body, fieldOf(rng, body, provider), DEEP);
    const depth = rng.chance(0.3) ? rng.int(10_000, 200_000) : rng.int(20, 2_000);
    const [open, close] = rng.chance(0.5) ? ['[', ']'] : ['{"a":', '}'];
    return { body, fill: (text) => text.replace(JSON.stringify(DEEP), `${open.repeat(depth)}1${close.repeat(depth)}`) };
  },
  duplicateKey(rng, body, provider) {
    // A second occurrence of a key the normalizer reads, with another value: JSON.parse keeps the last one.
    const path = fieldOf(rng, body, provider);
    const keys = path.split('.');
    const parent = keys.length > 1 ? getPath(body, keys.slice(0, -1).join('.')) : body;
    if (parent === null || typeof parent !== 'object' || Array.isArray(parent)) return { body };
    const key = keys[keys.length - 1]!;
    (parent as Record<string, Json>)[DUPLICATE] = wrongValue(rng);
    return { body, fill: (text) => text.replace(JSON.stringify(DUPLICATE), JSON.stringify(key)) };
  },
  nastyStrings(rng, body, provider) {
    for (let i = rng.int(1, 6); i > 0; i--) setPath(body, fieldOf(rng, body, provider), rng.nasty(40));
    return { body };
  },
  notAnObject(rng) {
    return { body: rng.pick<Json>([null, [], [{}], 'push', 1, true]) };
  },
};

const BYTE_LEVEL: Record<string, ByteLevel> = {
  truncate: (rng, bytes) => bytes.subarray(0, rng.int(0, Math.max(bytes.length - 1, 0))),
  byteFlips(rng, bytes) {
    const out = Buffer.from(bytes);
    for (let i = rng.int(1, 8); i > 0 && out.length > 0; i--) {
      const at = rng.int(0, out.length - 1);
      out[at] = out[at]! ^ (1 << rng.int(0, 7));
    }
    return out;
  },
  invalidUtf8(rng, bytes) {
    // Lone continuation, overlong '/', a UTF-16 surrogate, a byte never valid, a cut-off sequence.
    const bad = rng.pick([[0x80], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xff], [0xe2, 0x82], [0xf4, 0x90, 0x80, 0x80]]);
    const at = rng.int(0, bytes.length);
    return Buffer.concat([bytes.subarray(0, at), Buffer.from(bad), bytes.subarray(at)]);
  },
  byteOrderMark: (_rng, bytes) => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes]),
  trailingGarbage: (rng, bytes) => Buffer.concat([bytes, rng.chance(0.5) ? Buffer.from(rng.pick(['}', ',', ' {}', '\u0000', 'null'])) : rng.bytes(rng.int(1, 64))]),
  randomBytes: (rng) => rng.bytes(rng.int(0, 2048)),
  empty: () => Buffer.alloc(0),
};

export const MUTATIONS = [...Object.keys(STRUCTURAL), ...Object.keys(BYTE_LEVEL)];

/**
 * `payload` serialized after `count` mutations drawn at random (structural ones first, then byte
 * ones on the result). `applied` names them, in order.
 */
export function mutateBody(rng: Random, payload: Json, provider: Provider | undefined, count: number): { bytes: Buffer; applied: string[] } {
  const applied: string[] = [];
  const picked = Array.from({ length: count }, () => rng.pick(MUTATIONS)).sort((a, b) => Number(a in BYTE_LEVEL) - Number(b in BYTE_LEVEL));
  let body = structuredClone(payload);
  const fills: ((text: string) => string)[] = [];
  let bytes: Buffer | undefined;
  for (const name of picked) {
    applied.push(name);
    const structural = STRUCTURAL[name];
    if (structural) {
      if (body === null || typeof body !== 'object') continue;
      const result = structural(rng, body, provider);
      body = result.body;
      if (result.fill) fills.push(result.fill);
      continue;
    }
    bytes ??= Buffer.from(fills.reduce((text, fill) => fill(text), JSON.stringify(body)));
    bytes = BYTE_LEVEL[name]!(rng, bytes);
  }
  return { bytes: bytes ?? Buffer.from(fills.reduce((text, fill) => fill(text), JSON.stringify(body))), applied };
}
