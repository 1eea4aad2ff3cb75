import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { IncomingMessage } from 'node:http';
import type { Context } from 'hono';
import { createHash } from 'node:crypto';
import type { EncryptionKeys } from '../../lib/crypto.ts';
import { MAX_BACKLOG_BYTES_DEFAULT, MAX_BACKLOG_DELIVERIES_DEFAULT, WEBHOOK_THREAD_BODY_BYTES_DEFAULT } from '../../lib/config.ts';
import type { Logger } from '../../lib/logger.ts';
import type { Db } from '../../lib/db/index.ts';
import { deliveryScope, findAttachedRepositories, findConnectionsByExternalKey, type DeliveryScope } from '../../lib/db/repositories/events.ts';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { serializeEvents, storeDelivery } from '../../lib/db/repositories/deliveries.ts';
import { ContentRefusedError, databaseBusy, sqlStateOf } from '../../lib/db/errors.ts';
import { currentTraceparent } from '../../lib/tracing.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { boundedKeywords, type DeliveryTargets } from '../../workflows/run-labels.ts';
import type { ApiMetrics, WebhookOutcome } from '../../lib/metrics.ts';
import type { AppEnv, WebhookSecrets } from '../context.ts';
import { badRequest, DATABASE_RETRY_AFTER_SECONDS, Problem, problemResponse, serviceUnavailable } from '../problem.ts';
import { createAttachedCache, type AttachedCache, type AttachedTarget } from '../webhooks/attached-cache.ts';
import { createCredentialCache, type CredentialCache, type ReceivingConnection } from '../webhooks/connection-credentials.ts';
import type { WebhookHeaders } from '../webhooks/normalize.ts';
import { bodyPoolSizes, createBodyPool, type BodyPool } from '../webhooks/body-thread.ts';
import { readDeliveryBody, type BodyOutcome, type ReceivedDelivery } from '../webhooks/delivery-body.ts';
import { maxParseCost, PARSE_COST_PER_BODY_BYTE } from '../../lib/parse-cost.ts';
import { PoolBusy, PoolJobTimedOut, PoolThreadFailed } from '../../lib/thread-pool.ts';
import { attachmentsOfInstallation, attachmentsOfInstance } from '../../lib/instance.ts';
import { createBacklogBound, type BacklogBound, type BacklogFull } from '../webhooks/backlog-bound.ts';
import { createByteBudget, heldBudgetSizes, sourceOf, unverifiedBudgetSizes, type ByteBudget } from '../webhooks/unverified-budget.ts';
import { verifyDelivery, type DeliveryCredential } from '../webhooks/verify.ts';

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

/** The configured secrets: GitHub's App secret, and the global ones legacy hooks (made before per-connection credentials) carry. */
function configuredCredentials(provider: Provider, secrets: WebhookSecrets): DeliveryCredential[] {
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

/**
 * Providers whose delivery credential signs the body but not the delivery id (Bitbucket DC: the
 * HMAC of X-Hub-Signature covers the body, not X-Request-Id): a signed body sent again under a new
 * id would verify, so its digest goes with the delivery and the run records nothing for a body the
 * connection already recorded (activities/events.ts claimDeliveryDigest). Not GitLab or Azure
 * DevOps: their credential is a static header, so whoever could replay a body could send any body,
 * and a GitLab push carries nothing of its own (deleting and re-creating a branch at the same commit
 * repeats its body exactly), so the check would only drop real events. Derived from
 * HEADER_ONLY_CREDENTIALS, so the two cannot disagree; GitHub's App deliveries come through no
 * connection's hook, so they are never checked (Bitbucket DC alone today).
 */
export const BODY_DIGEST_PROVIDERS: ReadonlySet<Provider> = new Set(PROVIDERS.filter((p) => p !== 'github' && !HEADER_ONLY_CREDENTIALS.has(p)));

const CONNECTION_NAME = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The connection a delivery to its own hook (`?c=<connection id>`) names, as remembered or read; undefined when there is no such connection. */
async function namedConnection(credentials: CredentialCache, connectionId: string): Promise<{ connection: ReceivingConnection | undefined; fresh: boolean }> {
  if (!CONNECTION_NAME.test(connectionId)) return { connection: undefined, fresh: false };
  return credentials.get(connectionId);
}

/** A connection's accepted webhook credentials, as verifyDelivery takes them. */
const credentialsOf = (connection: ReceivingConnection): DeliveryCredential[] => connection.credentials.map((c) => ({ ...(c.basicAuthUser === undefined ? {} : { user: c.basicAuthUser }), secret: c.secret }));

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
async function targetsOf(c: Context<AppEnv>, cache: AttachedCache, provider: Provider, scope: DeliveryScope, delivery: ReceivedDelivery) {
  const { externalIds, installationId, instanceUrl } = delivery;
  const scopeKey = 'connectionId' in scope ? `connection:${scope.connectionId}` : `${'legacyHooks' in scope ? 'legacy' : 'app'}:${provider}`;
  // An installation's access change also concerns the connections bound to it, attached or not.
  const boundConnectionsToo = installationId !== undefined && delivery.accessChange;
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

/** The Retry-After of the receivers' own 503s: a budget or the body threads full, or a body's thread ended or past its deadline. */
const BUSY_RETRY_AFTER_SECONDS = 1;

/** Too many unverified bodies being read at once (api/webhooks/unverified-budget.ts): not the sender's fault, deliver again. */
const busy = () => serviceUnavailable('too many unverified webhook bodies are being received at once; deliver it again', BUSY_RETRY_AFTER_SECONDS);

/** How long an organization whose backlog is full is asked to wait: the relays start hundreds of runs a second, the bound is far above that. */
const BACKLOG_RETRY_AFTER_SECONDS = 60;

/**
 * The organization's deliveries stored and not started yet reached a bound
 * (api/webhooks/backlog-bound.ts): its senders send faster than its runs start. 503, as for a
 * database that cannot take the write (which it stands for: the intake table's space for this
 * tenant), not a 4xx: a 5xx asks for a retry, and older GitLab (still on self-managed instances)
 * disabled a hook for good after 4 consecutive 4xx. Nothing stored; only this organization's hooks are
 * refused, never another tenant's deliveries.
 */
const backlogFull = (full: BacklogFull) =>
  new Problem(
    503,
    'Service Unavailable',
    `this organization has ${full.bound === 'webhooks.maxBacklogDeliveries' ? `${full.backlog.rows} deliveries` : `${full.backlog.bytes} bytes of deliveries`} stored and not started yet, at or past ${full.bound} (${full.limit}); deliver it again later`,
    'about:blank',
    { bound: full.bound, limit: full.limit },
    BACKLOG_RETRY_AFTER_SECONDS,
  );

/** Too many bytes of verified deliveries in flight, in all or for the delivery's connection (Caches.held): deliver it again. */
const heldBusy = () => serviceUnavailable("too many bytes of this connection's or all verified webhook deliveries are in flight at once; deliver it again", BUSY_RETRY_AFTER_SECONDS);

/**
 * The raw body, refused past `max` bytes. With a Content-Length (checked against `max` already) the
 * body is read in one piece, which @hono/node-server does straight from the socket; a chunked body
 * is counted as it streams in. `hold` takes its bytes from a budget before they are read (the
 * unverified one for a body not verified yet, the verified one for a body whose header credential
 * matched; the declared length at once, a chunked body's chunks as they come): refused, the body
 * is not read (further) and the delivery is answered `refusal`, a 503.
 */
async function readBody(c: Context<AppEnv>, headers: WebhookHeaders, max: number, hold: (bytes: number) => boolean, refusal: () => Problem): Promise<Uint8Array> {
  const declared = headers['content-length'];
  if (declared !== undefined && /^\d+$/.test(declared)) {
    if (!hold(Number(declared))) throw refusal();
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
    if (!hold(chunk.value.byteLength)) {
      await reader!.cancel();
      throw refusal();
    }
    chunks.push(chunk.value);
  }
  return new Uint8Array(Buffer.concat(chunks));
}

type Caches = {
  attached: AttachedCache;
  credentials: CredentialCache;
  /** Bytes of bodies not verified yet, keyed by sender address (unverifiedBudgetSizes). */
  unverified: ByteBudget;
  /**
   * Bytes verified deliveries hold in flight, keyed by connection (GitHub's App and a provider's
   * legacy hooks: one key each), so one tenant signing its own bodies takes at most its share: a
   * verified body from when it is read (GitLab, Azure DevOps) or verified (GitHub, Bitbucket), and
   * its events' JSON from its serialization, until the delivery is answered (its INSERT returned).
   */
  held: ByteBudget;
  /** The threads large bodies are read on, and from how many bytes a body is large. */
  bodies: BodyPool;
  threadBodyBytes: number;
  /** Each organization's stored deliveries not started yet (its connections' hooks), against webhooks.maxBacklogDeliveries and maxBacklogBytes. */
  backlog: BacklogBound;
};

/** GitLab's and Azure DevOps' header credentials are checked without a body. */
const NO_BODY = new Uint8Array(0);

/**
 * The body as a view of a whole ArrayBuffer of its own, which can move to a thread. A chunked body
 * is one already (Buffer.concat of more than 4 KiB); a view into a shared buffer (Node's pool) is
 * copied, since moving that buffer would take every other view of it along.
 */
function ownBuffer(body: Uint8Array): Uint8Array {
  return body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer ? body : body.slice();
}

/**
 * A delivery received; a large body's place on the threads is given back once it is answered, not
 * when its thread is done: the events' JSON it brought back (up to twice webhooks.maxBodyBytes,
 * with pg's copy) stays in memory until the INSERT ends, so such deliveries are bounded by the
 * pool's places too.
 */
async function receive(c: Context<AppEnv>, caches: Caches, provider: Provider, outcome: (o: WebhookOutcome) => void) {
  // The delivery's places on the threads and its bytes in the verified budget, given back however it ends (an abort: the body's read throws).
  const places: (() => void)[] = [];
  try {
    return await receiveHolding(c, caches, provider, outcome, places);
  } finally {
    for (const release of places) release();
  }
}

async function receiveHolding(c: Context<AppEnv>, caches: Caches, provider: Provider, outcome: (o: WebhookOutcome) => void, places: (() => void)[]) {
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
      throw serviceUnavailable('the delivery could not be verified now; deliver it again', DATABASE_RETRY_AFTER_SECONDS);
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
  // The credentials a delivery is checked against; when none matches, a connection's are read again
  // (a rotation may have made one the cache does not know yet) before the delivery is refused.
  const credentials = named === undefined ? configuredCredentials(provider, deps.webhooks) : credentialsOf(named.connection!);
  const reloadedCredentials = async (): Promise<DeliveryCredential[] | undefined> => {
    if (named === undefined || named.fresh) return undefined;
    const reloaded = await reading(() => caches.credentials.reload(connectionId!));
    return reloaded?.provider === provider ? credentialsOf(reloaded) : undefined;
  };
  /**
   * A connection's own hook, verified: refused (503) while its organization's backlog is at a bound
   * (Caches.backlog). A failed measure refuses nothing: the INSERT that follows answers for the database.
   */
  const organizationId = named?.connection?.organizationId;
  const refuseFullBacklog = async () => {
    if (connectionId === undefined || organizationId === undefined) return;
    let full: BacklogFull | undefined;
    try {
      full = await caches.backlog.full(organizationId);
    } catch (error) {
      deps.logger.warn({ reason: (error as Error).message, provider, connectionId }, "could not measure the organization's intake backlog; the delivery is taken");
    }
    if (!full) return;
    if (full.measured) deps.logger.warn({ provider, connectionId, organizationId, bound: full.bound, limit: full.limit, rows: full.backlog.rows, bytes: full.backlog.bytes }, "an organization's deliveries not started yet reached a bound: its deliveries are answered 503, not stored");
    throw backlogFull(full);
  };
  // GitLab's and Azure DevOps' credentials are headers: checked before the body is read, so a caller
  // without one costs no parsing or buffering (what arrives of the body is read and thrown away).
  const headerOnly = HEADER_ONLY_CREDENTIALS.has(provider);
  if (headerOnly) {
    if (!verifyDelivery(provider, headers, NO_BODY, credentials)) {
      const again = await reloadedCredentials();
      if (again === undefined || !verifyDelivery(provider, headers, NO_BODY, again)) throw refused();
    }
    // Verified by its headers: a full backlog refuses it before its body is read.
    await refuseFullBacklog();
  }
  // GitHub's and Bitbucket's signatures need the whole body. A signature header that cannot match
  // is refused first (Bitbucket without X-Event-Key: the body says whether it is an unsigned ping).
  else if (!signatureWellFormed(headers[SIGNATURE_HEADER[provider]!]) && !(provider === 'bitbucket' && headers['x-event-key'] === undefined)) throw refused();
  // The body is read from the unverified budget (bounded in all, and per sender address), given back
  // once it is verified or refused.
  const source = sourceOf((c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.socket?.remoteAddress);
  let held = 0;
  const hold = (bytes: number) => caches.unverified.reserve(source, bytes) && (held += bytes) >= 0;
  const release = () => {
    caches.unverified.release(source, held);
    held = 0;
  };
  // Verified bytes in flight (Caches.held), under the key of the delivery's connection, known before its body is read.
  const heldKey = connectionId ?? provider;
  // A connection's own hook whose credential signs the body only: its body's digest is kept (BODY_DIGEST_PROVIDERS).
  const digested = connectionId !== undefined && BODY_DIGEST_PROVIDERS.has(provider);
  let heldBytes = 0;
  const holdVerified = (bytes: number): boolean => {
    if (!caches.held.reserve(heldKey, bytes)) return false;
    heldBytes += bytes;
    return true;
  };
  places.push(() => caches.held.release(heldKey, heldBytes));
  const maxEventsBytes = 2 * deps.webhooks.maxBodyBytes;
  // A small body stays here (its digest is computed once it is stored); a large one moves to a thread.
  let loopBody: Uint8Array | undefined;
  /**
   * The body's step (api/webhooks/delivery-body.ts): on the event loop for a small body, on one of
   * the receivers' threads for a large one, so its decoding and parsing never hold up the other
   * deliveries being answered. A full pool or a thread that ended is not the delivery's fault: 503
   * with Retry-After, deliver it again.
   */
  const bodyStep = async (body: Uint8Array, candidates: DeliveryCredential[] | undefined): Promise<BodyOutcome> => {
    const job = { provider, headers, credentials: candidates, maxEventsBytes };
    if (body.byteLength < caches.threadBodyBytes) {
      loopBody = body;
      // Verified, the body's bytes move from the unverified budget to the verified one.
      return readDeliveryBody({ ...job, body, bodyDigest: false, serialize: false }, () => {
        release();
        return holdVerified(body.byteLength);
      });
    }
    // Only a verified body takes a place on the threads: the signature is checked here, one HMAC
    // over the bytes per candidate (~2 ms/MiB), so a sender without the credential (a forged body,
    // another organization's `?c=`) is answered 401 at once and never queues ahead of, or crowds
    // out, a signed delivery. A Bitbucket body without X-Event-Key that does not match is refused
    // without reading it for an unsigned ping (Bitbucket's ping carries the header and is small).
    if (candidates) {
      if (!verifyDelivery(provider, headers, body, candidates)) return { kind: 'refused', body };
      release();
      if (!holdVerified(body.byteLength)) return { kind: 'busy' };
    }
    const owned = ownBuffer(body);
    // One organization's deliveries (GitHub App's and legacy hooks': the provider's, the installation being in the body) are one key of the pool's round robin.
    const key = named === undefined ? provider : `organization:${named.connection!.organizationId}`;
    try {
      const { result, release: free } = await caches.bodies.runHeld(key, { provider, headers, maxEventsBytes, maxParseCost: maxParseCost(deps.webhooks.maxBodyBytes), body: owned, bodyDigest: digested, serialize: true }, [owned.buffer as ArrayBuffer]);
      places.push(free);
      return result;
    } catch (error) {
      if (error instanceof PoolBusy) {
        throw serviceUnavailable('too many large webhook bodies are being read at once; deliver it again', BUSY_RETRY_AFTER_SECONDS);
      }
      if (error instanceof PoolJobTimedOut) {
        // Its thread was ended and replaced (api/webhooks/body-thread.ts: bodyThreadDeadlineMs).
        deps.logger.error({ err: error, provider, connectionId, bytes: body.byteLength }, 'a webhook body ran past its thread deadline: the thread was ended, answered 503');
        throw serviceUnavailable('the delivery could not be read in time now; deliver it again', BUSY_RETRY_AFTER_SECONDS);
      }
      if (error instanceof PoolThreadFailed) {
        deps.logger.error({ err: error, provider, connectionId, bytes: body.byteLength }, 'the thread reading a webhook body ended: answered 503');
        throw serviceUnavailable('the delivery could not be read now; deliver it again', BUSY_RETRY_AFTER_SECONDS);
      }
      // The body's step threw on its thread what it would have thrown here: a 500, as it was.
      throw error;
    }
  };
  let read: BodyOutcome;
  try {
    const body = await readBody(c, headers, deps.webhooks.maxBodyBytes, headerOnly ? holdVerified : hold, headerOnly ? heldBusy : busy);
    read = await bodyStep(body, headerOnly ? undefined : credentials);
    if (read.kind === 'refused') {
      const again = await reloadedCredentials();
      if (again !== undefined) read = await bodyStep(read.body, again);
    }
  } finally {
    release();
  }
  if (read.kind === 'refused') throw refused();
  if (read.kind === 'busy') throw heldBusy();
  if (read.kind === 'pong') return pong();
  // Bitbucket's signature covers the body: verified only now.
  if (!headerOnly) await refuseFullBacklog();
  if (read.kind === 'invalid') throw badRequest(read.message);
  // JSON built to be costly once parsed (lib/parse-cost.ts): sent again it costs the same, so 413, not parsed, nothing stored.
  if (read.kind === 'tooCostly') {
    const limit = maxParseCost(deps.webhooks.maxBodyBytes);
    deps.logger.warn({ provider, connectionId, cost: read.cost, limit }, "a webhook body's JSON would take more heap to parse than the bound: answered 413, not parsed");
    throw new Problem(413, 'Content Too Large', `the body is too costly to parse: its JSON would take more than ${limit} bytes of heap once parsed (${PARSE_COST_PER_BODY_BYTE} times webhooks.maxBodyBytes)`);
  }
  const received = read;
  const { delivery } = received;
  const { instanceUrl, installationId, overlong } = delivery;
  const overSizeLimit = (deliveryId: string | undefined, count: number | undefined) => {
    deps.logger.warn({ provider, deliveryId, events: count, limit: 2 * deps.webhooks.maxBodyBytes }, 'a delivery whose events are over the size limit (twice webhooks.maxBodyBytes of UTF-8 JSON): not acted on');
    outcome('ignored');
    return c.json({ status: 'ignored' as const, reason: 'events over the size limit' }, 200);
  };
  // Told while normalizing, before the events were made (api/webhooks/normalize.ts, boundRefChanges).
  if (delivery.overLimit) return overSizeLimit(undefined, undefined);
  if (overlong) c.var.deps.logger.warn({ provider, overlong }, 'events naming a branch, tag or repository over the length limits: not acted on');
  if (delivery.events === 0) {
    outcome('ignored');
    return c.json({ status: 'ignored' as const, reason: overlong ? 'names over the length limits' : 'event kind not handled' }, 200);
  }

  const deliveryId = delivery.deliveryId!;
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
    // refused. Measured after the lookup on the event loop: a delivery for no attached repository
    // never pays it there (a large body's thread has measured them already).
    const eventsJson = received.events ? serializeEvents(received.events, maxEventsBytes) : (delivery.eventsJson ?? undefined);
    if (eventsJson === undefined) return overSizeLimit(deliveryId, delivery.events);
    // Held until answered: the string (a byte a character when ASCII) and pg's copy while it is sent.
    if (!holdVerified(2 * eventsJson.length)) throw heldBusy();
    // Store first: once the row is written the delivery is acknowledged, and the intake relay
    // (api/intake-relay.ts) starts its run, so a Temporal outage never turns into a failed delivery.
    const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
    const insert = () => storeDelivery(deps.db, {
      provider,
      deliveryId,
      connectionId,
      eventsJson,
      installationId,
      instanceUrl,
      start: {
        taskQueue: deps.taskQueue,
        summary: delivery.summary,
        ...(connectionId ? { connectionId } : {}),
        ...(digested ? { bodyDigest: received.bodyDigest ?? createHash('sha256').update(loopBody!).digest('hex') } : {}),
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
    if (stored) {
      deps.intake.stored();
      if (organizationId !== undefined) caches.backlog.stored(organizationId, eventsJson.length);
    }
  } catch (error) {
    if (error instanceof Problem) throw error;
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
    // A statement or lock deadline (database.statementTimeoutSeconds, lockTimeoutSeconds: 57014,
    // 55P03) or one of the client's (connect, read) is the same: PostgreSQL busy or not answering.
    deps.logger.error({ reason: (error as Error).message, sqlState, provider, deliveryId }, 'could not store the delivery');
    throw serviceUnavailable(databaseBusy(error) ? 'the database is busy or did not answer in time; deliver it again' : 'the delivery could not be stored durably; deliver it again', DATABASE_RETRY_AFTER_SECONDS);
  }
  // A redelivery finds its row already there: acknowledged the same way, nothing new stored or started.
  deps.ackTrace?.answered((c.env as { incoming?: IncomingMessage } | undefined)?.incoming, deliveryId);
  return c.json({ status: 'accepted' as const, workflowId, events: delivery.events }, 202);
}

/** A delivery received and counted: its outcome (what was acted on, or the error status) and how long its answer took. */
async function counted(metrics: ApiMetrics, c: Context<AppEnv>, caches: Caches, provider: Provider) {
  const started = performance.now();
  let outcome: WebhookOutcome = '500';
  try {
    return await receive(c, caches, provider, (o) => (outcome = o));
  } catch (error) {
    const status = (error as { status?: unknown }).status;
    outcome =
      error instanceof Problem && error.extra.bound !== undefined
        ? 'backlogFull'
        : status === 400 || status === 401 || status === 413 || status === 503
          ? (String(status) as WebhookOutcome)
          : typeof status === 'number' && status >= 400 && status < 500
            ? '400'
            : '500';
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
  /** Where a backlog measure that failed in the background is reported. */
  logger?: Pick<Logger, 'warn'>;
  maxBodyBytes: number;
  unverifiedBodyBytes?: number;
  /** Bytes verified deliveries hold in flight at once (heldBudgetSizes' default). */
  verifiedDeliveryBytes?: number;
  attachedCacheSeconds?: number;
  credentialCacheSeconds?: number;
  /** Bodies of at least this many bytes are read on a thread (default webhooks.threadBodyBytes'). */
  threadBodyBytes?: number;
  /** Threads large bodies are read on (default 1). */
  bodyThreads?: number;
  /** An organization's deliveries stored and not started yet at which its connections' deliveries are answered 503 (webhooks.maxBacklogDeliveries, maxBacklogBytes). */
  maxBacklogDeliveries?: number;
  maxBacklogBytes?: number;
  /** The pool of those threads, made by the caller (who closes it); by default the receivers make one of bodyThreads. */
  bodyPool?: BodyPool;
  metrics?: ApiMetrics;
}) {
  const app = new OpenAPIHono<AppEnv>();
  const caches: Caches = {
    unverified: createByteBudget(unverifiedBudgetSizes(options.maxBodyBytes, options.unverifiedBodyBytes)),
    held: createByteBudget(heldBudgetSizes(options.maxBodyBytes, options.verifiedDeliveryBytes)),
    attached: createAttachedCache(options.attachedCacheSeconds === undefined ? {} : { ttlMs: options.attachedCacheSeconds * 1000 }),
    credentials: createCredentialCache({ db: options.db, keys: options.keys, ...(options.credentialCacheSeconds === undefined ? {} : { ttlMs: options.credentialCacheSeconds * 1000 }) }),
    bodies: options.bodyPool ?? createBodyPool(bodyPoolSizes(options.bodyThreads, options.maxBodyBytes)),
    threadBodyBytes: options.threadBodyBytes ?? WEBHOOK_THREAD_BODY_BYTES_DEFAULT,
    backlog: createBacklogBound({
      db: options.db,
      maxDeliveries: options.maxBacklogDeliveries ?? MAX_BACKLOG_DELIVERIES_DEFAULT,
      maxBytes: options.maxBacklogBytes ?? MAX_BACKLOG_BYTES_DEFAULT,
      onMeasureError: (organizationId, error) =>
        options.logger?.warn({ reason: (error as Error).message, organizationId }, "could not measure the organization's intake backlog: its deliveries are judged by the last measure until one succeeds"),
    }),
  };
  options.metrics?.unverifiedBodies(caches.unverified.held);
  options.metrics?.verifiedDeliveries(caches.held.held);
  options.metrics?.bodyThreadJobs(caches.bodies.size);
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
          413: problemResponse('The body is over the size limit, or its JSON would take more heap to parse than the bound derived from the size limit'),
          503: problemResponse("The database is unavailable or busy (past a connect, statement or lock deadline), the connection's credentials cannot be read, too many unverified or large bodies are being read at once, too many bytes of verified deliveries (in all or of the connection) are in flight, a large body's thread ended or ran past its deadline, or the organization's deliveries stored and not started yet are at webhooks.maxBacklogDeliveries or maxBacklogBytes (`bound`, `limit`; nothing stored) (Retry-After); the provider should deliver it again"),
        },
      }),
      (c) => (options.metrics ? counted(options.metrics, c, caches, provider) : receive(c, caches, provider, () => {})),
    );
  }
  return app;
}

const withTraceparent = (traceparent: string | undefined) => (traceparent ? { traceparent } : {});
