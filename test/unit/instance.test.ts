import { describe, expect, it } from 'vitest';
import { attachmentsOfInstance, isUnderBaseUrl } from '../../lib/instance.ts';

describe('isUnderBaseUrl', () => {
  it('matches the same origin under the base path, nothing else', () => {
    expect(isUnderBaseUrl('https://gitlab.example.com/group/app', 'https://gitlab.example.com')).toBe(true);
    expect(isUnderBaseUrl('https://gitlab.example.com/group/app', 'https://gitlab.example.com/')).toBe(true);
    expect(isUnderBaseUrl('https://GITLAB.example.com/group/app', 'https://gitlab.example.com')).toBe(true);
    expect(isUnderBaseUrl('https://example.com/gitlab/group/app', 'https://example.com/gitlab')).toBe(true);
    expect(isUnderBaseUrl('https://example.com/gitlabx/group/app', 'https://example.com/gitlab')).toBe(false);
    expect(isUnderBaseUrl('https://gitlab.example.com.evil.test/group/app', 'https://gitlab.example.com')).toBe(false);
    expect(isUnderBaseUrl('http://gitlab.example.com/group/app', 'https://gitlab.example.com')).toBe(false);
    expect(isUnderBaseUrl('https://gitlab.example.com:8443/group/app', 'https://gitlab.example.com')).toBe(false);
    expect(isUnderBaseUrl('not a url', 'https://gitlab.example.com')).toBe(false);
  });
});

describe('attachmentsOfInstance', () => {
  const row = (org: string, externalId: string, baseUrl: string) => ({ organizationId: org, externalId, baseUrl });

  it('keeps an id attached on one instance only, whatever URL the delivery carries', () => {
    const rows = [row('a', '42', 'https://gitlab.internal:8080'), row('b', '42', 'https://gitlab.internal:8080/')];
    expect(attachmentsOfInstance(rows, 'https://gitlab.example.com/g/p')).toEqual({ kept: rows, ambiguous: [] });
    expect(attachmentsOfInstance(rows, undefined)).toEqual({ kept: rows, ambiguous: [] });
  });

  it('keeps, of an id attached on several instances, only the instance the delivery came from', () => {
    const dotcom = row('a', '42', 'https://gitlab.com');
    const own = row('b', '42', 'https://gitlab.acme.test');
    const other = row('c', '7', 'https://gitlab.com');
    expect(attachmentsOfInstance([dotcom, own, other], 'https://gitlab.acme.test/team/app')).toEqual({ kept: [own, other], ambiguous: [] });
    expect(attachmentsOfInstance([dotcom, own, other], 'https://gitlab.com/team/app')).toEqual({ kept: [dotcom, other], ambiguous: [] });
  });

  it('hands a delivery it cannot place to nobody, and says which ids', () => {
    const rows = [row('a', '42', 'https://gitlab.com'), row('b', '42', 'https://gitlab.acme.test')];
    expect(attachmentsOfInstance(rows, 'https://elsewhere.test/team/app')).toEqual({ kept: [], ambiguous: ['42'] });
    expect(attachmentsOfInstance(rows, undefined)).toEqual({ kept: [], ambiguous: ['42'] });
  });
});
