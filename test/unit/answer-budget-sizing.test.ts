import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { answerBudgetLimits, WORKER_OWN_HEAP } from '../../activities/providers/answer-budget.ts';
import { MAX_ANSWER_PARSE_COST } from '../../activities/providers/answer.ts';
import { ANSWER_BUDGET_MIN_BYTES, ConfigError, parseConfig } from '../../lib/config.ts';
import { containerMemoryLimit } from '../../lib/container-memory.ts';

/**
 * The worker's answer budget's size (activities/providers/answer-budget.ts): worker.answerBudgetBytes
 * when set, else the lower of the V8 heap limit and the container's memory limit (cgroup v2
 * memory.max, v1 memory.limit_in_bytes) less 384 MiB. A container limited below its heap is
 * OOM-killed by the kernel at its limit, long before V8's heap limit: sized from the heap alone, the
 * budget let answers fill memory the container did not have.
 */
const MiB = 1024 * 1024;
const KEY = Buffer.alloc(32, 7).toString('base64');
const minimal = { publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: KEY } };

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});
/** A directory standing for `/`, holding `files` (path → content). */
function fakeRoot(files: Record<string, string>): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'forgelink-cgroup-'));
  roots.push(root);
  for (const [file, content] of Object.entries(files)) {
    mkdirSync(path.join(root, path.dirname(file)), { recursive: true });
    writeFileSync(path.join(root, file), content);
  }
  return root;
}

describe("the container's memory limit", () => {
  it('reads cgroup v2 memory.max in a cgroup namespace (the pod\'s limit at the mount\'s root)', () => {
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max': '805306368\n' }))).toBe(768 * MiB);
  });

  it("takes the lowest limit from the mount's root down to the process's cgroup (a parent's limit binds its children)", () => {
    const root = fakeRoot({
      'proc/self/cgroup': '0::/kubepods.slice/pod-a/worker\n',
      'sys/fs/cgroup/kubepods.slice/memory.max': 'max\n',
      'sys/fs/cgroup/kubepods.slice/pod-a/memory.max': `${600 * MiB}\n`,
      'sys/fs/cgroup/kubepods.slice/pod-a/worker/memory.max': `${900 * MiB}\n`,
    });
    expect(containerMemoryLimit(root)).toBe(600 * MiB);
  });

  it('reads cgroup v1 memory.limit_in_bytes, its "unlimited" (page-rounded 2^63) being none', () => {
    const v1 = (limit: string) => fakeRoot({ 'proc/self/cgroup': '12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n', 'sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes': limit });
    expect(containerMemoryLimit(v1(`${1280 * MiB}\n`))).toBe(1280 * MiB);
    expect(containerMemoryLimit(v1('9223372036854771712\n'))).toBeUndefined();
    // Without a cgroup namespace the container sees its own cgroup at the mount's root.
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '3:memory:/docker/abc\n', 'sys/fs/cgroup/memory/memory.limit_in_bytes': `${512 * MiB}\n` }))).toBe(512 * MiB);
  });

  it('is none when no limit is set, nothing can be read, or what is read is not a number of bytes', () => {
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max': 'max\n' }))).toBeUndefined();
    expect(containerMemoryLimit(fakeRoot({}))).toBeUndefined();
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max': '-1\n' }))).toBeUndefined();
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max': '12abc\n' }))).toBeUndefined();
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max': '0\n' }))).toBeUndefined();
    // A cgroup outside the namespace (a path that climbs) is never looked for above the mount.
    const outside = fakeRoot({ 'proc/self/cgroup': '0::/../../elsewhere\n', 'memory.max': `${64 * MiB}\n`, 'sys/fs/cgroup/memory.max': `${700 * MiB}\n` });
    expect(containerMemoryLimit(outside)).toBe(700 * MiB);
    // A directory where the file should be: unreadable, ignored.
    expect(containerMemoryLimit(fakeRoot({ 'proc/self/cgroup': '0::/\n', 'sys/fs/cgroup/memory.max/x': '1' }))).toBeUndefined();
  });
});

describe("the answer budget's size", () => {
  const heapLimit = 1036 * MiB;

  it("is the heap less 384 MiB when the container allows more (the chart: 1,280 MiB) or has no limit", () => {
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, containerLimit: 1280 * MiB })).toEqual({ limit: 652 * MiB, perOrganization: 163 * MiB, sizedBy: 'heap', allowed: 652 * MiB });
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit })).toMatchObject({ limit: 652 * MiB, sizedBy: 'heap' });
  });

  it('is the container limit less 384 MiB when that is lower than the heap', () => {
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, containerLimit: 768 * MiB })).toEqual({ limit: 384 * MiB, perOrganization: 96 * MiB, sizedBy: 'container', allowed: 384 * MiB });
    // Never below two answers at their bound, one for an organization.
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, containerLimit: 400 * MiB })).toMatchObject({ limit: 2 * MAX_ANSWER_PARSE_COST, perOrganization: MAX_ANSWER_PARSE_COST, sizedBy: 'container' });
    expect(WORKER_OWN_HEAP).toBe(384 * MiB);
  });

  it('is worker.answerBudgetBytes when set, whatever the heap and container allow (which it reports)', () => {
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, containerLimit: 768 * MiB, configured: 256 * MiB })).toEqual({ limit: 256 * MiB, perOrganization: 64 * MiB, sizedBy: 'config', allowed: 384 * MiB });
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, configured: 2048 * MiB })).toMatchObject({ limit: 2048 * MiB, sizedBy: 'config', allowed: 652 * MiB });
    expect(answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit, configured: ANSWER_BUDGET_MIN_BYTES })).toMatchObject({ limit: ANSWER_BUDGET_MIN_BYTES, perOrganization: MAX_ANSWER_PARSE_COST });
  });
});

describe('worker.answerBudgetBytes', () => {
  function errorOf(raw: unknown): string {
    try {
      parseConfig(raw);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    }
    throw new Error('expected a ConfigError');
  }

  it('is unset unless told, and read as bytes', () => {
    expect(parseConfig(minimal).worker.answerBudgetBytes).toBeUndefined();
    expect(parseConfig({ ...minimal, worker: { answerBudgetBytes: 512 * MiB } }).worker.answerBudgetBytes).toBe(512 * MiB);
  });

  it('is refused at load below two answers at their bound (80 MiB), or when not a whole number of bytes', () => {
    expect(ANSWER_BUDGET_MIN_BYTES).toBe(2 * MAX_ANSWER_PARSE_COST);
    expect(parseConfig({ ...minimal, worker: { answerBudgetBytes: ANSWER_BUDGET_MIN_BYTES } }).worker.answerBudgetBytes).toBe(80 * MiB);
    expect(errorOf({ ...minimal, worker: { answerBudgetBytes: ANSWER_BUDGET_MIN_BYTES - 1 } })).toMatch(/worker\.answerBudgetBytes: must be at least 83886080 \(80 MiB/);
    expect(errorOf({ ...minimal, worker: { answerBudgetBytes: 0 } })).toMatch(/worker\.answerBudgetBytes/);
    expect(errorOf({ ...minimal, worker: { answerBudgetBytes: 100 * MiB + 0.5 } })).toMatch(/worker\.answerBudgetBytes/);
    expect(errorOf({ ...minimal, worker: { answerBudgetBytes: '512Mi' } })).toMatch(/worker\.answerBudgetBytes/);
  });
});
