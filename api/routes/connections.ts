import { randomBytes, randomUUID } from 'node:crypto';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import { proveInstallationAccess } from '../../activities/providers/github.ts';
import { GITLAB_DEFAULT_BASE_URL } from '../../activities/providers/gitlab.ts';
import { hashApiToken, safeEqual, seal, signState, verifyState } from '../../lib/crypto.ts';
import {
  beginCredentialRotation,
  failCredentialRotation,
  findConnection,
  findLiveConnectionByExternalKey,
  insertConnection,
  isLiveKeyConflict,
  listConnections,
  liveConnectionsElsewhere,
  lockExternalKey,
  lockLiveConnectionCount,
  type PublicConnection,
} from '../../lib/db/repositories/connections.ts';
import { saveInstallState, useInstallState } from '../../lib/db/repositories/github-install-states.ts';
import { findOrganization } from '../../lib/db/repositories/organizations.ts';
import type { Organization } from '../../lib/db/schema.ts';
import { CONNECTION_STATUSES, CREDENTIAL_ROTATION_STATUSES, PROVIDERS, type Provider } from '../../lib/domain.ts';
import { normalizeProviderUrl, UnsafeUrlError } from '../../lib/url.ts';
import { webhookCredentialRotationRefusal } from '../../lib/db/repositories/webhook-credentials.ts';
import { workflowIds, type ConnectInput, type WebhookCredentialRotationInput } from '../../workflows/contract.ts';
import { runLabels } from '../../workflows/run-labels.ts';
import { requireAdmin, resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { badRequest, hostLookupUnavailableResponse, notFound, Problem, problemResponse, serviceUnavailable, TEMPORAL_RETRY_AFTER_SECONDS, unsafeUrl } from '../problem.ts';
import { startWorkflow } from '../start-workflow.ts';
import { text } from '../text.ts';

const ConnectionSchema = z
  .object({
    id: z.uuid(),
    provider: z.enum(PROVIDERS),
    baseUrl: z.string(),
    status: z.enum(CONNECTION_STATUSES),
    reason: z.string().optional(),
    account: z.string().optional(),
    installationId: z.string().optional(),
    disconnectRequestedAt: z.string().optional().openapi({ description: 'Set while a disconnect is under way: the connection takes no new attach' }),
    credentialRotation: z
      .object({ status: z.enum(CREDENTIAL_ROTATION_STATUSES), reason: z.string().optional(), requestedAt: z.string() })
      .optional()
      .openapi({ description: 'The last credential rotation (PUT …/credential): the connection keeps its old credential until one succeeds' }),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Connection');

const token = text().min(1).max(4096);
const ConnectBody = z
  .discriminatedUnion('provider', [
    z.object({
      provider: z.literal('gitlab'),
      baseUrl: text().optional().openapi({ description: 'GitLab instance URL; default https://gitlab.com' }),
      token: token.openapi({ description: 'Personal access token with api, read_user, read_repository' }),
    }),
    z.object({
      provider: z.literal('bitbucket'),
      baseUrl: text().openapi({ description: 'Bitbucket Data Center URL, e.g. https://bitbucket.example.com' }),
      token: token.openapi({ description: 'HTTP access token with PROJECT_READ and REPO_ADMIN' }),
    }),
    z.object({
      provider: z.literal('azure-devops'),
      organizationUrl: text().openapi({ description: 'https://dev.azure.com/{org}, or https://{server}/{collection}' }),
      token: token.openapi({ description: 'PAT able to read code and manage service hook subscriptions' }),
    }),
    z.object({
      provider: z.literal('github'),
      installationId: z.union([z.number().int().positive(), z.string().regex(/^[1-9][0-9]{0,18}$/)]).transform(String),
    }),
  ])
  .openapi('ConnectRequest');
type ConnectBody = z.infer<typeof ConnectBody>;

const OrgParam = z.object({ org: z.string().min(1) });
const ConnParam = OrgParam.extend({ id: z.uuid() });
const Accepted = z.object({ id: z.uuid(), status: z.literal('pending'), workflowId: z.string() });

function toApi(row: PublicConnection) {
  return {
    id: row.id,
    provider: row.provider,
    baseUrl: row.base_url,
    status: row.status,
    ...(row.reason ? { reason: row.reason } : {}),
    ...(row.account ? { account: row.account } : {}),
    ...(row.provider === 'github' && row.external_key ? { installationId: row.external_key } : {}),
    // A disconnect is under way (the status turns disconnected when it ends): no new attach.
    ...(row.disconnect_requested_at && row.status !== 'disconnected' ? { disconnectRequestedAt: row.disconnect_requested_at.toISOString() } : {}),
    ...(row.rotation_status && row.rotation_requested_at
      ? { credentialRotation: { status: row.rotation_status, ...(row.rotation_reason ? { reason: row.rotation_reason } : {}), requestedAt: row.rotation_requested_at.toISOString() } }
      : {}),
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

const errors = {
  400: problemResponse('Invalid request'),
  401: problemResponse('Missing or bad token'),
  404: problemResponse('No such organization or connection'),
};

async function checkedUrl(c: Context<AppEnv>, field: string, raw: string): Promise<string> {
  try {
    const { allowHttpHosts, allowPrivateNetworks, resolveHost } = c.var.deps;
    return await normalizeProviderUrl(raw, { allowHttpHosts, allowPrivateNetworks, resolve: resolveHost });
  } catch (error) {
    if (error instanceof UnsafeUrlError) throw unsafeUrl(c, field, error);
    throw error;
  }
}

/** Where the connection points and what it is bound to, from the request body. */
async function targetOf(c: Context<AppEnv>, body: ConnectBody): Promise<{ baseUrl: string; externalKey: string | null; secret?: string }> {
  switch (body.provider) {
    case 'gitlab':
      return { baseUrl: await checkedUrl(c, 'baseUrl', body.baseUrl ?? GITLAB_DEFAULT_BASE_URL), externalKey: null, secret: body.token };
    case 'bitbucket':
      return { baseUrl: await checkedUrl(c, 'baseUrl', body.baseUrl), externalKey: null, secret: body.token };
    case 'azure-devops': {
      const url = await checkedUrl(c, 'organizationUrl', body.organizationUrl);
      // One connection per Azure DevOps organization per forgelink organization.
      return { baseUrl: url, externalKey: url.toLowerCase(), secret: body.token };
    }
    case 'github':
      return { baseUrl: c.var.deps.githubApiUrl ?? 'https://api.github.com', externalKey: body.installationId };
  }
}

/** Lets an operator find a connection's runs in the Temporal UI by organization, provider or connection. */
const connectionRunLabels = (action: string, org: Organization, provider: Provider, connectionId: string) =>
  runLabels(action, { organization: { id: org.id, slug: org.slug }, provider, connectionId });

type ConnectionRow = NonNullable<Awaited<ReturnType<typeof findConnection>>>;

/** The organization and the connection of it the path names (404 when there is none), unless `refusal` gives a problem for it. */
async function connectionOf(c: Context<AppEnv>, params: { org: string; id: string }, refusal?: (row: ConnectionRow) => Problem | undefined) {
  const org = await resolveOrganization(c, params.org);
  const row = await findConnection(c.var.deps.db, org.id, params.id);
  if (!row) throw notFound(`connection ${params.id}`);
  const problem = refusal?.(row);
  if (problem) throw problem;
  return { org, row };
}

/** Why the connection's credential cannot be rotated now (PUT …/credential), if it cannot. */
function credentialRotationRefusal(row: ConnectionRow): Problem | undefined {
  if (row.provider === 'github') return badRequest('GitHub connections have no stored credential: installation tokens are minted per call');
  if (row.status === 'disconnected') return new Problem(409, 'Conflict', `connection ${row.id} is disconnected; create a new connection`);
  if (row.disconnect_requested_at) return new Problem(409, 'Conflict', `connection ${row.id} is being disconnected; create a new connection`);
  if (row.status === 'pending') return new Problem(409, 'Conflict', `connection ${row.id} is still being connected; wait for its outcome`);
  return undefined;
}

/** Why the connection's webhook credential cannot be rotated now, if it cannot. */
function webhookRotationRefusal(row: ConnectionRow): Problem | undefined {
  const refusal = webhookCredentialRotationRefusal(row);
  return refusal ? new Problem(409, 'Conflict', refusal) : undefined;
}

/**
 * Starts the connect run; when it cannot start, `undo` (told why) takes back what the request wrote
 * and the 503 says so (`undone`). A start Temporal did not answer in time may have begun the run
 * anyway: it finds the connection gone, or the rotation no longer validating, and changes nothing.
 */
async function startConnect(c: Context<AppEnv>, org: Organization, input: ConnectInput, provider: Provider, undo: (reason: string) => Promise<void>, undone: string) {
  const { deps } = c.var;
  const workflowId = workflowIds.connect(org.id, input.connectionId);
  let started;
  try {
    started = await startWorkflow(deps, 'connectWorkflow', {
      workflowId,
      input,
      allowRerun: true,
      labels: connectionRunLabels('connect', org, provider, input.connectionId),
    });
  } catch {
    // startWorkflow logged why.
    await undo('the workflow engine (Temporal) did not start the validation or did not answer in time');
    throw serviceUnavailable(`the workflow engine (Temporal) did not start the validation or did not answer in time; ${undone}; try again`, TEMPORAL_RETRY_AFTER_SECONDS);
  }
  if (started.alreadyStarted) {
    await undo(`a connect run (${workflowId}) was still in progress`);
    throw new Problem(409, 'Conflict', `a connect run for connection ${input.connectionId} is still in progress (${workflowId})`);
  }
  return workflowId;
}

/** 409 for a second live connection of one organization to the same installation / Azure DevOps organization. */
function alreadyConnected(provider: Provider, existing: { id: string }) {
  return new Problem(
    409,
    'Conflict',
    `connection ${existing.id} already connects this ${provider === 'github' ? 'installation' : 'organization'}; rotate its credential with PUT .../connections/${existing.id}/credential`,
    'about:blank',
    { connectionId: existing.id },
  );
}

/** The organization's live connection to the key, as a 409 to throw, if it has one. */
async function sameKeyConflict(db: Parameters<typeof findLiveConnectionByExternalKey>[0], organizationId: string, provider: Provider, externalKey: string) {
  const existing = await findLiveConnectionByExternalKey(db, organizationId, provider, externalKey);
  return existing ? alreadyConnected(provider, existing) : undefined;
}

/**
 * Inserts the connection; a same-key insert that won a race past the check
 * (connections_org_external_key_live) is the 409 the check gives, not a 500.
 */
async function insertOrConflict(c: Context<AppEnv>, write: () => Promise<void>, row: { organization_id: string; provider: Provider; external_key: string | null }) {
  try {
    await write();
  } catch (error) {
    if (!row.external_key || !isLiveKeyConflict(error)) throw error;
    const conflict = await sameKeyConflict(c.var.deps.db, row.organization_id, row.provider, row.external_key);
    throw conflict ?? new Problem(409, 'Conflict', `another request connected this ${row.provider === 'github' ? 'installation' : 'organization'} at the same moment; list the connections`);
  }
}

/**
 * The most connections (not disconnected) an organization may have. Each is listed nightly, up to
 * repositoryCache.maxRepositoriesPerConnection rows, so their number bounds what one organization
 * can make the worker list and the database hold.
 */
export const MAX_CONNECTIONS_PER_ORGANIZATION = 50;

/**
 * Creates the connection and starts its connect run: refused (409) at the organization's
 * MAX_CONNECTIONS_PER_ORGANIZATION, counted under the organization's row lock so concurrent connects
 * count one after another. `soleBinding` (the install flow): refused (409) when another organization
 * already binds the same installation. A key (installation, Azure DevOps organization) is checked,
 * against the organization's own connections and for `soleBinding` against others', and inserted
 * under one lock of the key, so concurrent binds cannot both pass.
 */
async function createConnection(c: Context<AppEnv>, org: Organization, body: ConnectBody, options: { soleBinding?: boolean } = {}) {
  const { deps } = c.var;
  if (!deps.enabledProviders.includes(body.provider)) throw badRequest(`provider ${body.provider} is not enabled in this forgelink (gitProviders config)`);
  const target = await targetOf(c, body);
  const id = randomUUID();
  const row = {
    id,
    organization_id: org.id,
    provider: body.provider,
    base_url: target.baseUrl,
    external_key: target.externalKey,
    pending_credential: target.secret ? seal(deps.keys, target.secret, id) : null,
    status: 'pending' as const,
  };
  const key = target.externalKey;
  await insertOrConflict(
    c,
    () =>
      deps.db.transaction().execute(async (trx) => {
        // The key's lock, then the organization's row: connects of one key queue on the first (no other path takes both).
        if (key) await lockExternalKey(trx, body.provider, key);
        if ((await lockLiveConnectionCount(trx, org.id)) >= MAX_CONNECTIONS_PER_ORGANIZATION) {
          throw new Problem(
            409,
            'Conflict',
            `organization ${org.slug} already has ${MAX_CONNECTIONS_PER_ORGANIZATION} connections, the most it may have; disconnect one first`,
            'about:blank',
            { limit: MAX_CONNECTIONS_PER_ORGANIZATION },
          );
        }
        if (key) {
          const conflict = await sameKeyConflict(trx, org.id, body.provider, key);
          if (conflict) throw conflict;
          const elsewhere = body.provider === 'github' ? await liveConnectionsElsewhere(trx, org.id, body.provider, key) : [];
          if (elsewhere.length > 0 && options.soleBinding) {
            // For the operator (who asked is told to ask them); the answer does not say which organization.
            deps.logger.warn(
              { organizationId: org.id, installationId: key, boundTo: [...new Set(elsewhere.map((e) => e.organization_id))] },
              'the install flow refused a GitHub installation other organizations already bind (409)',
            );
            throw new Problem(
              409,
              'Conflict',
              `installation ${key} is already bound to another forgelink organization; an installation is bound to one organization: disconnect it there first, or ask the operator`,
            );
          }
          if (elsewhere.length > 0) {
            // The admin token may bind an installation to a second organization (an operator's decision), never silently.
            deps.logger.warn(
              { organizationId: org.id, installationId: key, alsoBoundTo: elsewhere.map((e) => e.organization_id) },
              'the admin token bound a GitHub installation other organizations already bind: its events and repositories reach each of them',
            );
          }
        }
        await insertConnection(trx, row);
      }),
    row,
  );
  // Nothing half-written: without a workflow the pending row would never leave `pending`.
  const workflowId = await startConnect(c, org, { organizationId: org.id, connectionId: id }, body.provider, () => deps.db.deleteFrom('connections').where('id', '=', id).execute().then(() => {}), 'the pending connection was removed');
  return { id, status: 'pending' as const, workflowId };
}

export function connectionRoutes() {
  const app = new OpenAPIHono<AppEnv>();

  app.openapi(
    createRoute({
      method: 'post',
      path: '/{org}/connections',
      summary: 'Connect a provider; the connect workflow validates the credential. GitHub: admin only (organizations use the install flow)',
      request: { params: OrgParam, body: { required: true, content: { 'application/json': { schema: ConnectBody } } } },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: Accepted } } },
        403: problemResponse('GitHub needs the admin token'),
        409: problemResponse('Already connected'),
        503: hostLookupUnavailableResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const body = c.req.valid('json');
      // Nothing proves who may use an installation id (small sequential integers): organizations
      // bind one through the install flow, which proves it; the admin may bind one for a tenant.
      if (body.provider === 'github') requireAdmin(c);
      return c.json(await createConnection(c, org, body), 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'put',
      path: '/{org}/connections/{id}/credential',
      summary: 'Rotate the credential of a GitLab, Bitbucket or Azure DevOps connection; the connect workflow validates it while the old one stays in use',
      request: { params: ConnParam, body: { required: true, content: { 'application/json': { schema: z.object({ token }) } } } },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: Accepted } } },
        409: problemResponse('A connect run or another rotation is in progress, or the connection is disconnected or being disconnected'),
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const { org, row } = await connectionOf(c, c.req.valid('param'), credentialRotationRefusal);
      const rotationId = randomUUID();
      // The connection goes on with its old credential while the new one is validated.
      if (!(await beginCredentialRotation(deps.db, row.id, rotationId, seal(deps.keys, c.req.valid('json').token, row.id)))) {
        throw new Problem(409, 'Conflict', `a credential rotation of connection ${row.id} is being validated; wait for its outcome (credentialRotation in GET …/connections/${row.id})`);
      }
      const input = { organizationId: org.id, connectionId: row.id, rotationId };
      const workflowId = await startConnect(c, org, input, row.provider, (reason) => failCredentialRotation(deps.db, row.id, rotationId, reason), 'the rotation was recorded failed, the connection keeps its credential');
      return c.json({ id: row.id, status: 'pending' as const, workflowId }, 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/{org}/connections/{id}/webhook-credential/rotate',
      summary: 'Rotate the webhook credential of a GitLab, Bitbucket or Azure DevOps connection',
      description:
        "Runs `webhook-credential:<org>:<connection>`: makes a new webhook credential (32 random bytes; Azure DevOps a new Basic user and password), " +
        'saves every hook of the connection again with it (the hook-health check of each attached repository, recorded as its hookHealth), then stops ' +
        'accepting the old one. Both are accepted until every hook carries the new one; a hook that cannot be saved keeps the old one accepted and is ' +
        'listed in the run\'s result (`notUpdated`). A request while a rotation of the connection runs joins it: the same 202 and workflowId.',
      request: { params: ConnParam },
      responses: {
        202: { description: 'Accepted (or joined the rotation already running)', content: { 'application/json': { schema: z.object({ workflowId: z.string() }) } } },
        409: problemResponse('A GitHub connection (its deliveries are signed with the App\'s secret), or one that is not active or is being disconnected'),
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const { org, row } = await connectionOf(c, c.req.valid('param'), webhookRotationRefusal);
      const workflowId = workflowIds.webhookCredentialRotation(org.id, row.id);
      // Another may follow once one is done; a request while one runs joins it (its credential is as new).
      await startWorkflow(deps, 'webhookCredentialRotationWorkflow', {
        workflowId,
        input: { organizationId: org.id, connectionId: row.id } satisfies WebhookCredentialRotationInput,
        allowRerun: true,
        labels: connectionRunLabels('rotate the webhook credential of', org, row.provider, row.id),
      });
      return c.json({ workflowId }, 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/connections/github/install',
      summary: "Redirect to the GitHub App's install page with a signed, single-use state (15 minutes), bound to the browser by a cookie the setup callback checks",
      request: { params: OrgParam },
      responses: { 302: { description: 'Redirect to GitHub' }, ...errors },
    }),
    async (c) => {
      const { deps } = c.var;
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const githubApp = installableGithubApp(c);
      // The state is bound to this browser: the setup callback takes it only with this cookie, so a
      // state started by someone else cannot bind the installation of whoever follows their link.
      const browser = randomBytes(32).toString('base64url');
      const state = signState(deps.keys, { org: org.id, browser: hashApiToken(browser) }, INSTALL_STATE_TTL_SECONDS);
      setCookie(c, INSTALL_COOKIE, browser, installCookieOptions(c, INSTALL_STATE_TTL_SECONDS));
      await saveInstallState(deps.db, { hash: hashApiToken(state), organizationId: org.id, expiresAt: new Date(Date.now() + INSTALL_STATE_TTL_SECONDS * 1000) });
      const url = `${githubApp.webUrl}/apps/${encodeURIComponent(githubApp.appName)}/installations/new?state=${encodeURIComponent(state)}`;
      return c.redirect(url, 302);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/connections',
      summary: "List the organization's connections (never shows a credential)",
      request: { params: OrgParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(ConnectionSchema) }) } } }, ...errors },
    }),
    async (c) => {
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const rows = await listConnections(c.var.deps.db, org.id);
      return c.json({ items: rows.map(toApi) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/connections/{id}',
      summary: 'One connection',
      request: { params: ConnParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: ConnectionSchema } } }, ...errors },
    }),
    async (c) => {
      const { row } = await connectionOf(c, c.req.valid('param'));
      return c.json(toApi(row), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/{org}/connections/{id}',
      summary: 'Disconnect: detaches every repository, then deletes the credential (kept while a repository could not be detached, unless force)',
      request: {
        params: ConnParam,
        query: z.object({
          force: z
            .enum(['true', 'false'])
            .optional()
            .openapi({ description: 'Delete the credential even when some repositories cannot be detached; the run lists the hooks that may remain' }),
        }),
      },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: z.object({ workflowId: z.string() }) } } },
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const { org, row } = await connectionOf(c, c.req.valid('param'));
      const workflowId = workflowIds.disconnect(org.id, row.id);
      // Runs again after a failed or terminated run; a run still going is joined.
      await startWorkflow(deps, 'disconnectWorkflow', {
        workflowId,
        input: { organizationId: org.id, connectionId: row.id, ...(c.req.valid('query').force === 'true' ? { force: true } : {}) },
        allowRerun: true,
        labels: connectionRunLabels('disconnect', org, row.provider, row.id),
      });
      return c.json({ workflowId }, 202);
    },
  );

  return app;
}

/** How long an install redirect's state stays usable. */
const INSTALL_STATE_TTL_SECONDS = 15 * 60;

/**
 * The cookie binding an install's state to the browser that started it (login CSRF: otherwise a
 * state issued to one organization, in a link, binds the installation of whoever follows it).
 * HttpOnly, SameSite=Lax (GitHub sends the browser back with a top-level GET, which carries it),
 * sent only to the setup callback.
 */
const INSTALL_COOKIE = 'forgelink_github_install';
const installCookieOptions = (c: Context<AppEnv>, maxAge: number) => ({
  path: '/api/github/setup',
  httpOnly: true,
  sameSite: 'Lax' as const,
  secure: !c.var.deps.publicUrl?.startsWith('http://'),
  maxAge,
});

/** The GitHub App with what the install flow needs (its name, and its OAuth client to prove installations). */
function installableGithubApp(c: Context<AppEnv>) {
  const { githubApp, enabledProviders } = c.var.deps;
  if (!githubApp || !enabledProviders.includes('github') || !githubApp.clientId || !githubApp.clientSecret) {
    throw badRequest('the GitHub App is not configured for installs (gitProviders.github: enabled, appName, clientId, clientSecret)');
  }
  return { ...githubApp, clientId: githubApp.clientId, clientSecret: githubApp.clientSecret };
}

const notProven = (detail: string) => new Problem(403, 'Forbidden', `the installation is not bound: ${detail}`);

/**
 * The GitHub App's setup URL (`/api/github/setup?installation_id=…&setup_action=…&state=…&code=…`):
 * GitHub sends the user's browser here after an install, with "Request user authorization (OAuth)
 * during installation" on. No bearer token comes along: the signed state from the install redirect
 * (used once) names the organization, and the OAuth `code` proves the installing user administers the
 * installation's account (that user, or an active owner of that organization), since
 * `installation_id` itself can be spoofed and reaching an installation is not administering it.
 * An installation another organization binds is not bound again (409).
 */
export function githubSetupRoutes() {
  const app = new OpenAPIHono<AppEnv>();
  app.openapi(
    createRoute({
      method: 'get',
      path: '/setup',
      summary: 'GitHub App setup callback: binds the installation to the organization named in the state, once the installing user is proven to administer its account',
      request: {
        query: z.object({
          installation_id: z.string().regex(/^[1-9][0-9]{0,18}$/),
          state: z.string().min(1).max(1000),
          code: z.string().min(1).max(200).openapi({ description: "The OAuth code for the installing user's token" }),
          setup_action: z.string().optional(),
        }),
      },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: Accepted } } },
        400: problemResponse('Bad or expired state, or the App is not configured for installs'),
        403: problemResponse(
          'Not proven: the install was started in another browser (no install cookie), the state was already used, the installing user does not administer the installation\'s account (is not that user, or not an active owner of that organization), or GitHub refused a call for the installing user (a 4xx other than a rate limit; its message is in the detail)',
        ),
        409: problemResponse('Installation already connected, here or to another organization'),
        503: problemResponse('GitHub (a rate limit included) or Temporal unavailable'),
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const query = c.req.valid('query');
      const githubApp = installableGithubApp(c);
      const state = verifyState<{ org: string; browser?: string }>(deps.keys, query.state);
      if (!state) throw badRequest('state is invalid or expired; start again from /connections/github/install');
      const browser = getCookie(c, INSTALL_COOKIE);
      if (!state.browser || !browser || !safeEqual(hashApiToken(browser), state.browser)) {
        throw notProven('this install was not started in this browser; start again from /connections/github/install');
      }
      deleteCookie(c, INSTALL_COOKIE, installCookieOptions(c, 0));
      const org = await findOrganization(deps.db, state.org);
      if (!org) throw badRequest('the organization in the state no longer exists');
      if (!(await useInstallState(deps.db, hashApiToken(query.state), org.id))) throw notProven('this state was already used; start again from /connections/github/install');
      let proof;
      try {
        proof = await proveInstallationAccess({ ...githubApp, baseUrl: deps.githubApiUrl ?? 'https://api.github.com' }, deps.outbound, query.code, query.installation_id);
      } catch (error) {
        // Only the message: the error never carries the code, the user token or the client secret.
        deps.logger.warn({ reason: (error as Error).message, installationId: query.installation_id }, 'could not prove a GitHub installation');
        throw new Problem(503, 'Service Unavailable', 'GitHub could not be asked who installed the App; nothing was bound, start again');
      }
      if (!proof.proven) {
        deps.logger.warn({ organizationId: org.id, installationId: query.installation_id, reason: proof.reason }, 'GitHub installation not proven: not bound');
        throw notProven(proof.reason);
      }
      return c.json(await createConnection(c, org, { provider: 'github', installationId: query.installation_id }, { soleBinding: true }), 202);
    },
  );
  return app;
}
