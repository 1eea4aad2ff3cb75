import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostResolver } from '../../lib/dns.ts';
import { startFakeDns, type FakeDns } from '../support/dns.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

/**
 * The API's URL check, with the real resolver pointed (security.dnsServers) at a name server that
 * never answers for one tenant (`*.stall.test`), fails for others (SERVFAIL `*.broken.test`, REFUSED
 * `*.refusing.test`), and says every other name but one does not exist.
 */
describe("API URL checks: one tenant's silent or failing name servers", () => {
  let h: Harness;
  let dns: FakeDns;

  beforeAll(async () => {
    dns = await startFakeDns((name) =>
      name.endsWith('.stall.test') ? 'silent' : name.endsWith('.broken.test') ? 'servfail' : name.endsWith('.refusing.test') ? 'refused' : name === 'hooks.public.test' ? ['203.0.113.5'] : 'nxdomain',
    );
    h = await startHarness({ resolveHost: createHostResolver({ dnsServers: [dns.server], dnsTimeoutSeconds: 1 }) });
  });
  afterAll(async () => {
    await h?.close();
    await dns?.close();
  });

  it("answer 503 naming the host by the deadline, while another organization's subscriber is registered at once", async () => {
    const hostile = await createOrgWithToken(h);
    const other = await createOrgWithToken(h);
    const started = performance.now();
    const stalled = [1, 2, 3, 4].map(async (i) => {
      const res = await h.request('POST', `/api/v1/orgs/${hostile.org.slug}/subscribers`, { token: hostile.token, body: { url: `https://hook${i}.stall.test/events` } });
      return { res, ms: performance.now() - started };
    });
    await dns.received(8);

    const asked = performance.now();
    const res = await h.request('POST', `/api/v1/orgs/${other.org.slug}/subscribers`, { token: other.token, body: { url: 'https://hooks.public.test/events' } });
    expect(res.status, await res.clone().text()).toBe(201);
    expect(performance.now() - asked).toBeLessThan(500);

    for (const [i, { res, ms }] of (await Promise.all(stalled)).entries()) {
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('5');
      expect(await res.json()).toMatchObject({ title: 'Service Unavailable', detail: `looking up host hook${i + 1}.stall.test took longer than 1 s (its DNS servers did not answer); try again later` });
      expect(ms).toBeLessThan(3000);
    }
    const listed = await h.request('GET', `/api/v1/orgs/${hostile.org.slug}/subscribers`, { token: hostile.token });
    expect(await listed.json()).toEqual({ items: [] });
  });

  it('answer 503 with Retry-After naming the host when its DNS servers fail (SERVFAIL, REFUSED), and write nothing; a host that does not exist is a 400', async () => {
    const { org, token } = await createOrgWithToken(h);
    const connections = () => h.db.selectFrom('connections').select('id').where('organization_id', '=', org.id).execute();
    const subscribers = () => h.db.selectFrom('subscribers').select('id').where('organization_id', '=', org.id).execute();
    const attempts = [
      { host: 'hooks.broken.test', path: 'subscribers', body: { url: 'https://hooks.broken.test/events' }, servers: 'answered SERVFAIL' },
      { host: 'gitlab.broken.test', path: 'connections', body: { provider: 'gitlab', baseUrl: 'https://gitlab.broken.test', token: 'glpat-servfail' }, servers: 'answered SERVFAIL' },
      { host: 'dev.refusing.test', path: 'connections', body: { provider: 'azure-devops', organizationUrl: 'https://dev.refusing.test/acme', token: 'pat-refused' }, servers: 'refused the query (REFUSED)' },
    ];
    for (const { host, path, body, servers } of attempts) {
      const res = await h.request('POST', `/api/v1/orgs/${org.slug}/${path}`, { token, body });
      expect(res.status, `${host}: ${await res.clone().text()}`).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(res.headers.get('retry-after')).toBe('5');
      expect(await res.json()).toMatchObject({ title: 'Service Unavailable', detail: `looking up host ${host} failed: its DNS servers ${servers}; try again later` });
    }
    expect(await connections()).toEqual([]);
    expect(await subscribers()).toEqual([]);
    expect(h.logs.find((l) => l.includes('a host lookup failed at the DNS servers') && l.includes('gitlab.broken.test'))).toMatch(/"code":"ESERVFAIL"/);

    for (const [path, body, field] of [
      ['subscribers', { url: 'https://hooks.nowhere.test/events' }, 'url'],
      ['connections', { provider: 'gitlab', baseUrl: 'https://gitlab.nowhere.test', token: 'glpat-nxdomain' }, 'baseUrl'],
    ] as const) {
      const res = await h.request('POST', `/api/v1/orgs/${org.slug}/${path}`, { token, body });
      expect(res.status, await res.clone().text()).toBe(400);
      expect(res.headers.get('retry-after')).toBeNull();
      expect(((await res.json()) as { detail: string }).detail).toMatch(new RegExp(`^${field}: host [a-z]+\\.nowhere\\.test does not resolve$`));
    }
    expect(await connections()).toEqual([]);
    expect(await subscribers()).toEqual([]);
  });

  it('the OpenAPI document says why the two routes that look up a URL answer 503, and that Retry-After comes with it', async () => {
    const doc = (await (await h.request('GET', '/openapi.json')).json()) as {
      paths: Record<string, Record<string, { responses: Record<string, { description: string; headers?: Record<string, unknown> }> }>>;
    };
    for (const path of ['/api/v1/orgs/{org}/subscribers', '/api/v1/orgs/{org}/connections']) {
      const unavailable = doc.paths[path]!.post!.responses['503'];
      expect(unavailable?.description, path).toContain('its DNS servers failed (SERVFAIL, REFUSED');
      expect(unavailable?.description, path).toContain('did not answer within security.dnsTimeoutSeconds');
      expect(unavailable?.headers, path).toHaveProperty('Retry-After');
    }
  });
});
