import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { IncomingMessage } from 'node:http';
import type { Context } from 'hono';
import { createHash } from 'node:crypto';
import type { EncryptionKeys } from '../../lib/crypto.ts';
import type { Db } from '../../lib/db/index.ts';
import { deliveryScope, findAttachedRepositories, findConnectionsByExternalKey, type DeliveryScope } from '../../lib/db/repositories/events.ts';
import { isAccessChange, PROVIDERS, type NormalizedEvent, type Provider } from '../../lib/domain.ts';
import { serializeEvents, storeDelivery } from '../../lib/db/repositories/deliveries.ts';
import { ContentRefusedError, sqlStateOf } from '../../lib/db/errors.ts';
import { currentTraceparent } from '../../lib/tracing.ts';
import { summarizeDelivery, workflowIds } from '../../workflows/contract.ts';
import { boundedKeywords, type DeliveryTargets } from '../../workflows/run-labels.ts';
import type { ApiMetrics, WebhookOutcome } from '../../lib/metrics.ts';
import type { AppEnv, WebhookSecrets } from '../context.ts';
import { badRequest, Problem, problemResponse } from '../problem.ts';
import { createAttachedCache, type AttachedCache, type AttachedTarget } from '../webhooks/attached-cache.ts';
import { createCredentialCache, type CredentialCache, type ReceivingConnection } from '../webhooks/connection-credentials.ts';
import { isPing, normalizeDelivery, WebhookPayloadError, type NormalizedDelivery, type WebhookHeaders } from '../webhooks/normalize.ts';
import { attachmentsOfInstallation, attachmentsOfInstance } from '../../lib/instance.ts';
import { createUnverifiedBudget, sourceOf, unverifiedBudgetSizes, type UnverifiedBudget } from '../webhooks/unverified-budget.ts';
import { verifyAzureBasicAuth, verifyBitbucketSignature, verifyGithubSignature, verifyGitlabToken } from '../webhooks/verify.ts';

const Acknowledged = z
  .object({
    status: z.enum(['accepted', 'ignored', 'pong']),
    workflowId: z.string().optional(),
    events: z.number().int().optional(),
    reason: z.string().optional(),
  })
  .openapi('WebhookAcknowledgement');

const VERIFICATION: Record<Provider, string> = {
  github: 'X-Hub-Signature-256: HMAC-SHA256 of the raw body with the App webhook secret',
  gitlab: "X-Gitlab-Token: the connection's webhook secret token",
  bitbucket: "X-Hub-Signature: sha256= HMAC of the raw body with the connection's webhook secret (diagnostics:ping arrives unsigned)",
  'azure-devops': "Authorization: Basic with the connection's Service Hook user and password",
};

/** A provider's check of one delivery against a list of accepted credentials; every one is compared, in constant time. */
function matches(provider: Provider, headers: WebhookHeaders, body: Uint8Array, credentials: readonly { user?: string; secret: string }[]): boolean {
  const secrets = credentials.map((c) => c.secret);
  switch (provider) {
    case 'github':
      return verifyGithubSignature(body, headers['x-hub-signature-256'], secrets);
    case 'gitlab':
      return verifyGitlabToken(headers['x-gitlab-token'], secrets);
    case 'bitbucket':
      return verifyBitbucketSignature(body, headers['x-hub-signature'], secrets);
    case 'azure-devops':
      return verifyAzureBasicAuth(headers.authorization, credentials.map((c) => ({ user: c.user ?? '', password: c.secret })));
  }
}

/** The configured secrets: GitHub's App secret, and the global ones legacy hooks (made before per-connection credentials) carry. */
function configuredCredentials(provider: Provider, secrets: WebhookSecrets): { user?: string; secret: string }[] {
  switch (provider) {
    case 'github':
      return secrets.github.map((secret) => ({ secret }));
    case 'gitlab':
      return secrets.gitlab.map((secret) => ({ secret }));
    case 'bitbucket':
      return secrets.bitbucket.map((secret) => ({ secret }));
    case 'azure-devops':
      return (secrets.azureDevOps?.passwords ?? []).map((secret) => ({ user: secrets.azureDevOps!.user, secret }));
  }
}

/** Providers whose delivery credential is a header alone (GitLab's token, Azure DevOps' Basic auth), not a signature over the body. */
const HEADER_ONLY_CREDENTIALS: ReadonlySet<Provider> = new Set(['gitlab', 'azure-devops']);

const CONNECTION_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The connection a delivery to its own hook (`?c=<connection id>`) names, as remembered or read; undefined when there is no such connection. */
async function namedConnection(credentials: CredentialCache, connectionId: string): Promise<{ connection: ReceivingConnection | undefined; fresh: boolean }> {
  if (!CONNECTION_NAME.test(connectionId)) return { connection: undefined, fresh: false };
  return credentials.get(connectionId);
}

/**
 * Whether a delivery to a connection's own hook carries one of that connection's credentials. A
 * credential the cache does not know yet (a rotation began) is looked for in the database before
 * the delivery is refused.
 */
async function verifiedForConnection(
  credentials: CredentialCache,
  provider: Provider,
  connectionId: string,
  named: { connection: ReceivingConnection | undefined; fresh: boolean },
  headers: WebhookHeaders,
  body: Uint8Array,
): Promise<boolean> {
  const accepts = (connection: ReceivingConnection | undefined) =>
    connection !== undefined && connection.provider === provider && matches(provider, headers, body, connection.credentials.map((c) => ({ user: c.basicAuthUser, secret: c.secret })));
  return accepts(named.connection) || (!named.fresh && named.connection !== undefined && accepts(await credentials.reload(connectionId)));
}

/** GitHub's and Bitbucket's signature headers (the only shape verification can accept: `sha256=` and 64 hex digits). */
const SIGNATURE_HEADER: Partial<Record<Provider, string>> = { github: 'x-hub-signature-256', bitbucket: 'x-hub-signature' };
const WELL_FORMED_SIGNATURE = /^sha256=[0-9a-f]{64}$/;
const signatureWellFormed = (header: string | undefined) => header !== undefined && WELL_FORMED_SIGNATURE.test(header.trim().toLowerCase());

/**
 * The request headers as a record of lower-case names. Under @hono/node-server they come straight
 * from Node's parsed headers (building a Fetch Headers object per delivery costs more than all the
 * verification); elsewhere (app.request in tests) from the Request.
 */
function headerRecord(c: Context<AppEnv>): Record<string, string> {
  const record: Record<string, string> = {};
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (incoming?.headers) {
    for (const [name, value] of Object.entries(incoming.headers)) {
      if (value !== undefined) record[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    return record;
  }
  c.req.raw.headers.forEach((value, name) => (record[name] = value));
  return record;
}

const MAX_DELIVERY_ID_LENGTH = 200;
/**
 * Who the delivery concerns: within `scope`, organizations with the repository attached, or bound
 * to the installation. A delivery for repositories known to be attached is answered from `cache`;
 * any other is looked up (and what is found attached remembered).
 */
async function targetsOf(c: Context<AppEnv>, cache: AttachedCache, provider: Provider, scope: DeliveryScope, delivery: NormalizedDelivery) {
  const { events, installationId, instanceUrl } = delivery;
  const scopeKey = 'connectionId' in scope ? `connection:${scope.connectionId}` : `${'legacyHooks' in scope ? 'legacy' : 'app'}:${provider}`;
  const externalIds = events.map((e) => e.repository.externalId);
  // An installation's access change also concerns the connections bound to it, attached or not.
  const boundConnectionsToo = installationId !== undefined && events.some(isAccessChange);
  const cached = boundConnectionsToo ? undefined : cache.get(scopeKey, externalIds);
  let attached: AttachedTarget[];
  let connections: { organizationId: string; organizationSlug: string; id: string }[] = [];
  if (cached) attached = cached;
  else {
    const { db } = c.var.deps;
    const [rows, bound] = await Promise.all([
      findAttachedRepositories(db, provider, externalIds, scope),
      boundConnectionsToo ? findConnectionsByExternalKey(db, provider, installationId) : Promise.resolve([]),
    ]);
    attached = rows.map(({ organizationId, organizationSlug, repositoryId, fullName, connectionId, externalId, baseUrl, connectionKey }) => ({
      organizationId,
      organizationSlug,
      repositoryId,
      fullName,
      connectionId,
      externalId,
      baseUrl,
      connectionKey,
    }));
    for (const externalId of new Set(externalIds)) cache.set(scopeKey, externalId, attached.filter((r) => r.externalId === externalId));
    connections = bound;
  }
  // A connection's hook names its instance; a legacy hook's delivery is placed by the URLs in its payload.
  const { kept, ambiguous } = 'connectionId' in scope ? { kept: attached, ambiguous: [] } : attachmentsOfInstance(attachmentsOfInstallation(provider, attached, installationId), instanceUrl);
  if (ambiguous.length > 0) {
    c.var.deps.logger.warn({ provider, externalIds: ambiguous, instanceUrl }, 'repository id attached on several instances and the delivery matches none of their base URLs: not acted on');
  }
  const slugs = boundedKeywords([...kept.map((a) => a.organizationSlug), ...connections.map((cn) => cn.organizationSlug)]);
  const names = boundedKeywords(kept.map((a) => a.fullName));
  const connectionIds = new Set([...kept.map((a) => a.connectionId), ...connections.map((cn) => cn.id)]);
  const labels: DeliveryTargets = {
    organizationSlugs: slugs.values,
    ...(slugs.more > 0 ? { moreOrganizations: slugs.more } : {}),
    repositoryNames: names.values,
    ...(names.more > 0 ? { moreRepositories: names.more } : {}),
    ...(connectionIds.size === 1 ? { connectionId: [...connectionIds][0]! } : {}),
  };
  return {
    organizationIds: [...new Set([...kept.map((a) => a.organizationId), ...connections.map((cn) => cn.organizationId)])],
    repositoryIds: [...new Set(kept.map((a) => a.repositoryId))],
    labels,
  };
}

const tooLarge = (max: number) => new Problem(413, 'Content Too Large', `the body exceeds ${max} bytes`);

/** A Content-Length (every provider sends one) is all it takes to refuse a body over `max`, before anything else. */
function refuseDeclaredOverLimit(headers: WebhookHeaders, max: number): void {
  const declared = headers['content-length'];
  if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) > max) throw tooLarge(max);
}

/** Too many unverified bodies being read at once (api/webhooks/unverified-budget.ts): not the sender's fault, deliver again. */
function busy(c: Context<AppEnv>): Problem {
  c.header('Retry-After', '1');
  return new Problem(503, 'Service Unavailable', 'too many unverified webhook bodies are being received at once; deliver it again');
}

/**
 * The raw body, refused past `max` bytes. With a Content-Length (checked against `max` already) the
 * body is read in one piece, which @hono/node-server does straight from the socket; a chunked body
 * is counted as it streams in. `hold`, for a body not verified yet, takes its bytes from the
 * unverified budget before they are read (the declared length at once, a chunked body's chunks as
 * they come): refused, the body is not read (further) and the delivery is answered 503.
 */
async function readBody(c: Context<AppEnv>, headers: WebhookHeaders, max: number, hold?: (bytes: number) => boolean): Promise<Uint8Array> {
  const declared = headers['content-length'];
  if (declared !== undefined && /^\d+$/.test(declared)) {
    if (hold && !hold(Number(declared))) throw busy(c);
    return new Uint8Array(await c.req.arrayBuffer());
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = c.req.raw.body?.getReader();
  for (let chunk = await reader?.read(); chunk && !chunk.done; chunk = await reader!.read()) {
    size += chunk.value.byteLength;
    if (size > max) {
      await reader!.cancel();
      throw tooLarge(max);
    }
    if (hold && !hold(chunk.value.byteLength)) {
      await reader!.cancel();
      throw busy(c);
    }
    chunks.push(chunk.value);
  }
  return new Uint8Array(Buffer.concat(chunks));
}

type Caches = { attached: AttachedCache; credentials: CredentialCache; unverified: UnverifiedBudget };

async function receive(c: Context<AppEnv>, caches: Caches, provider: Provider, outcome: (o: WebhookOutcome) => void) {
  const { deps } = c.var;
  const headers = headerRecord(c);
  // Hooks of GitLab, Bitbucket and Azure DevOps name their connection; a hook that does not is a legacy one.
  const connectionId = provider === 'github' ? undefined : c.req.query('c');
  const refused = () => new Problem(401, 'Unauthorized', `the delivery's credentials do not match (${VERIFICATION[provider]})`);
  /** A read of the connection's credentials that fails is a 503: the delivery is not refused for it. */
  const reading = async <T>(read: () => Promise<T>): Promise<T> => {
    try {
      return await read();
    } catch (error) {
      deps.logger.error({ err: error, provider }, "could not read the connection's webhook credentials");
      throw new Problem(503, 'Service Unavailable', 'the delivery could not be verified now; deliver it again');
    }
  };
  const pong = () => {
    outcome('ping');
    return c.json({ status: 'pong' as const }, 200);
  };
  // A body declared over the limit is refused first, whoever sends it: it is never read, and its
  // connection is closed (api/unread-body.ts).
  refuseDeclaredOverLimit(headers, deps.webhooks.maxBodyBytes);
  // Bitbucket's diagnostics:ping arrives unsigned and starts nothing: its X-Event-Key says so without the body.
  if (provider === 'bitbucket' && headers['x-event-key'] === 'diagnostics:ping') return pong();
  // A connection's hook: the connection it names must exist and be of this provider before any of
  // the body is read (what arrives is read and thrown away). The answer is the 401 of a wrong
  // credential, after the body has arrived, as it was when the body was read first.
  const named = connectionId === undefined ? undefined : await reading(() => namedConnection(caches.credentials, connectionId));
  if (named && named.connection?.provider !== provider) throw refused();
  const verify = async (body: Uint8Array) => {
    const verified = await reading(async () =>
      named === undefined
        ? matches(provider, headers, body, configuredCredentials(provider, deps.webhooks))
        : verifiedForConnection(caches.credentials, provider, connectionId!, named, headers, body),
    );
    if (!verified) throw refused();
  };
  // GitLab's and Azure DevOps' credentials are headers: checked before the body is read, so a caller
  // without one costs no parsing or buffering (what arrives of the body is read and thrown away).
  const headerOnly = HEADER_ONLY_CREDENTIALS.has(provider);
  if (headerOnly) await verify(new Uint8Array(0));
  // GitHub's and Bitbucket's signatures need the whole body. A signature header that cannot match
  // is refused first (Bitbucket without X-Event-Key: the body says whether it is an unsigned ping).
  else if (!signatureWellFormed(headers[SIGNATURE_HEADER[provider]!]) && !(provider === 'bitbucket' && headers['x-event-key'] === undefined)) throw refused();
  // The body is read from the unverified budget (bounded in all, and per sender address), given back
  // once it is verified or refused.
  const source = sourceOf((c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.socket?.remoteAddress);
  let held = 0;
  const hold = (bytes: number) => caches.unverified.reserve(source, bytes) && (held += bytes) >= 0;
  let body: Uint8Array;
  let ping: boolean;
  try {
    body = await readBody(c, headers, deps.webhooks.maxBodyBytes, headerOnly ? undefined : hold);
    ping = isPing(provider, headers, body);
    // GitHub signs its ping like any delivery. A ping starts nothing.
    if (ping && provider === 'bitbucket') return pong();
    if (!headerOnly) await verify(body);
  } finally {
    caches.unverified.release(source, held);
  }
  if (ping) {
    outcome('ping');
    return c.json({ status: 'pong' as const }, 200);
  }
  if (!/^application\/json\s*(;|$)/i.test(headers['content-type'] ?? '')) {
    throw badRequest(`content-type must be application/json, got ${headers['content-type'] ?? 'none'}`);
  }
  let delivery: NormalizedDelivery;
  try {
    delivery = normalizeDelivery(provider, headers, body, { maxEventsLength: 2 * deps.webhooks.maxBodyBytes });
  } catch (error) {
    if (error instanceof WebhookPayloadError) throw badRequest(error.message);
    throw error;
  }
  const { events, instanceUrl, installationId, overlong } = delivery;
  const overSizeLimit = (deliveryId: string | undefined, count: number | undefined) => {
    deps.logger.warn({ provider, deliveryId, events: count, limit: 2 * deps.webhooks.maxBodyBytes }, 'a delivery whose events are over the size limit (twice webhooks.maxBodyBytes of UTF-8 JSON): not acted on');
    outcome('ignored');
    return c.json({ status: 'ignored' as const, reason: 'events over the size limit' }, 200);
  };
  // Told while normalizing, before the events were made (api/webhooks/normalize.ts, boundRefChanges).
  if (delivery.overLimit) return overSizeLimit(undefined, undefined);
  if (overlong) c.var.deps.logger.warn({ provider, overlong }, 'events naming a branch, tag or repository over the length limits: not acted on');
  if (events.length === 0) {
    outcome('ignored');
    return c.json({ status: 'ignored' as const, reason: overlong ? 'names over the length limits' : 'event kind not handled' }, 200);
  }

  const deliveryId = events[0]!.deliveryId;
  // It becomes part of the workflow id; no provider sends one anywhere near this long.
  if (deliveryId.length > MAX_DELIVERY_ID_LENGTH) throw badRequest(`the delivery id is longer than ${MAX_DELIVERY_ID_LENGTH} characters`);
  const workflowId = workflowIds.event(provider, deliveryId, connectionId);
  try {
    const targets = await targetsOf(c, caches.attached, provider, deliveryScope(provider, connectionId), delivery);
    if (targets.organizationIds.length === 0) {
      outcome('ignored');
      return c.json({ status: 'ignored' as const, reason: 'repository not attached' }, 200);
    }
    // Each event repeats its repository's name and sender, so a body of many short ref changes can
    // make events many times its size: they are stored up to twice the body limit in UTF-8 bytes,
    // and a delivery past it is not acted on (as names over the limits are), never written or
    // refused. Measured after the lookup: a delivery for no attached repository never pays it.
    const eventsJson = serializeEvents(events, 2 * deps.webhooks.maxBodyBytes);
    if (eventsJson === undefined) return overSizeLimit(deliveryId, events.length);
    // Store first: once the row is written the delivery is acknowledged, and the intake relay
    // (api/intake-relay.ts) starts its run, so a Temporal outage never turns into a failed delivery.
    const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
    const insert = () => storeDelivery(deps.db, {
      provider,
      deliveryId,
      connectionId,
      events,
      eventsJson,
      installationId,
      instanceUrl,
      start: {
        taskQueue: deps.taskQueue,
        summary: summarizeDelivery(events),
        ...(connectionId ? { connectionId, bodyDigest: createHash('sha256').update(body).digest('hex') } : {}),
        // Keyword attributes hold one value: set when the delivery concerns a single organization / repository.
        ...(targets.organizationIds.length === 1 ? { organizationId: targets.organizationIds[0]! } : {}),
        ...(targets.repositoryIds.length === 1 ? { repositoryId: targets.repositoryIds[0]! } : {}),
        // Slugs and names for the Temporal UI (KeywordList attributes, a summary): bounded, so the row stays small.
        targets: targets.labels,
        // The receipt's trace goes on in the run the relay starts (nothing when tracing is off).
        ...withTraceparent(currentTraceparent()),
      },
    });
    const stored = await (deps.ackTrace ? deps.ackTrace.insert(incoming, insert) : insert());
    outcome(stored ? 'accepted' : 'redelivery');
    if (stored) deps.intake.stored();
  } catch (error) {
    const sqlState = sqlStateOf(error);
    // PostgreSQL refused the INSERT itself for the delivery's content (storeDelivery; what the
    // receivers mend should leave nothing of the kind; the connection's row may be gone, just
    // deleted). It would be refused again on every redelivery, and a 5xx for it would end with the
    // provider disabling the hook and every later delivery lost: acknowledged as not acted on,
    // logged and counted (outcome "unstorable") for the operator.
    if (error instanceof ContentRefusedError) {
      deps.logger.error({ reason: error.message, sqlState, provider, deliveryId }, 'PostgreSQL refused the delivery for its data: it cannot be stored, not acted on');
      outcome('unstorable');
      return c.json({ status: 'ignored' as const, reason: 'the delivery cannot be stored' }, 200);
    }
    // The database unavailable (no connection, 08, 53, 57, 40, a lock timeout), a connect or a
    // lookup failing whatever its SQLSTATE, or anything else not the delivery's content: not
    // acknowledged, so the provider delivers it again.
    deps.logger.error({ reason: (error as Error).message, sqlState, provider, deliveryId }, 'could not store the delivery');
    throw new Problem(503, 'Service Unavailable', 'the delivery could not be stored durably; deliver it again');
  }
  // A redelivery finds its row already there: acknowledged the same way, nothing new stored or started.
  deps.ackTrace?.answered((c.env as { incoming?: IncomingMessage } | undefined)?.incoming, deliveryId);
  return c.json({ status: 'accepted' as const, workflowId, events: events.length }, 202);
}

/** A delivery received and counted: its outcome (what was acted on, or the error status) and how long its answer took. */
async function counted(metrics: ApiMetrics, c: Context<AppEnv>, caches: Caches, provider: Provider) {
  const started = performance.now();
  let outcome: WebhookOutcome = '500';
  try {
    return await receive(c, caches, provider, (o) => (outcome = o));
  } catch (error) {
    const status = (error as { status?: unknown }).status;
    outcome = status === 400 || status === 401 || status === 413 || status === 503 ? (String(status) as WebhookOutcome) : typeof status === 'number' && status >= 400 && status < 500 ? '400' : '500';
    throw error;
  } finally {
    metrics.webhookDelivery(provider, outcome, (performance.now() - started) / 1000);
  }
}

/**
 * `POST /api/events-handler/v1/events/{provider}`: the delivery URL attach registers. Verifies,
 * normalizes and answers fast; everything else happens in the event workflow. A valid delivery
 * never gets a 4xx (GitLab and Azure DevOps disable hooks that fail): what is not acted on is 200.
 */
export function webhookRoutes(options: {
  db: Db;
  keys: EncryptionKeys;
  maxBodyBytes: number;
  unverifiedBodyBytes?: number;
  attachedCacheSeconds?: number;
  credentialCacheSeconds?: number;
  metrics?: ApiMetrics;
}) {
  const app = new OpenAPIHono<AppEnv>();
  const caches: Caches = {
    unverified: createUnverifiedBudget(unverifiedBudgetSizes(options.maxBodyBytes, options.unverifiedBodyBytes)),
    attached: createAttachedCache(options.attachedCacheSeconds === undefined ? {} : { ttlMs: options.attachedCacheSeconds * 1000 }),
    credentials: createCredentialCache({ db: options.db, keys: options.keys, ...(options.credentialCacheSeconds === undefined ? {} : { ttlMs: options.credentialCacheSeconds * 1000 }) }),
  };
  options.metrics?.unverifiedBodies(caches.unverified.held);
  for (const provider of PROVIDERS) {
    app.openapi(
      createRoute({
        method: 'post',
        path: `/${provider}`,
        summary: `Webhook receiver for ${provider}`,
        description: `Verification: ${VERIFICATION[provider]}. The body is the provider's JSON, verified over its exact bytes.`,
        security: [],
        // Documented here, not declared as `request.query`: that would add a zod validator to every
        // delivery for a parameter that is any string or none, which the receiver reads itself and
        // checks as a connection id (~3 % of an acknowledgement's CPU).
        parameters: [
          {
            name: 'c',
            in: 'query',
            required: false,
            description: 'The connection whose hook delivers (GitLab, Bitbucket, Azure DevOps): opaque, not a secret; absent on hooks made before per-connection credentials',
            schema: { type: 'string' },
          },
        ],
        responses: {
          200: { description: 'A ping, or a valid delivery that is not acted on', content: { 'application/json': { schema: Acknowledged } } },
          202: { description: 'The delivery is stored durably (or already was: a redelivery); its event workflow starts from the intake table', content: { 'application/json': { schema: Acknowledged } } },
          400: problemResponse("The body is not the provider's JSON"),
          401: problemResponse('Signature, token or Basic credentials do not match; nothing started'),
          413: problemResponse('The body is over the size limit'),
          503: problemResponse("The database is unavailable, the connection's credentials cannot be read, or too many unverified bodies are being read at once (Retry-After); the provider should deliver it again"),
        },
      }),
      (c) => (options.metrics ? counted(options.metrics, c, caches, provider) : receive(c, caches, provider, () => {})),
    );
  }
  return app;
}

const withTraceparent = (traceparent: string | undefined) => (traceparent ? { traceparent } : {});
