import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { delivery, fixture, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';
import { mutateBody, type Json } from './mutate.ts';
import type { Random } from './random.ts';
import { inOrganization, type Hook, type World, type WorldOrganization } from './world.ts';

/** One request of a fuzz run, as sent. */
export interface FuzzRequest {
  index: number;
  target: 'receiver' | 'api';
  /** What was done, for counting and for a failure's report. */
  label: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: Buffer;
  /** Sent with Transfer-Encoding: chunked (no Content-Length): the receiver reads such a body another way. */
  chunked?: boolean;
  /** Receivers: the organizations whose hook credential the request carries (GitHub: bound to the installation named); absent when forged. */
  credentialOf?: string[];
  /** API: false when the token may not act on the organization or run named; such a request must not succeed. */
  authorized?: boolean;
}

interface Base {
  name: string;
  /** The event header's value (GitHub X-GitHub-Event, Bitbucket X-Event-Key); the others carry it in the body. */
  event?: string;
  payload: Payload;
}

const require = createRequire(import.meta.url);
const GITHUB_EVENTS = ['push', 'pull_request', 'installation', 'installation_repositories', 'ping', 'create', 'delete', 'issues'];

/** Real payloads: the recorded fixtures, and for GitHub the examples of @octokit/webhooks-examples. */
function loadBases(): Record<Provider, Base[]> {
  const examples = JSON.parse(readFileSync(require.resolve('@octokit/webhooks-examples/api.github.com/index.json'), 'utf8')) as { name: string; examples: Payload[] }[];
  const github: Base[] = [
    { name: 'push-branch-updated', event: 'push', payload: fixture('github/push-branch-updated.json') },
    { name: 'push-tag-moved', event: 'push', payload: fixture('github/push-tag-moved.json') },
    { name: 'pull-request-closed-merged', event: 'pull_request', payload: fixture('github/pull-request-closed-merged.json') },
    ...examples
      .filter((e) => GITHUB_EVENTS.includes(e.name))
      .flatMap((e) => e.examples.slice(0, 6).map((payload, i) => ({ name: `${e.name}-example-${i}`, event: e.name, payload }))),
  ];
  const files = (dir: string, names: string[]) => names.map((name) => ({ name, payload: fixture(`${dir}/${name}.json`) }));
  return {
    github,
    gitlab: files('gitlab', ['push', 'tag-push', 'merge-request']),
    bitbucket: files('bitbucket', ['repo-refs-changed', 'repo-refs-changed-three-refs', 'pr-opened', 'pr-merged', 'pr-from-ref-updated', 'pr-declined', 'pr-modified', 'diagnostics-ping']).map(
      (b) => ({ ...b, event: (b.payload.eventKey as string | undefined) ?? 'diagnostics:ping' }),
    ),
    'azure-devops': files('azure-devops', ['git-push', 'git-pullrequest-created', 'git-pullrequest-updated', 'git-pullrequest-merged']),
  };
}

let bases: Record<Provider, Base[]> | undefined;

/** Header values may not hold controls or characters past Latin-1. */
const printable = (value: string) => value.replace(/[^\x20-\x7e]/g, '');
const hmac = (secret: string, body: Buffer) => `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

const CREDENTIAL_HEADER: Record<Provider, string> = {
  github: 'x-hub-signature-256',
  gitlab: 'x-gitlab-token',
  bitbucket: 'x-hub-signature',
  'azure-devops': 'authorization',
};

/** The credential header a provider sends with `hook` over `body`. */
function credentialValue(provider: Provider, hook: Hook, body: Buffer): string {
  switch (provider) {
    case 'github':
    case 'bitbucket':
      return hmac(hook.secret, body);
    case 'gitlab':
      return hook.secret;
    case 'azure-devops':
      return basic(hook.basicAuthUser ?? '', hook.secret);
  }
}

/**
 * The organizations whose hook credential the request carries, or undefined when it carries none.
 * Which connection the URL names does not matter: a receiver may find the connection from the
 * credential alone. GitHub's credential is the App's: the delivery may reach the organization bound
 * to the installation its body names. Decided from the request as built, so a forgery that happens
 * to be valid (hooks sharing a secret) counts as valid.
 */
function credentialOf(world: World, provider: Provider, headers: Record<string, string>, body: Buffer): string[] | undefined {
  const given = headers[CREDENTIAL_HEADER[provider]]?.trim();
  if (given === undefined) return undefined;
  // Hex digits of a signature may come in either case.
  const same = (expected: string) => (provider === 'github' || provider === 'bitbucket' ? given.toLowerCase() === expected : given === expected);
  const orgs = world.tenants.filter((org) => same(credentialValue(provider, org.hooks[provider]!, body)));
  if (orgs.length === 0) return undefined;
  if (provider !== 'github') return orgs.map((o) => o.id);
  const installation = installationOf(body);
  return world.tenants.filter((org) => installation !== undefined && String(org.installationId) === installation).map((o) => o.id);
}

/** The installation id a GitHub body names, read as the receiver reads it: bytes that are not UTF-8 read as U+FFFD (9dd6c1b), not refused. */
function installationOf(body: Buffer): string | undefined {
  try {
    const id = (JSON.parse(new TextDecoder('utf-8').decode(body)) as { installation?: { id?: unknown } } | null)?.installation?.id;
    return typeof id === 'number' || typeof id === 'string' ? String(id) : undefined;
  } catch {
    return undefined;
  }
}

const DELIVERY_ID_HEADERS: Record<Provider, string[]> = {
  github: ['x-github-delivery'],
  gitlab: ['idempotency-key', 'x-gitlab-event-uuid'],
  bitbucket: ['x-request-id'],
  'azure-devops': [],
};
const EVENT_HEADERS: Record<Provider, string | undefined> = { github: 'x-github-event', gitlab: 'x-gitlab-event', bitbucket: 'x-event-key', 'azure-devops': undefined };
const CONTENT_TYPES = [
  'text/plain', '', 'application/json; charset=utf-16', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
  'application/jsonx', 'APPLICATION/JSON', 'application/json;;;', 'application/json, text/html', 'application/vnd.github+json', '*/*',
];

/** Ways to send a credential that is not the hook's. */
function forge(rng: Random, provider: Provider, hook: Hook, other: Hook, headers: Record<string, string>, body: Buffer, url: string): { url: string; how: string } {
  const name = CREDENTIAL_HEADER[provider];
  const how = rng.pick(['unsigned', 'wrongSecret', 'otherBody', 'tampered', 'otherProviderHeader', 'otherConnectionUrl', 'unknownConnectionUrl', 'otherScheme']);
  const real = credentialValue(provider, hook, body);
  switch (how) {
    case 'unsigned':
      delete headers[name];
      break;
    case 'wrongSecret':
      headers[name] = credentialValue(provider, { ...hook, secret: rng.hex(hook.secret.length || 32) }, body);
      break;
    case 'otherBody':
      headers[name] = credentialValue(provider, provider === 'gitlab' || provider === 'azure-devops' ? { ...hook, secret: `${hook.secret}x` } : hook, Buffer.concat([body, Buffer.from(' ')]));
      break;
    case 'tampered': {
      // Each change makes the value another credential (hex case, blanks around it or base64 past its padding would not).
      if (provider === 'azure-devops') {
        const [user, secret] = [hook.basicAuthUser ?? '', hook.secret];
        headers[name] = rng.pick([basic(`${user}x`, secret), basic(user, `${secret}x`), basic(user, secret.slice(0, -1)), basic(secret, user), basic(`${user}:${secret}`, ''), `Bearer ${real.slice(6)}`]);
        break;
      }
      const at = rng.int(provider === 'gitlab' ? 0 : 8, Math.max(real.length - 1, 0));
      const tampered = [
        () => real.slice(0, at) + (real[at] === 'a' ? 'b' : 'a') + real.slice(at + 1),
        () => real.slice(0, rng.int(0, real.length - 1)),
        () => `${real}0`,
        () => `${real}, ${real}`,
        () => real.replace('sha256=', 'sha1='),
        () => `${real}\u00e9`,
      ];
      headers[name] = rng.pick(tampered)();
      break;
    }
    case 'otherProviderHeader':
      delete headers[name];
      headers[CREDENTIAL_HEADER[rng.pick(PROVIDERS.filter((p) => p !== provider))]] = hook.secret;
      break;
    case 'otherConnectionUrl':
      // This hook's credential sent to the other organization's hook URL.
      headers[name] = real;
      return { url: other.url, how };
    case 'unknownConnectionUrl': {
      headers[name] = real;
      const forged = new URL(url);
      const connection = [...forged.searchParams.keys()][0];
      if (connection) forged.searchParams.set(connection, rng.pick(['', '00000000-0000-0000-0000-000000000000', rng.nasty(), 'x'.repeat(500)]));
      else forged.search = `?c=${rng.hex(8)}`;
      return { url: forged.toString(), how };
    }
    case 'otherScheme':
      headers[name] = rng.pick([`Bearer ${hook.secret}`, `Basic ${printable(rng.nasty())}`, 'Basic', `Digest ${hook.secret}`, 'sha256=', printable(rng.nasty(30))]);
      break;
  }
  return { url, how };
}

/** Random header changes: content type, event name, delivery id, extra headers; at most a few. */
function mutateHeaders(rng: Random, provider: Provider, headers: Record<string, string>, index: number): string[] {
  const done: string[] = [];
  for (let n = rng.int(1, 3); n > 0; n--) {
    const what = rng.pick(['contentType', 'noContentType', 'event', 'deliveryId', 'extra', 'hugeHeader']);
    done.push(what);
    switch (what) {
      case 'contentType':
        headers['content-type'] = rng.chance(0.7) ? rng.pick(CONTENT_TYPES) : printable(rng.nasty(20));
        break;
      case 'noContentType':
        delete headers['content-type'];
        break;
      case 'event': {
        const header = EVENT_HEADERS[provider] ?? 'x-event-key';
        headers[header] = rng.pick(['', 'push', 'Push Hook', 'pull_request', 'installation', 'ping', 'diagnostics:ping', 'repo:refs_changed', 'pr:opened', 'System Hook', 'git.push', 'x'.repeat(rng.int(100, 4000)), printable(rng.nasty())]);
        break;
      }
      case 'deliveryId':
        for (const header of DELIVERY_ID_HEADERS[provider]) {
          if (rng.chance(0.3)) delete headers[header];
          else headers[header] = rng.pick(['', 'fuzz-collide', 'x'.repeat(rng.int(150, 250)), `../${index}`, `${index}\u00e9`, 'a b c', `${'9'.repeat(40)}`, `%00-${index}`]);
        }
        break;
      case 'extra':
        headers[rng.pick(['x-forwarded-for', 'x-real-ip', 'forwarded', 'x-http-method-override', 'expect', 'accept-encoding', 'content-encoding', 'x-fuzz'])] = rng.pick([
          '127.0.0.1', 'DELETE', 'gzip', 'deflate, br', printable(rng.nasty()) || 'x', '100-continue-not',
        ]);
        break;
      case 'hugeHeader':
        headers[`x-fuzz-${rng.hex(4)}`] = 'h'.repeat(rng.int(1_000, 12_000));
        break;
    }
  }
  return done;
}

function receiverRequest(rng: Random, world: World, index: number, seed: number): FuzzRequest {
  bases ??= loadBases();
  const provider = rng.pick(PROVIDERS);
  const base = rng.pick(bases[provider]);
  const [owner, other] = rng.chance(0.5) ? world.tenants : ([world.tenants[1], world.tenants[0]] as const);
  const target = rng.weighted({ attached: 6, loose: 2, asRecorded: 2 });
  const repository = target === 'attached' ? owner.attached[provider] : target === 'loose' ? owner.loose[provider] : undefined;
  let payload = base.payload;
  if (repository) {
    try {
      payload = inOrganization(rng.chance(0.85) ? owner : other, provider, withRepository(provider, payload, repository));
    } catch {
      // A payload without the repository's place (a ping, an installation event) stays as recorded.
    }
  }
  const built = delivery(provider, payload, { deliveryId: `fuzz-${seed}-${index}`, githubEvent: base.event });
  const headers = { ...built.headers };
  if (provider === 'bitbucket') headers['x-event-key'] = base.event!;
  const mutated = rng.chance(0.8) ? mutateBody(rng, JSON.parse(built.body) as Json, provider, rng.int(1, 3)) : { bytes: Buffer.from(built.body), applied: [] };
  const body = mutated.bytes;

  const mode = rng.weighted({ valid: 50, otherTenant: 10, forged: 40 });
  const hook = (mode === 'otherTenant' ? other : owner).hooks[provider]!;
  let url = hook.url;
  let how: string = mode;
  headers[CREDENTIAL_HEADER[provider]] = credentialValue(provider, hook, body);
  if (mode === 'forged') ({ url, how } = forge(rng, provider, hook, other.hooks[provider]!, headers, body, url));
  const headerChanges = rng.chance(0.35) ? mutateHeaders(rng, provider, headers, index) : [];
  const oversize = rng.chance(0.003);
  if (oversize) headers['content-length'] = String(26 * 1024 * 1024);
  return {
    index,
    target: 'receiver',
    label: `${provider} ${base.name} → ${target}; credential ${how}; body [${mutated.applied.join(', ')}]; headers [${headerChanges.join(', ')}]${oversize ? '; declared 26 MiB' : ''}`,
    method: 'POST',
    url,
    headers,
    body,
    chunked: !oversize && rng.chance(0.1),
    credentialOf: credentialOf(world, provider, headers, body),
  };
}

/* ---------- API ---------- */

type Slot = 'connection' | 'repository' | 'event' | 'subscriber' | 'token';

interface Route {
  method: string;
  path: string;
  /** Query parameters worth garbling. */
  query?: string[];
  body?: (world: World, rng: Random) => Json;
  /** Admin only: an organization token must not succeed. */
  admin?: boolean;
  public?: boolean;
}

const ROUTES: Route[] = [
  { method: 'GET', path: '/api/v1/orgs/{org}/connections' },
  { method: 'GET', path: '/api/v1/orgs/{org}/connections/{connection}' },
  { method: 'POST', path: '/api/v1/orgs/{org}/connections', body: (_w, rng) => rng.pick<Json>([
    { provider: 'gitlab', baseUrl: 'https://gitlab.example.com', token: 'glpat-fuzz' },
    { provider: 'bitbucket', baseUrl: 'http://127.0.0.1:1', token: 'x' },
    { provider: 'azure-devops', organizationUrl: 'https://dev.azure.com/fuzz', token: 'x' },
    { provider: 'github', installationId: 1 },
  ]) },
  { method: 'PUT', path: '/api/v1/orgs/{org}/connections/{connection}/credential', body: () => ({ token: 'rotated-fuzz-token' }) },
  { method: 'DELETE', path: '/api/v1/orgs/{org}/connections/{connection}' },
  { method: 'POST', path: '/api/v1/orgs/{org}/connections/{connection}/webhook-credential/rotate' },
  { method: 'GET', path: '/api/v1/orgs/{org}/connections/github/install' },
  { method: 'GET', path: '/api/github/setup', query: ['installation_id', 'setup_action', 'state', 'code'], public: true },
  { method: 'POST', path: '/api/v1/orgs', body: (_w, rng) => ({ slug: `fz-${rng.hex(8)}`, name: 'Fuzz' }), admin: true },
  { method: 'POST', path: '/api/v1/orgs/{org}/tokens', body: () => ({ name: 'fuzz', expiresInDays: 30 }), admin: true },
  { method: 'GET', path: '/api/v1/orgs/{org}/tokens' },
  { method: 'DELETE', path: '/api/v1/orgs/{org}/tokens/{token}' },
  { method: 'GET', path: '/api/v1/orgs/{org}/repositories', query: ['connection', 'q', 'cursor', 'limit'] },
  { method: 'POST', path: '/api/v1/orgs/{org}/repositories/refresh' },
  { method: 'PUT', path: '/api/v1/orgs/{org}/repositories/{repository}/attachment' },
  { method: 'GET', path: '/api/v1/orgs/{org}/repositories/{repository}/attachment' },
  { method: 'DELETE', path: '/api/v1/orgs/{org}/repositories/{repository}/attachment' },
  { method: 'GET', path: '/api/v1/orgs/{org}/events', query: ['repository', 'kind', 'cursor', 'limit'] },
  { method: 'GET', path: '/api/v1/orgs/{org}/events/{event}' },
  { method: 'GET', path: '/api/v1/orgs/{org}/events/{event}/deliveries' },
  { method: 'POST', path: '/api/v1/orgs/{org}/subscribers', body: (w) => ({ url: w.subscriberUrl, kinds: ['push', 'tag.created'], refGlobs: ['main', 'release/**', 'v*'] }) },
  { method: 'GET', path: '/api/v1/orgs/{org}/subscribers' },
  { method: 'GET', path: '/api/v1/orgs/{org}/subscribers/{subscriber}' },
  { method: 'DELETE', path: '/api/v1/orgs/{org}/subscribers/{subscriber}' },
  { method: 'GET', path: '/api/v1/workflows/{workflow}' },
  { method: 'GET', path: '/healthz', public: true },
  { method: 'GET', path: '/readyz', public: true },
  { method: 'GET', path: '/openapi.json', public: true },
];

const BAD_IDS = [
  '0', '-1', 'null', 'undefined', '%00', '..', '%2e%2e', '%2F', '%ZZ', 'a'.repeat(300), '00000000-0000-0000-0000-000000000000',
  'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', '00000000-0000-0000-0000-0000000000000', '%F0%9F%92%A5', '%20', "1'%20or%20'1'='1", '%E0%A4%A', '1e309',
];
const BAD_LIMITS = ['', '0', '-1', '201', '1e3', 'abc', '1.5', '50', '2', '9'.repeat(30), '0x10', 'NaN', '%00'];

function ids(org: WorldOrganization, slot: Slot): string[] {
  switch (slot) {
    case 'connection':
      return Object.values(org.connections);
    case 'repository':
      return org.repositoryIds;
    case 'event':
      return org.eventIds;
    case 'subscriber':
      return org.subscriberIds;
    case 'token':
      return org.tokenIds;
  }
}

/** A cursor the API handed out, garbled; or one it never could have. */
const CURSOR_ID = '00000000-0000-4000-8000-000000000000';

function badCursor(rng: Random, world: World): string {
  const real = world.tenants[0].eventsCursor ?? 'eyJ9';
  const at = rng.int(0, Math.max(real.length - 1, 0));
  return encodeURIComponent(
    rng.pick([
      () => real,
      () => real.slice(0, at),
      () => real.slice(0, at) + (real[at] === 'A' ? 'B' : 'A') + real.slice(at + 1),
      () => `${real}${real}`,
      () => Buffer.from(JSON.stringify(rng.pick<Json>([{}, [], null, { t: 'x', id: 1 }, { receivedAt: 'never', id: rng.nasty() }, 'x'.repeat(1000)]))).toString('base64url'),
      // Well-formed keys PostgreSQL cannot take: a year out of its range, a NUL, a lone surrogate.
      () => Buffer.from(JSON.stringify(rng.pick<Json>([['-010000-01-01T00:00:00.000Z', CURSOR_ID], ['+275760-09-13T00:00:00.000Z', CURSOR_ID], ['\u0000', 'x', CURSOR_ID], ['x\ud800', 'y', CURSOR_ID]]))).toString('base64url'),
      () => rng.bytes(rng.int(0, 64)).toString('base64'),
      () => rng.nasty(),
    ])(),
  );
}

function apiRequest(rng: Random, world: World, index: number): FuzzRequest {
  const route = rng.pick(ROUTES);
  const tenants = world.tenants;
  const everyone = [...tenants, world.sandbox];
  // Writes with a valid token only ever reach the sandbox, so the tenants keep their hooks and tokens.
  const writes = route.method !== 'GET';
  const org = writes ? world.sandbox : rng.pick(everyone);
  const tokenKind = rng.weighted({ own: 40, admin: 15, otherOrg: 15, none: 10, garbage: 20 });
  const other = rng.pick(everyone.filter((o) => o !== org));
  const tokenOrg = tokenKind === 'own' ? org : tokenKind === 'otherOrg' ? other : undefined;
  const token = tokenKind === 'admin' ? world.adminToken : tokenOrg?.token;
  let authorized = route.public || tokenKind === 'admin' || (tokenKind === 'own' && !route.admin);

  const orgSlot = rng.weighted({ slug: 6, id: 2, bad: 2 });
  if (orgSlot === 'bad' && route.path.includes('{org}')) authorized = false;
  let path = route.path.replace('{org}', orgSlot === 'slug' ? org.slug : orgSlot === 'id' ? org.id : rng.pick(BAD_IDS));
  path = path.replace(/\{(connection|repository|event|subscriber|token)\}/, (_m, slot: Slot) => {
    const which = rng.weighted({ own: 5, otherOrg: 2, bad: 3 });
    const pool = ids(which === 'otherOrg' ? other : org, slot);
    if (which !== 'own' || pool.length === 0) authorized = false;
    return which === 'bad' || pool.length === 0 ? rng.pick(BAD_IDS) : encodeURIComponent(rng.pick(pool));
  });
  path = path.replace('{workflow}', () => {
    const runs = [...world.setupRuns.entries()];
    const [workflowId, owner] = rng.pick(runs);
    if (rng.chance(0.5)) {
      // Only the admin and the organization the run concerns may see it, whatever organization was drawn.
      authorized = tokenKind === 'admin' || tokenOrg?.id === owner;
      return encodeURIComponent(workflowId);
    }
    authorized = false;
    return rng.pick([...BAD_IDS, encodeURIComponent(`event:gitlab:${rng.nasty()}`), 'refresh:x:now', encodeURIComponent('connect:' + org.id + ':x')]);
  });

  const query = (route.query ?? []).filter(() => rng.chance(0.6)).map((name) => {
    const value =
      name === 'cursor' ? badCursor(rng, world)
      : name === 'limit' ? rng.pick(BAD_LIMITS)
      : rng.chance(0.3) ? encodeURIComponent(rng.pick(org.repositoryIds.length > 0 ? org.repositoryIds : ['x']))
      : encodeURIComponent(rng.pick([rng.nasty(), '%', '_', '\\', 'a'.repeat(rng.int(100, 5000)), 'push', 'created', 'install']));
    return `${name}=${value}`;
  });
  if (query.length > 0 && rng.chance(0.1)) query.push(query[0]!);

  const headers: Record<string, string> = {};
  if (token !== undefined) headers.authorization = rng.chance(0.9) ? `Bearer ${token}` : rng.pick([`bearer ${token}`, `Bearer  ${token}`, token, `Basic ${token}`]);
  else if (tokenKind === 'garbage') {
    headers.authorization = rng.pick([
      'Bearer', 'Bearer ', `Bearer ${rng.hex(48)}`, `Bearer ${world.adminToken.slice(0, -1)}x`, `Bearer ${org.token}${org.token}`, `Bearer ${'x'.repeat(8000)}`,
      `Basic ${Buffer.from('admin:admin').toString('base64')}`, `Bearer ${printable(rng.nasty())}`,
    ]);
  }
  const method = rng.chance(0.03) ? rng.pick(['PATCH', 'OPTIONS', 'HEAD', 'PROPFIND']) : route.method;
  let body: Buffer | undefined;
  let label = '';
  if (route.body && method !== 'HEAD' && rng.chance(0.95)) {
    const template = route.body(world, rng);
    const mutated = rng.chance(0.75) ? mutateBody(rng, template, undefined, rng.int(1, 2)) : { bytes: Buffer.from(JSON.stringify(template)), applied: [] };
    body = mutated.bytes;
    label = ` body [${mutated.applied.join(', ')}]`;
    headers['content-type'] = rng.chance(0.85) ? 'application/json' : rng.pick(CONTENT_TYPES);
  }
  return {
    index,
    target: 'api',
    label: `${method} ${route.path} token ${tokenKind} org ${orgSlot}${label}`,
    method,
    url: `${world.apiUrl}${path}${query.length > 0 ? `?${query.join('&')}` : ''}`,
    headers,
    body,
    authorized,
  };
}

/** Request `index` of the run seeded `seed`: about two in three go to the receivers, the rest to the API. */
export function fuzzRequest(rng: Random, world: World, index: number, seed: number): FuzzRequest {
  return rng.chance(0.68) ? receiverRequest(rng, world, index, seed) : apiRequest(rng, world, index);
}
