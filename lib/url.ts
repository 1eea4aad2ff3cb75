import { isIP } from 'node:net';
import { createHostResolver, HostLookupFailedError, type ResolveHost } from './dns.ts';

export class UnsafeUrlError extends Error {
  override name = 'UnsafeUrlError';
  constructor(
    message: string,
    /** The resolved address refused, for the server's log only: the message never names it. */
    readonly address?: string,
  ) {
    super(message);
  }
}

/** Where provider and subscriber URLs may lead (security.allowHttpHosts, security.allowPrivateNetworks). */
export interface AddressPolicy {
  /** Host names reachable over plain http; they may also resolve to loopback and private addresses. */
  allowHttpHosts: string[];
  /** Addresses or CIDR ranges (`10.0.0.0/8`, `127.0.0.1`, `fd12::/16`) of loopback and private networks that may be reached. */
  allowPrivateNetworks?: string[];
}

/** An address as bytes: 4 for IPv4, 16 for IPv6; undefined when `ip` is not an address. */
function addressBytes(ip: string): number[] | undefined {
  const bare = ip.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const family = isIP(bare);
  if (family === 4) return bare.split('.').map(Number);
  if (family !== 6) return undefined;
  let text = bare.toLowerCase();
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const groups = (part: string) => (part ? part.split(':') : []);
  const filled =
    tail === undefined
      ? groups(head)
      : [...groups(head), ...Array<string>(8 - groups(head).length - groups(tail).length).fill('0'), ...groups(tail)];
  return filled.flatMap((group) => {
    const value = parseInt(group, 16);
    return [value >> 8, value & 0xff];
  });
}

/** `10.0.0.0/8`, `::1`, `fc00::/7`: bytes and prefix length. */
function parseNetwork(entry: string): { bytes: number[]; bits: number } | undefined {
  const [address = '', prefix, extra] = entry.trim().split('/');
  const bytes = addressBytes(address);
  if (!bytes || extra !== undefined) return undefined;
  const bits = prefix === undefined ? bytes.length * 8 : Number(prefix);
  if ((prefix !== undefined && !/^\d+$/.test(prefix)) || !Number.isInteger(bits) || bits < 0 || bits > bytes.length * 8) return undefined;
  return { bytes, bits };
}

export const isNetwork = (entry: string): boolean => parseNetwork(entry) !== undefined;

function inNetwork(bytes: number[], network: { bytes: number[]; bits: number }): boolean {
  if (bytes.length !== network.bytes.length) return false;
  for (let bit = 0; bit < network.bits; bit += 8) {
    const mask = (0xff << (8 - Math.min(8, network.bits - bit))) & 0xff;
    if ((bytes[bit / 8]! & mask) !== (network.bytes[bit / 8]! & mask)) return false;
  }
  return true;
}

const networks = (...entries: string[]) => entries.map((entry) => parseNetwork(entry)!);
/**
 * Never a Git provider or a subscriber: link-local, cloud metadata (168.63.129.16 is Azure's platform
 * address: its wire server and DNS answer any VM in Azure), unspecified, multicast, reserved.
 */
const FORBIDDEN = networks(
  '0.0.0.0/8', '169.254.0.0/16', '100.100.100.200', '168.63.129.16', '192.0.0.0/24', '224.0.0.0/3',
  '::/128', 'fe80::/10', 'fec0::/10', 'ff00::/8', 'fd00:ec2::254', '100::/64',
);
/** Loopback and private networks: reachable only where the policy says so. */
const PRIVATE = networks('127.0.0.0/8', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '198.18.0.0/15', '::1/128', 'fc00::/7', '64:ff9b:1::/48');

const zeros = (bytes: number[], from: number, to: number) => bytes.slice(from, to).every((b) => b === 0);
/** ::ffff:a.b.c.d: the IPv4 address itself, as a dual-stack socket sees it. */
const isIpv4Mapped = (bytes: number[]) => bytes.length === 16 && zeros(bytes, 0, 10) && bytes[10] === 0xff && bytes[11] === 0xff;
const NAT64 = parseNetwork('64:ff9b::/96')!;
/**
 * Local-use NAT64 (RFC 8215): private itself, so an operator may list it in allowPrivateNetworks,
 * but a local translator maps part of the address to IPv4: 64:ff9b:1::a9fe:a9fe would reach
 * 169.254.169.254. Which part depends on the prefix the translator uses inside the /48, which a
 * check cannot know: RFC 6052 (2.2) places the IPv4 address after a /48, /56 or /64 prefix around
 * bits 64-71 (left zero), with a free suffix, or in the last 32 bits after a /96. Every one of those
 * positions is read: 64:ff9b:1:a9fe:a9:fe08:808:808 is 8.8.8.8 to a /96 translator and
 * 169.254.169.254 to a /48 one. (A /32 or /40 prefix would reach outside the /48.)
 */
const LOCAL_NAT64 = parseNetwork('64:ff9b:1::/48')!;
/** The bytes of the IPv4 address after a /48, /56, /64 and /96 prefix (RFC 6052 2.2). */
const LOCAL_NAT64_LAYOUTS = [
  [6, 7, 9, 10],
  [7, 9, 10, 11],
  [9, 10, 11, 12],
  [12, 13, 14, 15],
];
const TEREDO = parseNetwork('2001::/32')!;

/** IPv4 addresses an IPv6 address carries: mapped, translated (::ffff:0:…), compatible, NAT64 (well-known, and every layout of local-use), 6to4, Teredo. */
function embeddedIpv4(bytes: number[]): number[][] {
  if (bytes.length !== 16) return [];
  const last = bytes.slice(12);
  const embedded: number[][] = [];
  const translated = zeros(bytes, 0, 8) && bytes[8] === 0xff && bytes[9] === 0xff && zeros(bytes, 10, 12);
  // Compatible (::a.b.c.d) leaves out :: and ::1, which are addresses of their own.
  const compatible = zeros(bytes, 0, 12) && bytes[12] !== 0;
  if (isIpv4Mapped(bytes) || translated || compatible || inNetwork(bytes, NAT64)) embedded.push(last);
  if (inNetwork(bytes, LOCAL_NAT64)) {
    // A reading in 0.0.0.0/8 is the zeros around another layout's address (64:ff9b:1::a00:1 reads
    // 0.0.0.10 after a /64), not an address a translator forwards to.
    for (const layout of LOCAL_NAT64_LAYOUTS) {
      const ipv4 = layout.map((at) => bytes[at]!);
      if (ipv4[0] !== 0) embedded.push(ipv4);
    }
  }
  if (bytes[0] === 0x20 && bytes[1] === 0x02) embedded.push(bytes.slice(2, 6));
  if (inNetwork(bytes, TEREDO)) embedded.push(bytes.slice(4, 8), last.map((b) => b ^ 0xff));
  return embedded;
}

export type AddressClass = 'forbidden' | 'private' | 'public';

/** The strictest class of the address and of every IPv4 address it embeds. */
export function addressClass(ip: string): AddressClass {
  const bytes = addressBytes(ip);
  if (!bytes) return 'forbidden';
  const classes = [bytes, ...embeddedIpv4(bytes)].map((b) =>
    FORBIDDEN.some((n) => inNetwork(b, n)) ? 'forbidden' : PRIVATE.some((n) => inNetwork(b, n)) ? 'private' : 'public',
  );
  return classes.includes('forbidden') ? 'forbidden' : classes.includes('private') ? 'private' : 'public';
}

/** Link-local and cloud metadata addresses (and their IPv6 embeddings): never a Git provider, often a credential oracle. */
export const isForbiddenAddress = (ip: string): boolean => addressClass(ip) === 'forbidden';

/**
 * Why `host`, resolved to `ip`, may not be reached, or undefined when it may. Link-local and
 * metadata addresses never; loopback and private ones only for a host in allowHttpHosts or an
 * address in allowPrivateNetworks. The reason names a resolved address only when the URL gave it
 * itself: it reaches tenants (a 400, a connection's reason, a dispatch attempt's error), and the
 * addresses internal names resolve to would map the operator's network for them. Callers log it.
 */
export function addressRefusal(policy: AddressPolicy, host: string, ip: string): string | undefined {
  const kind = addressClass(ip);
  if (kind === 'public') return undefined;
  const shown = host === ip ? `${ip} is` : `host ${host} resolves to`;
  if (kind === 'forbidden') return `${shown} a link-local or metadata address`;
  const bytes = addressBytes(ip)!;
  // An IPv4-mapped address is the IPv4 address for the allow-list.
  const asListed = isIpv4Mapped(bytes) ? bytes.slice(12) : bytes;
  const allowed =
    policy.allowHttpHosts.some((h) => h.toLowerCase() === host.toLowerCase()) ||
    (policy.allowPrivateNetworks ?? []).some((entry) => {
      const network = parseNetwork(entry);
      return network !== undefined && inNetwork(asListed, network);
    });
  return allowed ? undefined : `${shown} a loopback or private address (allow it in security.allowPrivateNetworks)`;
}

/** The resolver of URL checks given none (lib/dns.ts, default settings). */
let defaultResolve: ResolveHost | undefined;

/**
 * Checks and normalizes a user-supplied provider or subscriber base URL: https only (http for
 * allow-listed hosts), no credentials, query or fragment, and a host that resolves only to addresses
 * the policy allows. Returns the URL without a trailing slash and with a lower-case host. The worker
 * checks the address again when it connects (activities/outbound.ts), since DNS may answer differently then.
 * A lookup its DNS servers failed (SERVFAIL, REFUSED, …) or did not answer by its deadline throws
 * HostLookupFailedError (the API answers 503: try again), not a refusal: only a name that is not
 * there (NXDOMAIN, no address) is the URL's fault.
 */
export async function normalizeProviderUrl(raw: string, options: AddressPolicy & { resolve?: ResolveHost }): Promise<string> {
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
  const resolve = options.resolve ?? (defaultResolve ??= createHostResolver());
  let addresses: string[];
  if (isIP(host)) addresses = [host];
  else {
    try {
      addresses = await resolve(host);
    } catch (error) {
      if (error instanceof HostLookupFailedError) throw error;
      throw new UnsafeUrlError(`host ${host} does not resolve`);
    }
  }
  for (const address of addresses) {
    const refusal = addressRefusal(options, host, address);
    if (refusal) throw new UnsafeUrlError(refusal, address);
  }
  const path = url.pathname.replace(/\/+$/, '');
  return `${url.protocol}//${url.host.toLowerCase()}${path}`;
}
