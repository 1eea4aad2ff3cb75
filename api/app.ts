import { STATUS_CODES } from 'node:http';
import { OpenAPIHono } from '@hono/zod-openapi';
import { isGrpcServiceError } from '@temporalio/client';
import type { Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { routePath } from 'hono/route';
import { sql } from 'kysely';
import { databaseBusy, databaseUnavailable, sqlStateOf } from '../lib/db/errors.ts';
import { intakeBacklog, type IntakeBacklog } from '../lib/db/repositories/deliveries.ts';
import { isAdminRequest, requireAuth } from './auth.ts';
import type { ApiDeps, AppEnv } from './context.ts';
import { DATABASE_RETRY_AFTER_SECONDS, HOST_LOOKUP_RETRY_AFTER_SECONDS, Problem, problemJson, serviceUnavailable, TEMPORAL_RETRY_AFTER_SECONDS } from './problem.ts';
import { requestContext, traceRequests } from './request-context.ts';
import { withinTemporalDeadline } from './temporal-deadline.ts';
import { readUnreadBody } from './unread-body.ts';
import { attachmentRoutes } from './routes/attachments.ts';
import { connectionRoutes, githubSetupRoutes } from './routes/connections.ts';
import { repositoryPickerRoutes } from './routes/repository-picker.ts';
import { eventRoutes } from './routes/events.ts';
import { organizationRoutes } from './routes/organizations.ts';
import { subscriberRoutes } from './routes/subscribers.ts';
import { webhookRoutes } from './routes/webhooks.ts';
import { workflowRoutes } from './routes/workflows.ts';
import { API_MAX_BODY_BYTES_DEFAULT } from '../lib/config.ts';
import { HostLookupFailedError } from '../lib/dns.ts';

/** api.maxBodyBytes' default (lib/config.ts). */
export const API_MAX_BODY_BYTES = API_MAX_BODY_BYTES_DEFAULT;

export function createApp(deps: ApiDeps) {
  const app = new OpenAPIHono<AppEnv>({
    defaultHook: (result, c) => {
      if (!result.success) {
        const detail = result.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ');
        return problemJson(c, new Problem(400, 'Bad Request', detail));
      }
    },
  });

  // An answer waits for the rest of a body it was made without (api/unread-body.ts); outermost, so
  // that wait is not counted as the request's handling in the metrics and the trace.
  app.use('*', readUnreadBody(deps.webhooks.maxBodyBytes));
  if (deps.tracing) app.use('*', traceRequests());
  const { metrics } = deps;
  if (metrics) {
    app.use('*', async (c, next) => {
      const started = performance.now();
      try {
        await next();
      } finally {
        metrics.httpRequest(HTTP_METHODS.has(c.req.method) ? c.req.method : 'other', routeTemplate(c), c.res.status, (performance.now() - started) / 1000);
      }
    });
  }

  app.use('*', requestContext(deps));
  app.use('*', async (c, next) => {
    c.set('deps', deps);
    // PostgreSQL text cannot hold a NUL: a path or query parameter with one is refused here, not by the database.
    if (c.req.url.includes('%00')) return problemJson(c, new Problem(400, 'Bad Request', 'the URL holds a NUL character (%00)'));
    await next();
  });

  app.onError((error, c) => {
    if (error instanceof Problem) return problemJson(c, error);
    const status = (error as { status?: number }).status;
    // Hono's own errors (e.g. a body that is not JSON) carry a 4xx status: they are the client's, titled by that status.
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const detail = status === 415 ? `the body must be application/json, not ${c.req.header('content-type')?.slice(0, 100) || 'untyped'}` : error.message || 'invalid request';
      return problemJson(c, new Problem(status as 400, STATUS_CODES[status] ?? 'Client Error', detail));
    }
    if (databaseUnavailable(error)) {
      // The error holds the pg client (its connection parameters): only its message and SQLSTATE are logged.
      deps.logger.error({ reason: error.message, sqlState: sqlStateOf(error), path: c.req.path, method: c.req.method }, 'the database did not answer');
      return problemJson(c, serviceUnavailable(databaseBusy(error) ? 'the database is busy or did not answer in time; try again' : 'the database is unavailable; try again', DATABASE_RETRY_AFTER_SECONDS));
    }
    if (error instanceof HostLookupFailedError) {
      // The host's DNS servers failed (SERVFAIL, REFUSED, …) or did not answer within
      // security.dnsTimeoutSeconds: no answer about the name, so the client may try again. The log
      // has the name whose servers failed (a search domain's, perhaps), which the detail leaves out.
      deps.logger.warn({ host: error.host, code: error.code, asked: error.candidate, path: c.req.path, method: c.req.method }, 'a host lookup failed at the DNS servers');
      return problemJson(c, serviceUnavailable(error.message, HOST_LOOKUP_RETRY_AFTER_SECONDS));
    }
    if (isTemporalUnavailable(error)) {
      deps.logger.error({ err: error, path: c.req.path, method: c.req.method }, 'Temporal did not answer');
      return problemJson(c, serviceUnavailable('the workflow engine (Temporal) is unavailable; try again', TEMPORAL_RETRY_AFTER_SECONDS));
    }
    deps.logger.error({ err: error, path: c.req.path, method: c.req.method }, 'unhandled error');
    return problemJson(c, new Problem(500, 'Internal Server Error', 'an unexpected error occurred; it has been logged'));
  });
  app.notFound((c) => problemJson(c, new Problem(404, 'Not Found', `no route for ${c.req.method} ${c.req.path}`)));

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  // Not behind organization auth: for the Prometheus scraper (give them a port of their own, metrics.api.port, to keep them off a public Ingress).
  if (metrics && deps.metricsPath) {
    const { registry } = metrics;
    app.get(deps.metricsPath, async (c) => c.body(await registry.metrics(), 200, { 'content-type': registry.contentType }));
  }
  app.get('/readyz', async (c) => {
    if (deps.draining?.()) return c.json({ status: 'draining', checks: {} }, 503);
    // Anyone may ask, so anyone gets the verdict only: the error text (addresses, user names) and
    // the intake backlog are for the admin token (break glass), and go to the log as well.
    const admin = isAdminRequest(c.req.header('authorization'), deps.adminToken);
    const errors: Record<string, string> = {};
    const check = (name: string, probe: Promise<unknown>) =>
      probe.then(
        () => 'ok',
        (error: Error) => {
          deps.logger.warn({ err: error, dependency: name }, 'readiness check failed');
          errors[name] = error.message.slice(0, 300);
          return 'unavailable';
        },
      );
    const checks = {
      database: await check('database', sql`select 1`.execute(deps.db)),
      temporal: await check('temporal', withinTemporalDeadline(deps, () => deps.temporal.connection.workflowService.getSystemInfo({}))),
    };
    // A backlog does not make the process unready: taking it out of the load balancer would only
    // turn acknowledged deliveries into refused ones. It is shown, not judged.
    const ready = Object.values(checks).every((v) => v === 'ok');
    const body = { status: ready ? 'ready' : 'not ready', checks };
    if (!admin) return c.json(body, ready ? 200 : 503);
    const intake = checks.database === 'ok' ? await intakeBacklog(deps.db).then(backlogDetails, (error: Error) => ((errors.intake = error.message.slice(0, 300)), 'unavailable' as const)) : 'unavailable';
    return c.json({ ...body, details: { intake, taskQueue: deps.taskQueue, ...(Object.keys(errors).length ? { errors } : {}) } }, ready ? 200 : 503);
  });

  // GitHub sends the installing user's browser here: authorized by the signed state, not a bearer token.
  app.route('/api/github', githubSetupRoutes());
  // Providers deliver here: authorized by the delivery's signature / token, not a bearer token.
  app.route('/api/events-handler/v1/events', webhookRoutes({ db: deps.db, keys: deps.keys, logger: deps.logger, maxBodyBytes: deps.webhooks.maxBodyBytes, ...(deps.webhooks.unverifiedBodyBytes === undefined ? {} : { unverifiedBodyBytes: deps.webhooks.unverifiedBodyBytes }), ...(deps.webhooks.verifiedDeliveryBytes === undefined ? {} : { verifiedDeliveryBytes: deps.webhooks.verifiedDeliveryBytes }), attachedCacheSeconds: deps.webhooks.attachedCacheSeconds, credentialCacheSeconds: deps.webhooks.credentialCacheSeconds, ...(deps.webhooks.maxBacklogDeliveries === undefined ? {} : { maxBacklogDeliveries: deps.webhooks.maxBacklogDeliveries }), ...(deps.webhooks.maxBacklogBytes === undefined ? {} : { maxBacklogBytes: deps.webhooks.maxBacklogBytes }), ...(deps.webhooks.threadBodyBytes === undefined ? {} : { threadBodyBytes: deps.webhooks.threadBodyBytes }), ...(deps.webhooks.bodyThreads === undefined ? {} : { bodyThreads: deps.webhooks.bodyThreads }), ...(deps.webhooks.bodyPool ? { bodyPool: deps.webhooks.bodyPool } : {}), metrics }));

  // Every authenticated route takes small JSON: a larger body is refused before it is buffered,
  // parsed or even authenticated (a declared Content-Length from the headers, a chunked one as it counts past).
  const maxBodyBytes = deps.maxBodyBytes ?? API_MAX_BODY_BYTES;
  const tooLarge = (c: Context) => problemJson(c, new Problem(413, 'Content Too Large', `the request body is over ${maxBodyBytes} bytes, the most this API reads`, 'about:blank', { limit: maxBodyBytes }));
  const countedBody = bodyLimit({ maxSize: maxBodyBytes, onError: tooLarge });
  app.use('/api/v1/*', (c, next) => {
    // Declared over it: answered from the headers without opening the body's stream, so the rest is
    // read and thrown away (api/unread-body.ts) and the connection stays usable.
    const declared = c.req.header('content-length');
    if (declared !== undefined && !c.req.header('transfer-encoding') && !(Number(declared) <= maxBodyBytes)) return Promise.resolve(tooLarge(c));
    return countedBody(c, next);
  });
  app.use('/api/v1/*', requireAuth);
  app.route('/api/v1/orgs', organizationRoutes());
  app.route('/api/v1/orgs', connectionRoutes());
  app.route('/api/v1/orgs', attachmentRoutes());
  app.route('/api/v1/orgs', repositoryPickerRoutes());
  app.route('/api/v1/orgs', eventRoutes());
  app.route('/api/v1/orgs', subscriberRoutes());
  app.route('/api/v1/workflows', workflowRoutes());

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer' });
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: { title: 'forgelink', version: '0.1.0', description: 'Connects organizations to their Git providers.' },
    security: [{ bearer: [] }],
  });
  return app;
}

const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/**
 * The route template that answered (`/api/v1/orgs/:org/connections/:id`), never the raw path, so
 * no tenant's ids become label values; a request no route matched (only wildcard middleware did) is `unmatched`.
 */
function routeTemplate(c: Context): string {
  const path = routePath(c, -1);
  return !path || path.endsWith('*') ? 'unmatched' : path;
}

/** gRPC statuses by which Temporal did not answer (down, restarting, overloaded, too slow, or the channel closed under the call), not refused. */
const TEMPORAL_UNANSWERED = new Set([1 /* CANCELLED */, 4 /* DEADLINE_EXCEEDED */, 8 /* RESOURCE_EXHAUSTED */, 14 /* UNAVAILABLE */]);

/**
 * Temporal could not be reached behind a request: the client's ServiceError ("Failed to describe
 * workflow") wraps the gRPC error, whose status says so; a connection that never came up fails with
 * "Failed to connect…" and no status; the request's deadline (api/temporal-deadline.ts) passing is
 * DEADLINE_EXCEEDED. A failing dependency, so 503, for every route that calls Temporal.
 */
function isTemporalUnavailable(error: Error): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (isGrpcServiceError(e)) return TEMPORAL_UNANSWERED.has(e.code);
    if (/^Failed to connect\b/.test(e.message)) return true;
  }
  return false;
}

/** The backlog as /readyz shows it to the admin, its times in ISO form. */
function backlogDetails(backlog: IntakeBacklog) {
  const { oldestReceivedAt, oldestFailure, ...rest } = backlog;
  return {
    ...rest,
    ...(oldestReceivedAt ? { oldestReceivedAt: oldestReceivedAt.toISOString() } : {}),
    ...(oldestFailure ? { oldestFailure: { ...oldestFailure, ...(oldestFailure.nextAttemptAt ? { nextAttemptAt: oldestFailure.nextAttemptAt.toISOString() } : {}) } } : {}),
  };
}
