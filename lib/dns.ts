import { readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';

/**
 * How tenant-supplied host names are looked up (security.dnsServers, security.dnsTimeoutSeconds).
 * Not with dns.lookup: getaddrinfo runs on libuv's threadpool (4 threads, shared with fs, zlib,
 * crypto and every other lookup, PostgreSQL's host name included) and has no time limit, so one
 * tenant whose name servers never answer held the pool and every other tenant's new connection waited.
 */
export interface HostResolverOptions {
  /** Name servers (`10.0.0.2`, `10.0.0.2:5353`, `[fd00::2]:53`); default those of /etc/resolv.conf. */
  dnsServers?: string[];
  /** One lookup's deadline, both address families and every search domain included; default 5 s. */
  dnsTimeoutSeconds?: number;
  /** The hosts file and resolv.conf read when the resolver is made (tests point them elsewhere). */
  hostsFile?: string;
  resolvConf?: string;
}

export type ResolveHost = (host: string) => Promise<string[]>;

export const DNS_TIMEOUT_SECONDS_DEFAULT = 5;

/**
 * How the DNS servers failed, for a failure that is theirs and not an answer about the name. c-ares'
 * codes (node:dns): SERVFAIL, REFUSED, FORMERR and NOTIMP are the servers' answers; the rest, no
 * server could be reached or what it sent could not be read.
 */
const SERVER_FAILURES: Record<string, string> = {
  ESERVFAIL: 'answered SERVFAIL',
  EREFUSED: 'refused the query (REFUSED)',
  EFORMERR: 'did not understand the query (FORMERR)',
  ENOTIMP: 'do not support the query (NOTIMP)',
  ECONNREFUSED: 'could not be reached',
  EBADRESP: 'sent an answer that could not be read',
};

/**
 * A lookup its DNS servers failed (SERVFAIL, REFUSED, FORMERR, NOTIMP, none reachable) or did not
 * answer by the deadline (HostLookupTimeoutError): no answer about the name, so not a name that does
 * not exist. Retryable (the API answers 503 with Retry-After, an activity is retried), and named by
 * the host, so it is that host's problem and no one else's. `candidate` is the name asked whose
 * servers failed (the host under a search domain, perhaps): for the log, not for the tenant.
 */
export class HostLookupFailedError extends Error {
  override name = 'HostLookupFailedError';
  constructor(
    readonly host: string,
    readonly code: string,
    readonly candidate: string = host,
    message = `looking up host ${host} failed: its DNS servers ${SERVER_FAILURES[code] ?? `failed (${code})`}; try again later`,
  ) {
    super(message);
  }
}

/** A lookup past its deadline: retryable, and named by the host. */
export class HostLookupTimeoutError extends HostLookupFailedError {
  override name = 'HostLookupTimeoutError';
  declare readonly code: 'ETIMEOUT';
  constructor(host: string, timeoutMs: number, candidate: string = host) {
    super(host, 'ETIMEOUT', candidate, `looking up host ${host} took longer than ${timeoutMs / 1000} s (its DNS servers did not answer); try again later`);
  }
}

/**
 * How glibc's res_search (getaddrinfo's) walks the candidates past a failure of one of them. A name
 * that is not there, or whose servers answer SERVFAIL, is passed by: one failing search domain
 * inherited from a node must not make every other name fail. A refusal, a question not understood
 * or a timeout in a search domain ends the search domains, not the name itself; the name itself
 * tried first and failing goes on to the search domains. Anything else (no server to ask) ends the lookup.
 */
const GO_ON = new Set(['ENOTFOUND', 'ENODATA', 'ESERVFAIL']);
const NAME_ITSELF_NEXT = new Set(['EREFUSED', 'EFORMERR', 'ENOTIMP', 'ETIMEOUT']);

/**
 * The answers that a name is not there, or cannot be one (a 400 for a tenant's URL). Every other
 * failure is the DNS servers' (HostLookupFailedError): FORMERR and NOTIMP too, which glibc counts as
 * non-recoverable (EAI_FAIL, not EAI_NONAME): they say nothing of the name, only that a server (the
 * operator's resolver, a forwarder, the name's authority) could not answer the question, and an
 * operator's fix or a failover of that server makes the same URL resolve.
 */
const NOT_THERE = new Set(['ENOTFOUND', 'ENODATA', 'EBADNAME', 'EBADQUERY', 'EBADSTR', 'ENONAME']);

const notFound = (host: string, code = 'ENOTFOUND') => Object.assign(new Error(`host ${host} does not resolve (${code})`), { code });

/** name → addresses, in the file's order. */
function readHostsFile(path: string): Map<string, string[]> {
  const names = new Map<string, string[]>();
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return names;
  }
  for (const line of text.split('\n')) {
    const [address, ...aliases] = line.replace(/#.*/, '').trim().split(/\s+/);
    if (!address || !isIP(address.replace(/%.*$/, ''))) continue;
    for (const alias of aliases.map((a) => a.toLowerCase())) {
      const listed = names.get(alias) ?? [];
      if (!listed.includes(address)) names.set(alias, [...listed, address]);
    }
  }
  return names;
}

/**
 * A host whose last label is a number is an IPv4 address to the WHATWG URL parser and to inet_aton
 * (getaddrinfo): `2130706433`, `0x7f.1` and `127.1` are 127.0.0.1. Tenant URLs reach here already
 * normalized to dotted quads; a caller that did not normalize gets the address any other client
 * would connect to (for the address checks to judge), never a DNS answer for it. Undefined for a
 * name, null for a numeric form that is no address (`1.2.3.4.5`, `host.1`): refused, not asked.
 */
function numericAddress(name: string): string | null | undefined {
  if (!/^(\d+|0x[\da-f]*)$/.test(name.split('.').at(-1) ?? '')) return undefined;
  if (!/^[\da-fx.]+$/.test(name)) return null;
  try {
    const { hostname } = new URL(`http://${name}/`);
    return isIP(hostname) === 4 ? hostname : null;
  } catch {
    return null;
  }
}

/** resolv.conf's search list and ndots, which getaddrinfo applies and c-ares' queries do not. */
function readSearchList(path: string): { search: string[]; ndots: number } {
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return { search: [], ndots: 1 };
  }
  let search: string[] = [];
  let ndots = 1;
  for (const line of text.split('\n')) {
    const [keyword, ...values] = line.replace(/[#;].*/, '').trim().split(/\s+/);
    // As in glibc, the last `search` or `domain` line wins.
    if (keyword === 'search' || keyword === 'domain') search = values.map((d) => d.replace(/\.$/, '').toLowerCase()).filter(Boolean);
    if (keyword === 'options') {
      const option = values.find((v) => v.startsWith('ndots:'));
      if (option) ndots = Math.min(15, Math.max(0, Number(option.slice(6)) || 0));
    }
  }
  return { search, ndots };
}

/**
 * Resolves host names with c-ares (node:dns Resolver: its sockets are polled on the event loop, no
 * thread is held while a server is silent), under one deadline per lookup. Before the network:
 * IP literals are themselves (numeric IPv4 forms too), the hosts file answers for its names (getaddrinfo's `files` first),
 * and `localhost` (and `*.localhost`) is loopback (RFC 6761). Names are tried with resolv.conf's
 * search domains as getaddrinfo would (fewer dots than ndots: each search domain first, then the
 * name; otherwise the name first); a trailing dot means the name alone. A candidate that is not
 * there or whose servers fail (SERVFAIL) is passed by as glibc does (GO_ON); a failure is reported
 * only when no candidate resolves (walk), and the one deadline bounds the whole walk. Throws
 * HostLookupFailedError (HostLookupTimeoutError past the deadline) when the DNS servers failed, and
 * an error with code ENOTFOUND (ENODATA, EBADNAME…) when the name is not there.
 */
export function createHostResolver(options: HostResolverOptions = {}): ResolveHost {
  const deadlineMs = Math.round((options.dnsTimeoutSeconds ?? DNS_TIMEOUT_SECONDS_DEFAULT) * 1000);
  // Two tries (the second waits twice as long) end near 3/4 of the deadline (c-ares adapts its
  // timeouts to the server's latency, so not exactly): a question nobody answers stops being sent.
  const resolver = new Resolver({ timeout: Math.max(10, Math.floor(deadlineMs / 4)), tries: 2 });
  if (options.dnsServers?.length) resolver.setServers(options.dnsServers);
  const hosts = readHostsFile(options.hostsFile ?? '/etc/hosts');
  const { search, ndots } = readSearchList(options.resolvConf ?? '/etc/resolv.conf');

  /** Both families' addresses; `answered` hears each family's as it comes, for a deadline that ends the lookup first. */
  async function addressesOf(name: string, answered: (addresses: string[]) => void): Promise<string[]> {
    const found: string[] = [];
    const family = (query: Promise<string[]>) =>
      query.then((addresses) => {
        found.push(...addresses);
        if (found.length > 0) answered([...found]);
        return addresses;
      });
    const answers = await Promise.allSettled([family(resolver.resolve4(name)), family(resolver.resolve6(name))]);
    if (found.length > 0) return found;
    const failures = answers.map((a) => (a.status === 'rejected' ? (a.reason as { code?: string }) : { code: 'ENODATA' }));
    // A name with no address of either family is not there; any other failure is the walk's to judge.
    const failure = failures.find((f) => f.code !== 'ENOTFOUND' && f.code !== 'ENODATA');
    if (failure) throw failure;
    return [];
  }

  const failureOf = (host: string, code: string, candidate: string) =>
    code === 'ETIMEOUT' ? new HostLookupTimeoutError(host, deadlineMs, candidate) : NOT_THERE.has(code) ? notFound(host, code) : new HostLookupFailedError(host, code, candidate);

  async function walk(host: string, name: string, absolute: boolean, expired: () => boolean, answered: (addresses: string[]) => void): Promise<string[]> {
    const searched = absolute ? [] : search.map((domain) => `${name}.${domain}`);
    const nameFirst = name.split('.').length - 1 >= ndots;
    const candidates = nameFirst ? [name, ...searched] : [...searched, name];
    // The failure reported when no candidate resolves. The name asked first (as many dots as
    // ndots, or a trailing dot): its own answer, as glibc's res_search reports it; a typo'd full
    // name is not there whatever a search domain tried after it answered. Search domains first: a
    // failure of any candidate's servers (a timeout before any other, else the first), since the
    // name may be the one under that search domain; not there only when every candidate said so.
    let failure: { code: string; candidate: string } | undefined;
    let own: { code: string; candidate: string } | undefined;
    let searching = true;
    for (const candidate of candidates) {
      if (expired()) break;
      if (!searching && candidate !== name) continue;
      let code = 'ENOTFOUND';
      try {
        const addresses = await addressesOf(candidate, answered);
        if (addresses.length > 0) return addresses;
      } catch (error) {
        code = (error as { code?: string }).code ?? 'ENOTFOUND';
        if (!GO_ON.has(code) && !NAME_ITSELF_NEXT.has(code)) throw failureOf(host, code, candidate);
        if (!NOT_THERE.has(code) && (failure === undefined || (code === 'ETIMEOUT' && failure.code !== 'ETIMEOUT'))) failure = { code, candidate };
        if (NAME_ITSELF_NEXT.has(code) && candidate !== name) searching = false;
      }
      if (nameFirst && candidate === name) own = { code, candidate };
    }
    const reported = own ?? failure ?? { code: 'ENOTFOUND', candidate: name };
    throw failureOf(host, reported.code, reported.candidate);
  }

  return async (host) => {
    const bare = host.replace(/^\[|\]$/g, '');
    if (isIP(bare)) return [bare];
    const absolute = bare.endsWith('.');
    const name = bare.replace(/\.$/, '').toLowerCase();
    const numeric = numericAddress(name);
    if (numeric) return [numeric];
    if (numeric === null) throw notFound(host, 'EBADNAME');
    const listed = hosts.get(name);
    if (listed) return listed;
    if (name === 'localhost' || name.endsWith('.localhost')) return ['127.0.0.1', '::1'];
    return new Promise<string[]>((resolve, reject) => {
      let expired = false;
      let answered: string[] = [];
      // At the deadline, a family that answered is the answer (the other's silence is no one's delay); nothing answered: a timeout.
      const timer = setTimeout(() => {
        expired = true;
        if (answered.length > 0) resolve(answered);
        else reject(new HostLookupTimeoutError(host, deadlineMs));
      }, deadlineMs);
      walk(host, name, absolute, () => expired, (addresses) => (answered = addresses))
        .then(resolve, reject)
        .finally(() => clearTimeout(timer));
    });
  };
}
