import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

export class UnsafeUrlError extends Error {
  override name = 'UnsafeUrlError';
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, part) => (acc << 8) + Number(part), 0) >>> 0;
}

function inV4Range(ip: string, base: string, bits: number): boolean {
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return (ipv4ToInt(ip) & mask) === (ipv4ToInt(base) & mask);
}

/** Link-local and cloud metadata addresses: never a Git provider, often a credential oracle. */
export function isForbiddenAddress(ip: string): boolean {
  const v4 = ip.startsWith('::ffff:') ? ip.slice(7) : ip;
  if (isIP(v4) === 4) {
    return inV4Range(v4, '169.254.0.0', 16) || inV4Range(v4, '100.100.100.200', 32) || inV4Range(v4, '0.0.0.0', 8);
  }
  const lower = ip.toLowerCase();
  return /^fe[89ab][0-9a-f]:/.test(lower) || lower === 'fd00:ec2::254' || lower === '::';
}

/**
 * Checks and normalizes a user-supplied provider base URL: https only (http for allow-listed hosts),
 * no credentials, query or fragment, and a host that does not resolve to link-local or metadata
 * addresses. Returns the URL without a trailing slash and with a lower-case host.
 */
export async function normalizeProviderUrl(
  raw: string,
  options: { allowHttpHosts: string[]; resolve?: (host: string) => Promise<string[]> },
): Promise<string> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UnsafeUrlError(`"${raw}" is not an absolute URL`);
  }
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (url.protocol === 'http:') {
    if (!options.allowHttpHosts.map((h) => h.toLowerCase()).includes(host)) {
      throw new UnsafeUrlError(`${url.origin} uses plain http; only https is allowed (http only for hosts listed in security.allowHttpHosts)`);
    }
  } else if (url.protocol !== 'https:') {
    throw new UnsafeUrlError(`${url.protocol} URLs are not allowed; use https`);
  }
  if (url.username || url.password) throw new UnsafeUrlError('the URL must not carry credentials');
  if (url.search || url.hash) throw new UnsafeUrlError('the URL must not have a query or fragment');
  const resolve =
    options.resolve ?? (async (h: string) => (await lookup(h, { all: true, verbatim: true })).map((a) => a.address));
  let addresses: string[];
  if (isIP(host)) addresses = [host];
  else {
    try {
      addresses = await resolve(host);
    } catch {
      throw new UnsafeUrlError(`host ${host} does not resolve`);
    }
  }
  const bad = addresses.find(isForbiddenAddress);
  if (bad) throw new UnsafeUrlError(`host ${host} resolves to ${bad}, a link-local or metadata address`);
  const path = url.pathname.replace(/\/+$/, '');
  return `${url.protocol}//${url.host.toLowerCase()}${path}`;
}
