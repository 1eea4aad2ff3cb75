import { describe, expect, it } from 'vitest';
import { subscriberWants } from '../../activities/events.ts';
import { compileRefGlob, refGlobProblem } from '../../lib/ref-glob.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';

const repository = { externalId: '1', fullName: 'acme/app' };
const matches = (glob: string, name: string) => compileRefGlob(glob)(name);

/** CPU time of one call, in milliseconds (wall time would count the other processes of a busy machine). */
function timed(fn: () => unknown): number {
  const started = process.cpuUsage();
  fn();
  const { user, system } = process.cpuUsage(started);
  return (user + system) / 1000;
}

const push = (name: string): NormalizedEvent => ({ provider: 'gitlab', deliveryId: 'd', kind: 'push', repository, ref: { type: 'branch', name, before: 'a', after: 'b' } });

describe('ref globs', () => {
  it.each([
    ['main', 'main', true],
    ['main', 'maintenance', false],
    ['release/*', 'release/1.2', true],
    ['release/*', 'release/1.2/hotfix', false],
    ['release/**', 'release/1.2/hotfix', true],
    ['v?.*', 'v1.0', true],
    ['v?.*', 'v10.0', false],
    // Regular-expression characters are literal.
    ['v1.0', 'v1x0', false],
    ['feat+(x)', 'feat+(x)', true],
    ['**/fix-*', 'team/a/fix-login', true],
    ['**/fix-*', 'team/a/fix-login/more', false],
    ['a?b', 'a/b', false],
    ['**a**b', 'xxaxxb', true],
    ['*a*b', 'x/ab', false],
    ['release/**', 'release/', true],
  ])('%s matches %s: %s', (glob, name, expected) => {
    expect(compileRefGlob(glob)(name)).toBe(expected);
  });

  it('matches or refuses pathological globs in well under 50 ms each', () => {
    const branch = 'a'.repeat(60);
    for (const repeats of [6, 8, 30]) {
      const glob = `${'**a'.repeat(repeats)}**b`;
      let matched = true;
      expect(timed(() => (matched = matches(glob, branch)))).toBeLessThan(50);
      expect(matched).toBe(false);
      expect(matches(glob, `${branch}b`)).toBe(repeats <= 60);
    }
    const longGlobs = Array.from({ length: 50 }, (_, i) => `${'*a'.repeat(127)}${i}`.slice(0, 255));
    const longBranch = 'a'.repeat(255);
    for (const glob of longGlobs) expect(timed(() => matches(glob, longBranch))).toBeLessThan(50);
    const subscriber = { kinds: [], refGlobs: longGlobs };
    const event = { kind: 'push', ref: { type: 'branch', name: longBranch, before: null, after: null } } as unknown as NormalizedEvent;
    expect(timed(() => subscriberWants(subscriber, event))).toBeLessThan(50 * 50);
  });

  it('refuses three or more `*` in a row', () => {
    expect(refGlobProblem('release/***')).toMatch(/three or more/);
    expect(refGlobProblem('release/**')).toBeUndefined();
  });
});

describe('subscriber filters', () => {
  it('lets everything through when empty', () => {
    expect(subscriberWants({ kinds: [], refGlobs: [] }, push('anything/at/all'))).toBe(true);
    expect(subscriberWants({ kinds: [], refGlobs: [] }, { provider: 'github', deliveryId: 'd', kind: 'repository.added', repository })).toBe(true);
  });

  it('filters on kind and on the ref, or a pull request by its target branch', () => {
    const pullRequest: NormalizedEvent = { provider: 'github', deliveryId: 'd', kind: 'pull_request.opened', repository, pullRequest: { number: 1, sourceBranch: 'feature/x', targetBranch: 'main' } };
    expect(subscriberWants({ kinds: ['push'], refGlobs: [] }, push('main'))).toBe(true);
    expect(subscriberWants({ kinds: ['tag.created'], refGlobs: [] }, push('main'))).toBe(false);
    expect(subscriberWants({ kinds: [], refGlobs: ['main'] }, pullRequest)).toBe(true);
    expect(subscriberWants({ kinds: [], refGlobs: ['feature/*'] }, pullRequest)).toBe(false);
  });

  it('keeps events without a ref away from subscribers that filter on refs', () => {
    expect(subscriberWants({ kinds: [], refGlobs: ['**'] }, { provider: 'github', deliveryId: 'd', kind: 'repository.removed', repository })).toBe(false);
  });
});
