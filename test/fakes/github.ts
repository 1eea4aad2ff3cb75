import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, verify, type KeyObject } from 'node:crypto';
import { FakeHttpServer, linkHeader, type FakeRequest, type FakeResponse } from './base.ts';

/**
 * A GitHub App's view of the REST API (provider-contracts.md §1, fidelity checklist §5): App JWT on
 * /app endpoints, installation tokens everywhere else, page-number listing with Link headers,
 * ETag/304, rate-limit headers and both kinds of rate limiting. Driven by Octokit + auth-app.
 * It also plays github.com's OAuth side (§1.7): the App's web flow code exchange at
 * /login/oauth/access_token and what a user token sees: the App's installations the user reaches
 * (/user/installations), the user (/user) and the user's membership of an organization
 * (/user/memberships/orgs/{org}, which a GitHub App's user token reads only when the App has the
 * organization permission Members: read), so one URL serves as both the web URL and the REST base URL.
 */

const DOCS = 'https://docs.github.com/rest';
const JWT_UNDECODABLE = 'A JSON web token could not be decoded';
/** The exact texts @octokit/auth-app recognises as clock skew (it then retries using our Date header). */
const JWT_EXPIRED = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
const JWT_TOO_LONG = "'Expiration time' claim ('exp') is too far in the future";
const JWT_BAD_IAT = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
const SUSPENDED = 'This installation has been suspended';
const JWT_MAX_LIFETIME_SECONDS = 600;
const TOKEN_LIFETIME_MS = 60 * 60 * 1000;
/** GitHub's web flow codes are single-use and live 10 minutes. */
const OAUTH_CODE_LIFETIME_MS = 10 * 60 * 1000;
const OAUTH_DOCS = 'https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors';

export interface FakeGithubOptions {
  appId?: string;
  /** Also accepted as the JWT issuer, as GitHub does. */
  clientId?: string;
  /** The App's private key (PEM); generated when absent. */
  privateKeyPem?: string;
  /** The App's OAuth client secret; generated when absent. */
  clientSecret?: string;
  /** The fake's clock in epoch ms: JWT checks, token expiry, rate-limit resets and the Date header. */
  now?: () => number;
}

/** GitHub's organization roles as the membership endpoints name them: an owner is `admin`. */
export type FakeOrgRole = 'admin' | 'member' | 'billing_manager';

export interface FakeInstallation {
  id: number;
  account: { login: string; id: number; type: 'User' | 'Organization' };
  suspendedAt: string | null;
  repositorySelection: 'all' | 'selected';
  repositoryIds: number[];
}

export interface FakeRepository {
  id: number;
  fullName: string;
  defaultBranch: string;
  private: boolean;
}

export interface FakeGithub {
  /** REST base URL, the equivalent of https://api.github.com. */
  url: string;
  server: FakeHttpServer;
  appId: string;
  privateKeyPem: string;
  /** The App's OAuth client credentials, for the code exchange. */
  clientId: string;
  clientSecret: string;
  addInstallation(spec: {
    id?: number;
    account: { login: string; type?: 'User' | 'Organization' };
    suspended?: boolean;
    repositorySelection?: 'all' | 'selected';
  }): FakeInstallation;
  suspendInstallation(id: number): void;
  /**
   * The GitHub user `login` can reach the installation: it is on their /user/installations (GitHub
   * lists it to anyone with explicit read on one of its repositories, an outside collaborator too).
   */
  grantInstallation(login: string, installationId: number): void;
  /** `login`'s membership of the organization `org` (/user/memberships/orgs/{org}); null: none. */
  setOrgMembership(org: string, login: string, membership: { role: FakeOrgRole; state?: 'active' | 'pending' } | null): void;
  /** The user or organization account `login` (made on first use): its id, as /user and installations report it. */
  account(login: string, type?: 'User' | 'Organization'): { login: string; id: number; type: 'User' | 'Organization' };
  /** Whether the App has the organization permission Members: read (default true); without it a user token gets 403 on /user/memberships/orgs/{org}. */
  setMembersPermission(granted: boolean): void;
  /**
   * Whether the organization `org` enforces SAML single sign-on that the user tokens here have no
   * session for: /user/memberships/orgs/{org} then answers 403 with an `X-GitHub-SSO` header naming
   * where to sign in, as GitHub does for a token not authorized for such an organization.
   */
  setSamlEnforcement(org: string, enforced: boolean): void;
  /** A web flow code, as GitHub hands the App's callback after `login` authorized the App. */
  issueOAuthCode(login: string): string;
  addRepository(installationId: number, spec: { id?: number; fullName: string; defaultBranch?: string; private?: boolean }): FakeRepository;
  removeRepository(installationId: number, repoId: number): void;
  /** The old name answers 301 to /repositories/{id}, as GitHub does for renamed repositories. */
  renameRepository(repoId: number, newFullName: string): void;
  /** The installation-token budget; at `remaining: 0` requests fail with `status` until `reset` (epoch s). */
  setRateLimit(limit: { remaining: number; reset: number; limit?: number; status?: 403 | 429 }): void;
  /** While set, every authenticated request hits the secondary rate limit. */
  setSecondaryRateLimit(limit: { status?: 403 | 429; retryAfterSeconds?: number } | null): void;
  /**
   * Fault mode: /installation/repositories never ends. Every page is full (the installation's
   * repositories, then made-up ones with ids from 1,000,000) and links to the next page; the Link
   * header's `last` names `lastPage` when given (a server may name any). null turns it off.
   */
  listEndlessly(mode: { lastPage?: number } | null): void;
  close(): Promise<void>;
}

interface RateBucket {
  limit: number;
  remaining: number;
  reset: number;
  used: number;
  exhaustedStatus: 403 | 429;
  /** What GitHub names in the exhaustion message. */
  subject: string;
}

type Caller = { kind: 'app' } | { kind: 'installation'; installation: FakeInstallation } | { kind: 'user'; login: string };

/** GitHub's basic-error body (provider-contracts.md §1.5), for `server.failNext(operation, n, githubError(…))` too. */
export function githubError(status: number, message: string, extra: Record<string, unknown> = {}): FakeResponse {
  return { status, body: { message, documentation_url: DOCS, status: String(status), ...extra } };
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export async function startFakeGithub(options: FakeGithubOptions = {}): Promise<FakeGithub> {
  const now = options.now ?? Date.now;
  const appId = options.appId ?? '424242';
  const clientId = options.clientId ?? `Iv1.${randomBytes(8).toString('hex')}`;
  const clientSecret = options.clientSecret ?? randomBytes(20).toString('hex');
  const privateKeyPem =
    options.privateKeyPem ??
    generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const publicKey: KeyObject = createPublicKey(createPrivateKey(privateKeyPem));

  const installations = new Map<number, FakeInstallation>();
  const repositories = new Map<number, FakeRepository>();
  let endless: { lastPage?: number } | null = null;
  /** Lower-cased former full name → repository id, for the 301 on renamed repositories. */
  const formerNames = new Map<string, number>();
  const tokens = new Map<string, { installationId: number; expiresAt: number }>();
  /** User login → installations that user can reach. */
  const userInstallations = new Map<string, Set<number>>();
  const oauthCodes = new Map<string, { login: string; expiresAt: number }>();
  /** Lower-cased login → the user or organization account (logins are case-insensitive on GitHub). */
  const accounts = new Map<string, { login: string; id: number; type: 'User' | 'Organization' }>();
  /** Lower-cased organization login → lower-cased user login → that user's membership. */
  const memberships = new Map<string, Map<string, { role: FakeOrgRole; state: 'active' | 'pending' }>>();
  let membersPermission = true;
  /** Lower-cased logins of organizations enforcing SAML single sign-on. */
  const samlEnforced = new Set<string>();
  const userTokens = new Map<string, { login: string; expiresAt: number }>();
  let nextId = 1000;

  function accountOf(login: string, type: 'User' | 'Organization' = 'User') {
    const existing = accounts.get(login.toLowerCase());
    if (existing) {
      if (existing.type !== type) throw new Error(`fake GitHub account ${login} is a ${existing.type}, not a ${type}`);
      return existing;
    }
    const account = { login, id: ++nextId, type };
    accounts.set(login.toLowerCase(), account);
    return account;
  }
  let secondaryLimit: { status: 403 | 429; retryAfterSeconds?: number } | null = null;

  const nowSeconds = () => Math.floor(now() / 1000);
  const bucket = (limit: number, subject: string): RateBucket => ({
    limit,
    remaining: limit,
    reset: nowSeconds() + 3600,
    used: 0,
    exhaustedStatus: 403,
    subject,
  });
  const buckets = { app: bucket(5000, 'the app'), installation: bucket(5000, 'the installation'), user: bucket(5000, 'the user'), anonymous: bucket(60, 'your IP') };

  function rateHeaders(b: RateBucket): Record<string, string> {
    return {
      'x-ratelimit-limit': String(b.limit),
      'x-ratelimit-remaining': String(b.remaining),
      'x-ratelimit-used': String(b.used),
      'x-ratelimit-reset': String(b.reset),
      'x-ratelimit-resource': 'core',
      date: new Date(now()).toUTCString(),
    };
  }

  function finish(b: RateBucket, response: FakeResponse, counted: boolean): FakeResponse {
    if (counted && b.remaining > 0) {
      b.remaining--;
      b.used++;
    }
    return { ...response, headers: { ...rateHeaders(b), ...response.headers } };
  }

  /** Checks an App JWT; returns GitHub's 401 message, or undefined when the JWT is good. */
  function jwtProblem(token: string): string | undefined {
    const parts = token.split('.');
    if (parts.length !== 3) return JWT_UNDECODABLE;
    const [head, payload, signature] = parts as [string, string, string];
    let header: { alg?: unknown };
    let claims: { iat?: unknown; exp?: unknown; iss?: unknown };
    try {
      header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      return JWT_UNDECODABLE;
    }
    if (header.alg !== 'RS256') return JWT_UNDECODABLE;
    if (!verify('RSA-SHA256', Buffer.from(`${head}.${payload}`), publicKey, Buffer.from(signature, 'base64url'))) return JWT_UNDECODABLE;
    // GitHub reports an issuer that is not this App (a key/App ID mix-up) as undecodable too.
    if (String(claims.iss) !== appId && claims.iss !== clientId) return JWT_UNDECODABLE;
    const current = nowSeconds();
    if (typeof claims.exp !== 'number' || claims.exp <= current) return JWT_EXPIRED;
    if (typeof claims.iat !== 'number' || !Number.isInteger(claims.iat) || claims.iat > current + 60) return JWT_BAD_IAT;
    if (claims.exp - claims.iat > JWT_MAX_LIFETIME_SECONDS || claims.exp - current > JWT_MAX_LIFETIME_SECONDS) return JWT_TOO_LONG;
    return undefined;
  }

  function authenticate(req: FakeRequest, expected: Caller['kind']): Caller | FakeResponse {
    const header = req.headers.authorization;
    if (!header) return githubError(401, 'Requires authentication');
    const match = /^(bearer|token)\s+(\S+)$/i.exec(header);
    if (expected === 'app') {
      if (!match || match[1]!.toLowerCase() !== 'bearer') return githubError(401, JWT_UNDECODABLE);
      const problem = jwtProblem(match[2]!);
      return problem ? githubError(401, problem) : { kind: 'app' };
    }
    if (expected === 'user') {
      const user = match ? userTokens.get(match[2]!) : undefined;
      return user && user.expiresAt > now() ? { kind: 'user', login: user.login } : githubError(401, 'Bad credentials');
    }
    const token = match ? tokens.get(match[2]!) : undefined;
    if (!token || token.expiresAt <= now()) return githubError(401, 'Bad credentials');
    const installation = installations.get(token.installationId);
    if (!installation) return githubError(401, 'Bad credentials');
    if (installation.suspendedAt) return githubError(403, SUSPENDED);
    return { kind: 'installation', installation };
  }

  function etagOf(body: unknown): string {
    return `W/"${createHash('sha256').update(JSON.stringify(body)).digest('hex').slice(0, 40)}"`;
  }

  /** Auth, rate limits, ETag/304 and headers around every route, in the order GitHub applies them. */
  function serve<K extends Caller['kind']>(
    expected: K,
    handler: (req: FakeRequest, caller: Extract<Caller, { kind: K }>) => FakeResponse,
  ): (req: FakeRequest) => FakeResponse {
    return (req) => {
      const caller = authenticate(req, expected);
      if (!('kind' in caller)) return finish(buckets.anonymous, caller, true);
      const b = buckets[caller.kind];
      if (b.reset <= nowSeconds()) Object.assign(b, { remaining: b.limit, used: 0, reset: nowSeconds() + 3600 });
      if (secondaryLimit) {
        const { status, retryAfterSeconds } = secondaryLimit;
        const response = githubError(
          status,
          'You have exceeded a secondary rate limit. Please wait a few minutes before you try again.',
        );
        if (retryAfterSeconds !== undefined) response.headers = { 'retry-after': String(retryAfterSeconds) };
        return finish(b, response, false);
      }
      if (b.remaining === 0) {
        const subject = caller.kind === 'installation' ? `installation ID ${caller.installation.id}` : b.subject;
        return finish(b, githubError(b.exhaustedStatus, `API rate limit exceeded for ${subject}.`), false);
      }
      const response = handler(req, caller as Extract<Caller, { kind: K }>);
      if (req.method === 'GET' && response.status === 200) {
        const etag = etagOf(response.body);
        const candidates = (req.headers['if-none-match'] ?? '').split(',').map((s) => s.trim());
        if (candidates.includes(etag) || candidates.includes('*')) return finish(b, { status: 304, headers: { etag } }, false);
        response.headers = { ...response.headers, etag };
      }
      return finish(b, response, true);
    };
  }

  const server = new FakeHttpServer(() => finish(buckets.anonymous, githubError(404, 'Not Found'), true));

  /** Page-number paging as GitHub does it: `per_page` (default 30, at most 100), `page`, and a Link header of absolute URLs. */
  function paged<T>(req: FakeRequest, items: T[]): { items: T[]; headers?: Record<string, string> } {
    const requestedPerPage = Number.parseInt(req.query.get('per_page') ?? '', 10);
    const perPage = Number.isNaN(requestedPerPage) || requestedPerPage < 1 ? 30 : Math.min(requestedPerPage, 100);
    const requestedPage = Number.parseInt(req.query.get('page') ?? '', 10);
    const page = Number.isNaN(requestedPage) || requestedPage < 1 ? 1 : requestedPage;
    const lastPage = Math.max(1, Math.ceil(items.length / perPage));
    const pageUrl = (n: number) => `${server.url}${req.path}?per_page=${perPage}&page=${n}`;
    const links: Record<string, string> = {};
    if (page > 1) Object.assign(links, { prev: pageUrl(Math.min(page - 1, lastPage)), first: pageUrl(1) });
    if (page < lastPage) Object.assign(links, { next: pageUrl(page + 1), last: pageUrl(lastPage) });
    return {
      items: items.slice((page - 1) * perPage, page * perPage),
      headers: Object.keys(links).length > 0 ? { link: linkHeader(links) } : undefined,
    };
  }

  /** The code exchange answers 200 even when it fails, with an `error` in the body (§1.7). */
  function oauthError(error: string, description: string): FakeResponse {
    return { status: 200, body: { error, error_description: description, error_uri: OAUTH_DOCS } };
  }

  function appPermissions(): Record<string, string> {
    return { metadata: 'read', contents: 'read', pull_requests: 'read', statuses: 'write', ...(membersPermission ? { members: 'read' } : {}) };
  }

  /** A simple-user (the fields GitHub always sends on a user). */
  function userJson(account: { login: string; id: number; type: string }) {
    return {
      login: account.login,
      id: account.id,
      node_id: Buffer.from(`04:User${account.id}`).toString('base64'),
      url: `${server.url}/users/${account.login}`,
      html_url: `https://github.com/${account.login}`,
      type: account.type,
      site_admin: false,
    };
  }

  function installationJson(i: FakeInstallation) {
    return {
      id: i.id,
      app_id: Number(appId),
      app_slug: 'forgelink-test',
      client_id: clientId,
      account: { login: i.account.login, id: i.account.id, type: i.account.type },
      target_type: i.account.type,
      repository_selection: i.repositorySelection,
      permissions: appPermissions(),
      events: ['push', 'pull_request', 'installation_repositories', 'repository'],
      suspended_at: i.suspendedAt,
      suspended_by: i.suspendedAt ? { login: i.account.login, type: 'User' } : null,
      access_tokens_url: `${server.url}/app/installations/${i.id}/access_tokens`,
      html_url: `https://github.com/settings/installations/${i.id}`,
      created_at: '2024-01-01T00:00:00Z',
      updated_at: '2024-01-01T00:00:00Z',
    };
  }

  function repositoryJson(r: FakeRepository) {
    const [owner, name] = r.fullName.split('/') as [string, string];
    return {
      id: r.id,
      node_id: Buffer.from(`010:Repository${r.id}`).toString('base64'),
      name,
      full_name: r.fullName,
      owner: { login: owner, type: 'Organization' },
      private: r.private,
      visibility: r.private ? 'private' : 'public',
      default_branch: r.defaultBranch,
      archived: false,
      disabled: false,
      html_url: `https://github.com/${r.fullName}`,
      clone_url: `https://github.com/${r.fullName}.git`,
      url: `${server.url}/repos/${r.fullName}`,
    };
  }

  server
    .route('GET', '/app', 'getApp', serve('app', () => ({
      status: 200,
      body: {
        id: Number(appId),
        slug: 'forgelink-test',
        client_id: clientId,
        node_id: Buffer.from(`A_${appId}`).toString('base64'),
        name: 'forgelink test',
        owner: { login: 'forgelink', type: 'Organization' },
        permissions: appPermissions(),
        events: ['push', 'pull_request'],
        installations_count: installations.size,
        html_url: 'https://github.com/apps/forgelink-test',
      },
    })))
    .route('GET', '/app/installations/:id', 'getInstallation', serve('app', (req) => {
      const installation = installations.get(Number(req.params.id));
      return installation ? { status: 200, body: installationJson(installation) } : githubError(404, 'Not Found');
    }))
    .route('POST', '/app/installations/:id/access_tokens', 'createInstallationToken', serve('app', (req) => {
      const installation = installations.get(Number(req.params.id));
      if (!installation) return githubError(404, 'Not Found');
      if (installation.suspendedAt) return githubError(403, SUSPENDED);
      // Real tokens are not fixed-length (the stateless ghs_ format rolling out is longer): vary ours.
      const token = `ghs_${randomBytes(24 + (tokens.size % 9)).toString('base64url')}`;
      const expiresAt = now() + TOKEN_LIFETIME_MS;
      tokens.set(token, { installationId: installation.id, expiresAt });
      return {
        status: 201,
        body: {
          token,
          expires_at: isoSeconds(expiresAt),
          permissions: installationJson(installation).permissions,
          repository_selection: installation.repositorySelection,
        },
      };
    }))
    .route('GET', '/installation/repositories', 'listInstallationRepos', serve('installation', (req, { installation }) => {
      const visible = installation.repositoryIds.map((id) => repositories.get(id)!);
      if (endless) {
        const perPage = Math.min(100, Number.parseInt(req.query.get('per_page') ?? '30', 10) || 30);
        const n = Math.max(1, Number.parseInt(req.query.get('page') ?? '1', 10) || 1);
        const items = Array.from({ length: perPage }, (_, i) => {
          const index = (n - 1) * perPage + i;
          return visible[index] ?? { id: 1_000_000 + index, fullName: `endless/r-${index}`, defaultBranch: 'main', private: true };
        });
        const pageUrl = (k: number) => `${server.url}${req.path}?per_page=${perPage}&page=${k}`;
        const link = linkHeader({ next: pageUrl(n + 1), ...(endless.lastPage ? { last: pageUrl(endless.lastPage) } : {}) });
        return { status: 200, headers: { link }, body: { total_count: visible.length, repository_selection: installation.repositorySelection, repositories: items.map(repositoryJson) } };
      }
      const page = paged(req, visible);
      return {
        status: 200,
        headers: page.headers,
        body: { total_count: visible.length, repository_selection: installation.repositorySelection, repositories: page.items.map(repositoryJson) },
      };
    }))
    .route('POST', '/login/oauth/access_token', 'exchangeOAuthCode', (req) => {
      // Form or JSON, as GitHub accepts both.
      const form = typeof req.body === 'object' && req.body !== null ? (req.body as Record<string, unknown>) : Object.fromEntries(new URLSearchParams(req.rawBody));
      if (form.client_id !== clientId || form.client_secret !== clientSecret) {
        return oauthError('incorrect_client_credentials', 'The client_id and/or client_secret passed are incorrect.');
      }
      const code = typeof form.code === 'string' ? oauthCodes.get(form.code) : undefined;
      if (code) oauthCodes.delete(form.code as string);
      if (!code || code.expiresAt <= now()) return oauthError('bad_verification_code', 'The code passed is incorrect or expired.');
      const token = `ghu_${randomBytes(27).toString('base64url')}`;
      userTokens.set(token, { login: code.login, expiresAt: now() + 8 * TOKEN_LIFETIME_MS });
      return { status: 200, body: { access_token: token, token_type: 'bearer', scope: '' } };
    })
    .route('GET', '/user/installations', 'listUserInstallations', serve('user', (req, { login }) => {
      const reachable = [...(userInstallations.get(login) ?? [])].sort((a, b) => a - b).map((id) => installations.get(id)!);
      const page = paged(req, reachable);
      return { status: 200, headers: page.headers, body: { total_count: reachable.length, installations: page.items.map(installationJson) } };
    }))
    .route('GET', '/user', 'getAuthenticatedUser', serve('user', (_req, { login }) => ({
      status: 200,
      body: { ...userJson(accountOf(login)), name: null, email: null, created_at: '2020-01-01T00:00:00Z', updated_at: '2024-01-01T00:00:00Z' },
    })))
    .route('GET', '/user/memberships/orgs/:org', 'getOrgMembershipForUser', serve('user', (req, { login }) => {
      // A GitHub App's user token reaches what both the user and the App may: the App needs Members: read.
      const org = accounts.get(req.params.org!.toLowerCase());
      if (org && samlEnforced.has(org.login.toLowerCase())) {
        return {
          ...githubError(403, 'Resource protected by organization SAML enforcement. You must grant your OAuth token access to this organization.'),
          headers: { 'x-github-sso': `required; url=${server.url}/orgs/${org.login}/sso?authorization_request=${randomBytes(10).toString('hex')}` },
        };
      }
      if (!membersPermission) return githubError(403, 'Resource not accessible by integration');
      const membership = org?.type === 'Organization' ? memberships.get(org.login.toLowerCase())?.get(login.toLowerCase()) : undefined;
      if (!org || !membership) return githubError(404, 'Not Found');
      return {
        status: 200,
        body: {
          url: `${server.url}/orgs/${org.login}/memberships/${login}`,
          state: membership.state,
          role: membership.role,
          direct_membership: true,
          organization_url: `${server.url}/orgs/${org.login}`,
          organization: { login: org.login, id: org.id, node_id: Buffer.from(`012:Organization${org.id}`).toString('base64'), url: `${server.url}/orgs/${org.login}`, description: null },
          user: userJson(accountOf(login)),
          permissions: { can_create_repository: membership.role === 'admin' },
        },
      };
    }))
    .route('GET', '/repos/:owner/:repo', 'getRepo', serve('installation', (req, { installation }) => {
      const fullName = `${req.params.owner}/${req.params.repo}`.toLowerCase();
      const visible = installation.repositoryIds.map((id) => repositories.get(id)!);
      const repository = visible.find((r) => r.fullName.toLowerCase() === fullName);
      if (repository) return { status: 200, body: repositoryJson(repository) };
      const movedId = formerNames.get(fullName);
      if (movedId !== undefined && installation.repositoryIds.includes(movedId)) {
        const location = `${server.url}/repositories/${movedId}`;
        return { status: 301, headers: { location }, body: { message: 'Moved Permanently', url: location, documentation_url: DOCS } };
      }
      return githubError(404, 'Not Found');
    }))
    .route('GET', '/repositories/:id', 'getRepo', serve('installation', (req, { installation }) => {
      const id = Number(req.params.id);
      const repository = installation.repositoryIds.includes(id) ? repositories.get(id) : undefined;
      return repository ? { status: 200, body: repositoryJson(repository) } : githubError(404, 'Not Found');
    }));

  await server.start();

  function installationOrThrow(id: number): FakeInstallation {
    const installation = installations.get(id);
    if (!installation) throw new Error(`fake GitHub has no installation ${id}`);
    return installation;
  }

  return {
    url: server.url,
    server,
    listEndlessly(mode) {
      endless = mode;
    },
    appId,
    privateKeyPem,
    clientId,
    clientSecret,
    addInstallation({ id, account, suspended, repositorySelection }) {
      const installation: FakeInstallation = {
        id: id ?? ++nextId,
        account: accountOf(account.login, account.type ?? 'Organization'),
        suspendedAt: suspended ? isoSeconds(now()) : null,
        repositorySelection: repositorySelection ?? 'selected',
        repositoryIds: [],
      };
      installations.set(installation.id, installation);
      return installation;
    },
    suspendInstallation(id) {
      installationOrThrow(id).suspendedAt = isoSeconds(now());
    },
    grantInstallation(login, installationId) {
      installationOrThrow(installationId);
      userInstallations.set(login, (userInstallations.get(login) ?? new Set()).add(installationId));
    },
    setOrgMembership(org, login, membership) {
      const organization = accountOf(org, 'Organization');
      const members = memberships.get(organization.login.toLowerCase()) ?? new Map();
      memberships.set(organization.login.toLowerCase(), members);
      if (membership) members.set(login.toLowerCase(), { role: membership.role, state: membership.state ?? 'active' });
      else members.delete(login.toLowerCase());
    },
    account: (login, type) => ({ ...accountOf(login, type) }),
    setMembersPermission(granted) {
      membersPermission = granted;
    },
    setSamlEnforcement(org, enforced) {
      const login = accountOf(org, 'Organization').login.toLowerCase();
      if (enforced) samlEnforced.add(login);
      else samlEnforced.delete(login);
    },
    issueOAuthCode(login) {
      const code = randomBytes(10).toString('hex');
      oauthCodes.set(code, { login, expiresAt: now() + OAUTH_CODE_LIFETIME_MS });
      return code;
    },
    addRepository(installationId, { id, fullName, defaultBranch, private: isPrivate }) {
      const installation = installationOrThrow(installationId);
      const repository: FakeRepository = { id: id ?? ++nextId, fullName, defaultBranch: defaultBranch ?? 'main', private: isPrivate ?? true };
      repositories.set(repository.id, repository);
      formerNames.delete(fullName.toLowerCase());
      if (!installation.repositoryIds.includes(repository.id)) installation.repositoryIds.push(repository.id);
      return repository;
    },
    removeRepository(installationId, repoId) {
      const installation = installationOrThrow(installationId);
      installation.repositoryIds = installation.repositoryIds.filter((id) => id !== repoId);
    },
    renameRepository(repoId, newFullName) {
      const repository = repositories.get(repoId);
      if (!repository) throw new Error(`fake GitHub has no repository ${repoId}`);
      formerNames.set(repository.fullName.toLowerCase(), repoId);
      formerNames.delete(newFullName.toLowerCase());
      repository.fullName = newFullName;
    },
    setRateLimit({ remaining, reset, limit, status }) {
      Object.assign(buckets.installation, { remaining, reset, limit: limit ?? buckets.installation.limit, exhaustedStatus: status ?? 403 });
      buckets.installation.used = buckets.installation.limit - remaining;
    },
    setSecondaryRateLimit(limit) {
      secondaryLimit = limit ? { status: limit.status ?? 403, retryAfterSeconds: limit.retryAfterSeconds } : null;
    },
    close: () => server.close(),
  };
}
