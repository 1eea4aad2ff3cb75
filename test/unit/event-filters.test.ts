import { describe, expect, it } from 'vitest';
import { setImmediate } from 'node:timers/promises';
import { subscriberWants, wantedPairs } from '../../activities/events.ts';
import { compileRefGlob, MAX_REF_NAME_LENGTH, refGlobMatches, refGlobProblem } from '../../lib/ref-glob.ts';
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

  it('never matches a name over MAX_REF_NAME_LENGTH (the receiver leaves such events out; one recorded before still costs nothing)', () => {
    const longest = 'a'.repeat(MAX_REF_NAME_LENGTH);
    expect(refGlobMatches('**', longest)).toBe(true);
    expect(refGlobMatches('**', `${longest}a`)).toBe(false);
    expect(timed(() => refGlobMatches(`${'*a'.repeat(127)}b`, 'a'.repeat(100_000)))).toBeLessThan(5);
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

describe('wantedPairs', () => {
  const worst = Array.from({ length: 50 }, (_, i) => `**${'a*'.repeat(126)}${String.fromCharCode(98 + (i % 20))}`);
  const subscribers = Array.from({ length: 100 }, (_, i) => ({ id: `s${i}`, organizationId: 'o', kinds: [], refGlobs: i === 99 ? [...worst.slice(1), '**'] : worst }));

  it("pairs each recorded event with its organization's subscribers that want it", async () => {
    const events = [push('main'), push('release/1')];
    const pairs = await wantedPairs(
      [{ id: 'e0', organizationId: 'o', sequence: 0 }, { id: 'e1', organizationId: 'p', sequence: 1 }],
      [{ id: 'a', organizationId: 'o', kinds: [], refGlobs: ['main'] }, { id: 'b', organizationId: 'o', kinds: [], refGlobs: ['release/*'] }, { id: 'c', organizationId: 'p', kinds: [], refGlobs: ['release/*'] }],
      events,
    );
    expect(pairs).toEqual([{ eventId: 'e0', subscriberId: 'a' }, { eventId: 'e1', subscriberId: 'c' }]);
  });

  it("matches a maximal event against an organization's maximum of globs (100 subscribers × 50 of 255 characters) in well under a second", async () => {
    const event = push('a'.repeat(MAX_REF_NAME_LENGTH));
    let pairs: unknown;
    const cpu = process.cpuUsage();
    pairs = await wantedPairs([{ id: 'e', organizationId: 'o', sequence: 0 }], subscribers, [event]);
    const { user, system } = process.cpuUsage(cpu);
    console.log(`100 subscribers x 50 globs of 255 against a ${MAX_REF_NAME_LENGTH}-character ref: ${((user + system) / 1000).toFixed(0)} ms of CPU`);
    expect((user + system) / 1000).toBeLessThan(1000);
    expect(pairs).toEqual([{ eventId: 'e', subscriberId: 's99' }]);
  });

  it('lets the event loop in while it matches a delivery of many refs', async () => {
    const events = Array.from({ length: 8 }, (_, i) => push(`${'a'.repeat(MAX_REF_NAME_LENGTH - 1)}${i}`));
    let turns = 0;
    let matching = true;
    const spin = (async () => {
      while (matching) (await setImmediate(), turns++);
    })();
    await wantedPairs(events.map((_, i) => ({ id: `e${i}`, organizationId: 'o', sequence: i })), subscribers.slice(0, 10), events);
    matching = false;
    await spin;
    // 80 (event, subscriber) pairs of 50 worst-case globs (~0.2 s of CPU here): several 10 ms slices, each followed by a turn.
    expect(turns).toBeGreaterThan(1);
  });
});
