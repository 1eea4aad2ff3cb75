import { describe, expect, it } from 'vitest';
import { addressClass, addressRefusal, isForbiddenAddress, isNetwork, normalizeProviderUrl, UnsafeUrlError } from '../../lib/url.ts';

const opts = (addresses: string[], allowHttpHosts: string[] = [], allowPrivateNetworks: string[] = []) => ({ allowHttpHosts, allowPrivateNetworks, resolve: async () => addresses });

describe('provider URL checks', () => {
  it('normalizes host case and trailing slashes', async () => {
    expect(await normalizeProviderUrl('https://GitLab.Example.com/', opts(['203.0.113.5']))).toBe('https://gitlab.example.com');
    expect(await normalizeProviderUrl('https://tfs.example.com/DefaultCollection//', opts(['203.0.113.5']))).toBe('https://tfs.example.com/DefaultCollection');
  });

  it('refuses plain http unless the host is allow-listed', async () => {
    await expect(normalizeProviderUrl('http://gitlab.example.com', opts(['203.0.113.5']))).rejects.toThrow(/plain http/);
    expect(await normalizeProviderUrl('http://127.0.0.1:8080', opts([], ['127.0.0.1']))).toBe('http://127.0.0.1:8080');
  });

  it('refuses metadata and link-local targets, also behind DNS', async () => {
    await expect(normalizeProviderUrl('https://169.254.169.254/latest', opts([]))).rejects.toThrow(/link-local or metadata/);
    await expect(normalizeProviderUrl('https://sneaky.example.com', opts(['203.0.113.9', '169.254.10.1']))).rejects.toMatchObject({ message: 'host sneaky.example.com resolves to a link-local or metadata address', address: '169.254.10.1' });
    await expect(normalizeProviderUrl('https://[fe80::1]', opts([]))).rejects.toThrow(/link-local/);
    expect(isForbiddenAddress('::ffff:169.254.169.254')).toBe(true);
    expect(isForbiddenAddress('100.100.100.200')).toBe(true);
    // Azure's platform address (wire server, DNS), bare and as an IPv4-mapped IPv6 address.
    expect(isForbiddenAddress('168.63.129.16')).toBe(true);
    expect(isForbiddenAddress('::ffff:a83f:8110')).toBe(true);
    expect(isForbiddenAddress('168.63.129.17')).toBe(false);
    await expect(normalizeProviderUrl('https://dev.azure.example', opts(['168.63.129.16']))).rejects.toThrow(/link-local or metadata/);
    expect(isForbiddenAddress('10.0.0.1')).toBe(false);
  });

  it('refuses credentials, queries, other schemes and unresolvable hosts', async () => {
    await expect(normalizeProviderUrl('https://user:pw@gitlab.example.com', opts(['203.0.113.5']))).rejects.toThrow(/credentials/);
    await expect(normalizeProviderUrl('https://gitlab.example.com/?x=1', opts(['203.0.113.5']))).rejects.toThrow(/query/);
    await expect(normalizeProviderUrl('file:///etc/passwd', opts([]))).rejects.toThrow(/file: URLs are not allowed/);
    await expect(normalizeProviderUrl('not a url', opts([]))).rejects.toThrow(/not an absolute URL/);
    const failing = { allowHttpHosts: [], resolve: async () => { throw new Error('ENOTFOUND'); } };
    await expect(normalizeProviderUrl('https://nowhere.invalid', failing)).rejects.toThrow(/does not resolve/);
  });

  it('refuses IPv4-mapped and other IPv6 embeddings of metadata addresses', async () => {
    await expect(normalizeProviderUrl('https://[::ffff:a9fe:a9fe]', opts([]))).rejects.toThrow(/link-local or metadata/);
    await expect(normalizeProviderUrl('https://[::ffff:169.254.169.254]/', opts([]))).rejects.toThrow(/link-local or metadata/);
    await expect(normalizeProviderUrl('https://sneaky.example.com', opts(['::ffff:a9fe:a9fe']))).rejects.toThrow(/link-local or metadata/);
    for (const ip of ['::ffff:a9fe:a9fe', '::ffff:0:a9fe:a9fe', '::a9fe:a9fe', '64:ff9b::a9fe:a9fe', '2002:a9fe:a9fe::1', '2001:0:4136:e378:8000:63bf:5601:5601', 'fd00:ec2::254', '0.0.0.0', '::', '224.0.0.1']) {
      expect(addressClass(ip), ip).toBe('forbidden');
    }
    for (const ip of ['127.0.0.1', '10.1.2.3', '172.31.0.1', '192.168.1.1', '::1', 'fd12::1', '::ffff:7f00:1', '::ffff:10.0.0.1']) expect(addressClass(ip), ip).toBe('private');
    for (const ip of ['203.0.113.5', '172.32.0.1', '2606:4700::1111']) expect(addressClass(ip), ip).toBe('public');
  });

  it('refuses loopback and private addresses unless allowPrivateNetworks or allowHttpHosts lists them', async () => {
    // The answer reaches the tenant: it names no address the name resolved to (that would map internal names); the error carries it for the log.
    const refused = await normalizeProviderUrl('https://internal.example.com', opts(['203.0.113.5', '10.0.0.7'])).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(UnsafeUrlError);
    expect(refused).toMatchObject({ message: 'host internal.example.com resolves to a loopback or private address (allow it in security.allowPrivateNetworks)', address: '10.0.0.7' });
    expect(addressRefusal({ allowHttpHosts: [] }, 'meta.internal', '169.254.169.254')).toBe('host meta.internal resolves to a link-local or metadata address');
    // An address the URL gave itself is the tenant's own: named.
    await expect(normalizeProviderUrl('https://10.0.0.7', opts([]))).rejects.toThrow('10.0.0.7 is a loopback or private address');
    expect(await normalizeProviderUrl('https://internal.example.com', opts(['10.0.0.7'], [], ['10.0.0.0/8']))).toBe('https://internal.example.com');
    expect(await normalizeProviderUrl('http://gitlab.lan', opts(['192.168.1.4'], ['gitlab.lan']))).toBe('http://gitlab.lan');
    await expect(normalizeProviderUrl('https://[::1]', opts([]))).rejects.toThrow(/loopback or private/);
    const policy = { allowHttpHosts: [], allowPrivateNetworks: ['127.0.0.1', 'fd12::/16'] };
    expect(addressRefusal(policy, 'a.test', '::ffff:127.0.0.1')).toBeUndefined();
    expect(addressRefusal(policy, 'a.test', 'fd12::9')).toBeUndefined();
    expect(addressRefusal(policy, 'a.test', '127.0.0.2')).toMatch(/loopback or private/);
    expect(addressRefusal({ ...policy, allowPrivateNetworks: ['169.254.0.0/16'] }, 'a.test', '169.254.169.254')).toMatch(/metadata/);
  });

  it('reads the last 32 bits of local-use NAT64 (64:ff9b:1::/48) as IPv4, even where allowPrivateNetworks lists the prefix', () => {
    const policy = { allowHttpHosts: [], allowPrivateNetworks: ['64:ff9b:1::/48'] };
    // A local translator would map these to 169.254.169.254 and 168.63.129.16.
    for (const ip of ['64:ff9b:1::a9fe:a9fe', '64:ff9b:1::169.254.169.254', '64:ff9b:1:ffff::a83f:8110']) {
      expect(addressClass(ip), ip).toBe('forbidden');
      expect(addressRefusal(policy, 'nat64.lan', ip), ip).toBe('host nat64.lan resolves to a link-local or metadata address');
    }
    // The prefix stays private; listed, it is reachable where the IPv4 address inside it is not forbidden.
    for (const ip of ['64:ff9b:1::a00:1', '64:ff9b:1::cb00:7105']) {
      expect(addressClass(ip), ip).toBe('private');
      expect(addressRefusal(policy, 'nat64.lan', ip), ip).toBeUndefined();
    }
    expect(addressRefusal({ allowHttpHosts: [] }, 'nat64.lan', '64:ff9b:1::cb00:7105')).toMatch(/loopback or private/);
  });

  it('reads local-use NAT64 at every position RFC 6052 places IPv4 inside the /48 (after a /48, /56, /64 or /96 prefix), refusing any forbidden reading', () => {
    const policy = { allowHttpHosts: [], allowPrivateNetworks: ['64:ff9b:1::/48'] };
    // Each is 168.63.129.16 (or 169.254.169.254) to a translator using that prefix and a public address at every other layout.
    const forbiddenAt = {
      '/48': ['64:ff9b:1:a83f:81:1008:808:808', '64:ff9b:1:a9fe:a9:fe08:808:808'],
      '/56': ['64:ff9b:1:a8:3f:8110:808:808'],
      '/64': ['64:ff9b:1:0:a8:3f81:1008:808'],
      '/96': ['64:ff9b:1:0:808:808:a83f:8110'],
    };
    for (const [layout, ips] of Object.entries(forbiddenAt)) {
      for (const ip of ips) {
        expect(addressClass(ip), `${layout} ${ip}`).toBe('forbidden');
        expect(addressRefusal(policy, 'nat64.lan', ip), `${layout} ${ip}`).toBe('host nat64.lan resolves to a link-local or metadata address');
      }
    }
    // 10.1.2.3 at each layout: the zeros around it read as 0.0.0.0/8 at the others, which is no address a translator reaches.
    for (const ip of ['64:ff9b:1:a01:2:300::', '64:ff9b:1:a:1:203::', '64:ff9b:1:0:a:102:300:0', '64:ff9b:1::a01:203']) {
      expect(addressClass(ip), ip).toBe('private');
      expect(addressRefusal(policy, 'nat64.lan', ip), ip).toBeUndefined();
    }
  });

  it('reads allowPrivateNetworks entries as addresses or CIDR ranges', () => {
    for (const entry of ['10.0.0.0/8', '127.0.0.1', '::1', 'fd00::/8']) expect(isNetwork(entry), entry).toBe(true);
    for (const entry of ['10.0.0.0/33', '10.0.0.0/', 'intranet', '10.0.0.0/8/1']) expect(isNetwork(entry), entry).toBe(false);
  });
});
