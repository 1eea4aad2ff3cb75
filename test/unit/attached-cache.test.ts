import { describe, expect, it } from 'vitest';
import { createAttachedCache } from '../../api/webhooks/attached-cache.ts';

const target = (n: number) => ({
  organizationId: `org-${n}`,
  organizationSlug: `org-${n}`,
  repositoryId: `repo-${n}`,
  fullName: `group/repo-${n}`,
  connectionId: `connection-${n}`,
  externalId: String(n),
  baseUrl: 'https://gitlab.example.com',
  connectionKey: null,
});

describe('the receivers\' attached-repository cache', () => {
  it('answers only when every id is cached and unexpired, and keeps no negative answer', () => {
    let now = 0;
    const cache = createAttachedCache({ ttlMs: 1000, now: () => now });
    cache.set('gitlab', '1', [target(1), target(2)]);
    cache.set('gitlab', '2', []);
    expect(cache.get('gitlab', ['1', '1'])).toEqual([target(1), target(2)]);
    expect(cache.get('gitlab', ['1', '2'])).toBeUndefined();
    expect(cache.get('github', ['1'])).toBeUndefined();
    expect(cache.size).toBe(1);
    now = 1000;
    expect(cache.get('gitlab', ['1'])).toBeUndefined();
  });

  it('forgets an id found not attached any more, and the oldest entry past its bound', () => {
    const cache = createAttachedCache({ maxEntries: 2 });
    cache.set('bitbucket', 'a', [target(1)]);
    cache.set('bitbucket', 'a', []);
    expect(cache.get('bitbucket', ['a'])).toBeUndefined();
    cache.set('bitbucket', 'b', [target(2)]);
    cache.set('bitbucket', 'c', [target(3)]);
    cache.set('bitbucket', 'd', [target(4)]);
    expect(cache.get('bitbucket', ['b'])).toBeUndefined();
    expect(cache.get('bitbucket', ['c', 'd'])).toEqual([target(3), target(4)]);
  });

  it('keeps nothing with a TTL of 0', () => {
    const cache = createAttachedCache({ ttlMs: 0 });
    cache.set('azure-devops', 'x', [target(1)]);
    expect(cache.size).toBe(0);
  });
});
