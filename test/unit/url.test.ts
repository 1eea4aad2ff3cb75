import { describe, expect, it } from 'vitest';
import { isForbiddenAddress, normalizeProviderUrl } from '../../lib/url.ts';

const opts = (addresses: string[], allowHttpHosts: string[] = []) => ({ allowHttpHosts, resolve: async () => addresses });

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
    await expect(normalizeProviderUrl('https://sneaky.example.com', opts(['203.0.113.9', '169.254.10.1']))).rejects.toThrow(/169\.254\.10\.1/);
    await expect(normalizeProviderUrl('https://[fe80::1]', opts([]))).rejects.toThrow(/link-local/);
    expect(isForbiddenAddress('::ffff:169.254.169.254')).toBe(true);
    expect(isForbiddenAddress('100.100.100.200')).toBe(true);
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
});
