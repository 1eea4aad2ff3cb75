import { randomUUID } from 'node:crypto';
import { isSpanContextValid, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import type { HttpBindings } from '@hono/node-server';
import type { MiddlewareHandler } from 'hono';
import { routePath } from 'hono/route';
import { withLogContext } from '../lib/logger.ts';
import type { ApiDeps, AppEnv } from './context.ts';

export const REQUEST_ID_HEADER = 'x-request-id';
/** An id a proxy or client sent is kept when it is short and printable ASCII; anything else is replaced. */
const SANE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

export function requestIdFrom(header: string | undefined): string {
  return header !== undefined && SANE_REQUEST_ID.test(header) ? header : randomUUID();
}

/**
 * Gives each request an id (X-Request-Id when sane, else a new one): in the answer's header, in
 * problem+json bodies, and in every log line written while the request is served. Then one access
 * line per request at `accessLogLevel` with the route template, status and duration (never the
 * query string: a setup callback carries an OAuth code there).
 */
export function requestContext({ logger, accessLogLevel = 'info' }: Pick<ApiDeps, 'logger' | 'accessLogLevel'>): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const started = performance.now();
    const requestId = requestIdFrom(c.req.header(REQUEST_ID_HEADER));
    c.set('requestId', requestId);
    trace.getActiveSpan()?.setAttribute('forgelink.request_id', requestId);
    // Under @hono/node-server the header goes on Node's answer itself, which merges it into
    // whatever answer is written (a handler's own Response included). Set through Hono it gives
    // every answer a Fetch Headers object, built, validated and turned back into Node's headers
    // for each request: ~5 % of a webhook acknowledgement's CPU, against none for an answer whose
    // one header, its content type, Hono passes on as a plain object.
    const outgoing = (c.env as Partial<HttpBindings> | undefined)?.outgoing;
    // Elsewhere (app.request) it is set before the answer exists, so the answer is made with it:
    // a header set on a finished answer makes Hono copy it into a full Fetch Response.
    if (outgoing) outgoing.setHeader(REQUEST_ID_HEADER, requestId);
    else c.header(REQUEST_ID_HEADER, requestId);
    await withLogContext({ requestId }, next);
    // A handler that returned a Response of its own (not made through the context) lacks it.
    if (!outgoing && c.res.headers.get(REQUEST_ID_HEADER) !== requestId) c.header(REQUEST_ID_HEADER, requestId);
    if (accessLogLevel !== 'silent' && logger.isLevelEnabled(accessLogLevel)) {
      const durationMs = Math.round((performance.now() - started) * 100) / 100;
      // The id as a field of its own (the line is written outside the request's log context): the
      // same line as one written inside it, without entering it again.
      logger[accessLogLevel]({ requestId, method: c.req.method, path: c.req.path, route: routePath(c, -1), status: c.res.status, durationMs }, 'request');
    }
  };
}

/**
 * With tracing on: a server span per request, the root of its trace (an API caller's W3C traceparent a link to it), named by its
 * route template once routing is done, with the answer's status. Everything the request does (the
 * receipt's stored trace context, workflow starts, provider calls) happens inside it.
 */
const WEBHOOK_PATH_PREFIX = '/api/events-handler/';

export function traceRequests(): MiddlewareHandler<AppEnv> {
  const tracer = trace.getTracer('forgelink-api');
  return (c, next) => {
    // Every request's trace starts here. A caller is not known when the span starts (a webhook's
    // sender before its delivery is verified, an API caller before its token is checked), and a
    // continued traceparent would let anyone choose trace ids in the operators' backend and force
    // sampling: its sampled flag, or a trace id chosen to fall under any ratio (the ratio sampler
    // reads the id's bits). An API caller's own trace is kept as a link, never as the parent;
    // a webhook's is ignored (providers send none).
    const callers = c.req.path.startsWith(WEBHOOK_PATH_PREFIX) ? undefined : trace.getSpanContext(propagation.extract(ROOT_CONTEXT, c.req.header()));
    const attributes = { 'http.request.method': c.req.method, 'url.path': c.req.path };
    const links = callers && isSpanContextValid(callers) ? [{ context: callers }] : [];
    return tracer.startActiveSpan(c.req.method, { kind: SpanKind.SERVER, attributes, links, root: true }, ROOT_CONTEXT, async (span) => {
      try {
        await next();
        const route = routePath(c, -1);
        span.updateName(`${c.req.method} ${route}`);
        span.setAttributes({ 'http.route': route, 'http.response.status_code': c.res.status });
        if (c.res.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      } catch (error) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
    });
  };
}
