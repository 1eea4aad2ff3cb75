import { describe, expect, it } from 'vitest';
import { globToRegExp, subscriberWants } from '../../activities/events.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';

const repository = { externalId: '1', fullName: 'acme/app' };
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
  ])('%s matches %s: %s', (glob, name, expected) => {
    expect(globToRegExp(glob).test(name)).toBe(expected);
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
