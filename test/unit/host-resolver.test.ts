import { lookup } from 'node:dns/promises';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { toActivityFailure } from '../../activities/errors.ts';
import { createOutbound, OutboundRefusedError } from '../../activities/outbound.ts';
import { createHostResolver, HostLookupFailedError, HostLookupTimeoutError } from '../../lib/dns.ts';
import { normalizeProviderUrl, UnsafeUrlError } from '../../lib/url.ts';
import { startFakeDns, type DnsBehaviour, type FakeDns } from '../support/dns.ts';
import { listen, type Listener } from '../support/outbound.ts';

/**
 * The tenant `stall.test` has name servers that never answer; `ok.test` and the others answer at
 * once. Every lookup goes to the fake server through security.dnsServers: nothing here is mocked.
 */
const zone = (name: string, type: string): DnsBehaviour => {
  if (name.endsWith('stall.test')) return 'silent';
  if (name.endsWith('.broken.test')) return 'servfail';
  if (name.endsWith('.refusing.test')) return 'refused';
  if (name.endsWith('.formerr.test')) return 'formerr';
  if (name.endsWith('.notimp.test')) return 'notimp';
  if (name === 'ok.test') return ['127.0.0.1'];
  if (name === 'internal.test') return ['10.0.0.7'];
  if (name === 'v4only.test') return type === 'A' ? ['127.0.0.1'] : 'silent';
  if (name === 'gitlab.corp.test' || name === 'gitlab.example.test') return ['203.0.113.5'];
  return 'nxdomain';
};

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()));
});
async function fakeDns(): Promise<FakeDns> {
  const dns = await startFakeDns(zone);
  closers.push(() => dns.close());
  return dns;
}
async function listener(): Promise<Listener> {
  const l = await listen('127.0.0.1');
  closers.push(() => l.close());
  return l;
}
const outcome = (promise: Promise<unknown>) => promise.then(() => undefined, (error: unknown) => error as Error);
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await call();
  return { value, ms: performance.now() - started };
}
function files(contents: { hosts?: string; resolvConf?: string }) {
  const dir = mkdtempSync(join(tmpdir(), 'forgelink-dns-'));
  const hostsFile = join(dir, 'hosts');
  const resolvConf = join(dir, 'resolv.conf');
  writeFileSync(hostsFile, contents.hosts ?? '');
  writeFileSync(resolvConf, contents.resolvConf ?? '');
  return { hostsFile, resolvConf };
}

describe('host lookups: one tenant whose name servers never answer', () => {
  it("holds no other tenant's connection, nor the threadpool (PostgreSQL's host name, fs), while 8 of its lookups hang", async () => {
    const dns = await fakeDns();
    const provider = await listener();
    const outbound = createOutbound({ allowHttpHosts: ['ok.test'], allowPrivateNetworks: ['127.0.0.1'], dnsServers: [dns.server], dnsTimeoutSeconds: 4, ...files({}) });
    const stalled = Array.from({ length: 8 }, (_, i) =>
      timed(() => outcome(outbound.fetch(`https://hook${i}.stall.test/events`, { method: 'POST', body: '{}' }))),
    );
    let settled = 0;
    for (const s of stalled) void s.then(() => settled++);
    // Every one of them has asked (A and AAAA) and is waiting for an answer.
    await dns.received(16);

    const other = await timed(async () => (await outbound.fetch(`http://ok.test:${provider.port}/`)).status);
    expect(other.value).toBe(200);
    expect(other.ms).toBeLessThan(1000);
    expect(provider.connections).toBe(1);
    // What getaddrinfo's threads also serve: a database host name (pg resolves with dns.lookup) and fs.
    expect((await timed(() => lookup('localhost'))).ms).toBeLessThan(1000);
    expect((await timed(() => readFile('/etc/hosts'))).ms).toBeLessThan(1000);
    expect(settled).toBe(0);

    // Each fails by its own deadline (c-ares gives up at about 3/4 of it, the deadline's timer is the bound), named by its own host, retryable.
    for (const [i, s] of (await Promise.all(stalled)).entries()) {
      expect(s.value).toBeInstanceOf(HostLookupTimeoutError);
      expect(s.value!.message).toBe(`looking up host hook${i}.stall.test took longer than 4 s (its DNS servers did not answer); try again later`);
      expect(s.ms).toBeGreaterThan(2800);
      expect(s.ms).toBeLessThan(5000);
    }
    const failure = toActivityFailure(stalled.length && (await stalled[0]!).value);
    expect(failure).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: expect.stringContaining('hook0.stall.test') });
  });

  it('times out at the deadline with the host name, even when the DNS server would keep it longer', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], dnsTimeoutSeconds: 0.5, ...files({}) });
    const { value: error, ms } = await timed(() => outcome(resolve('ci.stall.test')));
    expect(error).toBeInstanceOf(HostLookupTimeoutError);
    expect(error).toMatchObject({ code: 'ETIMEOUT', host: 'ci.stall.test', message: expect.stringContaining('host ci.stall.test took longer than 0.5 s') });
    expect(ms).toBeGreaterThan(350);
    expect(ms).toBeLessThan(1500);
  });

  it("the API's URL check: a lookup past its deadline is a timeout (retryable), not a refusal, and another tenant's check is not held", async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], dnsTimeoutSeconds: 1, ...files({}) });
    const stalled = Array.from({ length: 6 }, (_, i) => timed(() => outcome(normalizeProviderUrl(`https://git${i}.stall.test/api`, { allowHttpHosts: [], resolve }))));
    // At least two lookups asking: as many as getaddrinfo's threads served before.
    await dns.received(4);
    const other = await timed(() => normalizeProviderUrl('https://GitLab.Example.test/', { allowHttpHosts: [], resolve }));
    expect(other.value).toBe('https://gitlab.example.test');
    expect(other.ms).toBeLessThan(500);
    for (const s of await Promise.all(stalled)) {
      expect(s.value).toBeInstanceOf(HostLookupTimeoutError);
      expect(s.value).not.toBeInstanceOf(UnsafeUrlError);
      expect(s.ms).toBeLessThan(2500);
    }
  });

  it('keeps the address checks: a name answering a private address is refused at connect, with no connection', async () => {
    const dns = await fakeDns();
    const outbound = createOutbound({ allowHttpHosts: [], allowPrivateNetworks: [], dnsServers: [dns.server], dnsTimeoutSeconds: 2, ...files({}) });
    const error = await outcome(outbound.fetch('https://internal.test/'));
    expect(error).toBeInstanceOf(OutboundRefusedError);
    expect(error!.message).toBe('host internal.test resolves to a loopback or private address (allow it in security.allowPrivateNetworks)');
    await expect(normalizeProviderUrl('https://internal.test', { allowHttpHosts: [], resolve: createHostResolver({ dnsServers: [dns.server], ...files({}) }) })).rejects.toThrow(UnsafeUrlError);
  });

  it('uses the family that answered when the other goes unanswered, by the deadline', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], dnsTimeoutSeconds: 1, ...files({}) });
    const { value, ms } = await timed(() => resolve('v4only.test'));
    expect(value).toEqual(['127.0.0.1']);
    expect(ms).toBeLessThan(1500);
  });
});

describe('host lookups: names answered before the network', () => {
  it('IP literals, the hosts file and localhost ask no DNS server', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({ hosts: '127.0.0.1 localhost\n10.1.2.3 ghes.internal ghes # an alias\n::1 ip6-localhost\n' }) });
    expect(await resolve('203.0.113.9')).toEqual(['203.0.113.9']);
    expect(await resolve('[::1]')).toEqual(['::1']);
    expect(await resolve('localhost')).toEqual(['127.0.0.1']);
    expect(await resolve('GHES')).toEqual(['10.1.2.3']);
    expect(await resolve('ghes.internal')).toEqual(['10.1.2.3']);
    // localhost is loopback even when the hosts file does not say so (RFC 6761).
    expect(await createHostResolver({ dnsServers: [dns.server], ...files({}) })('api.localhost')).toEqual(['127.0.0.1', '::1']);
    expect(dns.queries).toEqual([]);
  });

  it("applies resolv.conf's search domains as getaddrinfo does (c-ares' own queries would not)", async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'nameserver 10.255.255.53\nsearch corp.test other.test\noptions ndots:1\n' }) });
    expect(await resolve('gitlab')).toEqual(['203.0.113.5']);
    expect(dns.queries.splice(0).map((q) => q.split(' ')[0])).toEqual(['gitlab.corp.test', 'gitlab.corp.test']);
    // As many dots as ndots: the name itself first.
    expect(await resolve('gitlab.example.test')).toEqual(['203.0.113.5']);
    expect(dns.queries.splice(0).map((q) => q.split(' ')[0])).toEqual(['gitlab.example.test', 'gitlab.example.test']);
    // A trailing dot: the name alone.
    await expect(resolve('gitlab.')).rejects.toMatchObject({ code: 'ENOTFOUND' });
    expect(dns.queries.splice(0).map((q) => q.split(' ')[0])).toEqual(['gitlab', 'gitlab']);
  });

  // Kubernetes pods inherit the node's search domains: one corporate domain whose servers fail must not make every dotted name fail.
  it('passes a search domain whose servers answer SERVFAIL, as glibc does, and reports the failure only when no candidate resolves', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'search ns.svc.cluster.local broken.test\noptions ndots:5\n' }) });
    expect(await resolve('gitlab.example.test')).toEqual(['203.0.113.5']);
    const asked = () => [...new Set(dns.queries.splice(0).map((q) => q.split(' ')[0]))];
    expect(asked()).toEqual(['gitlab.example.test.ns.svc.cluster.local', 'gitlab.example.test.broken.test', 'gitlab.example.test']);
    // The name itself first (ndots:1), then the failing domain, then the next.
    const nameFirst = createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'search broken.test corp.test\noptions ndots:1\n' }) });
    expect(await nameFirst('gitlab')).toEqual(['203.0.113.5']);
    expect(asked()).toEqual(['gitlab.broken.test', 'gitlab.corp.test']);
    // Search domains first, none resolving: the name may be the one under the failing domain, so the servers' failure is reported (retryable), not "not there".
    const failed = await outcome(resolve('nowhere.example.test'));
    expect(failed).toBeInstanceOf(HostLookupFailedError);
    expect(failed).toMatchObject({ code: 'ESERVFAIL', host: 'nowhere.example.test', candidate: 'nowhere.example.test.broken.test', message: 'looking up host nowhere.example.test failed: its DNS servers answered SERVFAIL; try again later' });
    expect(asked()).toEqual(['nowhere.example.test.ns.svc.cluster.local', 'nowhere.example.test.broken.test', 'nowhere.example.test']);
    // The name asked first (as many dots as ndots): its own NXDOMAIN is the answer, whatever a search domain after it failed.
    const typo = await outcome(nameFirst('gitlab.nowhere.test'));
    expect(typo).not.toBeInstanceOf(HostLookupFailedError);
    expect(typo).toMatchObject({ code: 'ENOTFOUND', message: 'host gitlab.nowhere.test does not resolve (ENOTFOUND)' });
    expect(asked()).toEqual(['gitlab.nowhere.test', 'gitlab.nowhere.test.broken.test', 'gitlab.nowhere.test.corp.test']);
    // …and its own SERVFAIL is the servers' failure, though every search domain after it said "not there".
    await expect(nameFirst('git.broken.test')).rejects.toMatchObject({ name: 'HostLookupFailedError', code: 'ESERVFAIL', candidate: 'git.broken.test' });
    // Every candidate not there: not there.
    const nowhere = await outcome(createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'search corp.test other.test\noptions ndots:5\n' }) })('nowhere.example.test'));
    expect(nowhere).not.toBeInstanceOf(HostLookupFailedError);
    expect(nowhere).toMatchObject({ code: 'ENOTFOUND' });
  });

  it('after a search domain that refuses, asks the name itself and no other search domain (glibc: NO_RECOVERY ends the search list)', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'search refusing.test corp.test\noptions ndots:5\n' }) });
    expect(await resolve('gitlab.example.test')).toEqual(['203.0.113.5']);
    expect([...new Set(dns.queries.map((q) => q.split(' ')[0]))]).toEqual(['gitlab.example.test.refusing.test', 'gitlab.example.test']);
  });

  it('after a search domain whose servers never answer, asks the name itself in what is left of the deadline', async () => {
    const dns = await fakeDns();
    // A deadline of 10 s: the silent domain's two tries take about 3/4 of it, which leaves the name
    // itself 2.5 s, room for a loaded CI machine (with 2 s, its 0.5 s was once not enough there).
    const resolve = createHostResolver({ dnsServers: [dns.server], dnsTimeoutSeconds: 10, ...files({ resolvConf: 'search stall.test corp.test\noptions ndots:5\n' }) });
    const { value, ms } = await timed(() => resolve('gitlab.example.test'));
    expect(value).toEqual(['203.0.113.5']);
    expect(ms).toBeLessThan(10_000);
    expect([...new Set(dns.queries.map((q) => q.split(' ')[0]))]).toEqual(['gitlab.example.test.stall.test', 'gitlab.example.test']);
  }, 20_000);
});

describe('host lookups: numeric hosts', () => {
  it('are the IPv4 address the URL parser and inet_aton make of them, never a DNS question; numeric forms that are no address are refused', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({ resolvConf: 'search corp.test\n' }) });
    expect(await resolve('2130706433')).toEqual(['127.0.0.1']);
    expect(await resolve('0x7f.1')).toEqual(['127.0.0.1']);
    expect(await resolve('127.1.')).toEqual(['127.0.0.1']);
    await expect(resolve('1.2.3.4.5')).rejects.toMatchObject({ code: 'EBADNAME' });
    await expect(resolve('gitlab.1')).rejects.toMatchObject({ code: 'EBADNAME' });
    expect(dns.queries).toEqual([]);
    // What tenants send: the URL parser has made the address already, and the address checks refuse it.
    await expect(normalizeProviderUrl('https://2130706433/', { allowHttpHosts: [], resolve })).rejects.toThrow('loopback or private');
  });
});

describe('host lookups: DNS servers that fail are not names that do not exist', () => {
  it('SERVFAIL, REFUSED, FORMERR and NOTIMP for the name itself are the servers\' failure (retryable, named by the host); NXDOMAIN is a name that is not there', async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({}) });
    const failures = {
      'git.broken.test': ['ESERVFAIL', 'its DNS servers answered SERVFAIL'],
      'git.refusing.test': ['EREFUSED', 'its DNS servers refused the query (REFUSED)'],
      'git.formerr.test': ['EFORMERR', 'its DNS servers did not understand the query (FORMERR)'],
      'git.notimp.test': ['ENOTIMP', 'its DNS servers do not support the query (NOTIMP)'],
    };
    for (const [host, [code, what]] of Object.entries(failures)) {
      const error = await outcome(resolve(host));
      expect(error, host).toBeInstanceOf(HostLookupFailedError);
      expect(error, host).not.toBeInstanceOf(HostLookupTimeoutError);
      expect(error, host).toMatchObject({ host, code, message: `looking up host ${host} failed: ${what}; try again later` });
    }
    const missing = await outcome(resolve('nowhere.test'));
    expect(missing).not.toBeInstanceOf(HostLookupFailedError);
    expect(missing).toMatchObject({ code: 'ENOTFOUND', message: 'host nowhere.test does not resolve (ENOTFOUND)' });
    // Nothing listening where the servers should be: no server to ask is the servers' failure too.
    const unreachable = await outcome(createHostResolver({ dnsServers: ['127.0.0.1:1'], dnsTimeoutSeconds: 2, ...files({}) })('gitlab.example.test'));
    expect(unreachable).toBeInstanceOf(HostLookupFailedError);
  });

  it("the API's URL check: a host whose servers fail throws the lookup's failure (the API's 503), only a host that is not there is refused (400)", async () => {
    const dns = await fakeDns();
    const resolve = createHostResolver({ dnsServers: [dns.server], ...files({}) });
    const failed = await outcome(normalizeProviderUrl('https://gitlab.broken.test/api', { allowHttpHosts: [], resolve }));
    expect(failed).toBeInstanceOf(HostLookupFailedError);
    expect(failed).not.toBeInstanceOf(UnsafeUrlError);
    const refused = await outcome(normalizeProviderUrl('https://gitlab.refusing.test/api', { allowHttpHosts: [], resolve }));
    expect(refused).toBeInstanceOf(HostLookupFailedError);
    const missing = await outcome(normalizeProviderUrl('https://nowhere.test/api', { allowHttpHosts: [], resolve }));
    expect(missing).toBeInstanceOf(UnsafeUrlError);
    expect(missing!.message).toBe('host nowhere.test does not resolve');
  });

  it('an activity is retried past any lookup failure: failed servers and a name not there alike (ProviderUnavailable, named by the host)', async () => {
    const dns = await fakeDns();
    const outbound = createOutbound({ allowHttpHosts: [], allowPrivateNetworks: [], dnsServers: [dns.server], dnsTimeoutSeconds: 2, ...files({}) });
    const servfail = await outcome(outbound.fetch('https://gitlab.broken.test/api/v4/projects'));
    expect(toActivityFailure(servfail)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false, message: 'looking up host gitlab.broken.test failed: its DNS servers answered SERVFAIL; try again later' });
    const missing = await outcome(outbound.fetch('https://nowhere.test/'));
    expect(toActivityFailure(missing)).toMatchObject({ type: 'ProviderUnavailable', nonRetryable: false });
  });
});
