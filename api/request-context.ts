import { randomUUID } from 'node:crypto';
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
    await withLogContext({ requestId }, next);
    c.header(REQUEST_ID_HEADER, requestId);
    if (accessLogLevel !== 'silent' && logger.isLevelEnabled(accessLogLevel)) {
      const durationMs = Math.round((performance.now() - started) * 100) / 100;
      withLogContext({ requestId }, () =>
        logger[accessLogLevel]({ method: c.req.method, path: c.req.path, route: routePath(c, -1), status: c.res.status, durationMs }, 'request'),
      );
    }
  };
}
