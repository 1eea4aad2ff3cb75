import { z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { UnsafeUrlError } from '../lib/url.ts';
import type { AppEnv } from './context.ts';

/**
 * RFC 9457 problem details; every error the API answers has this shape. `retryAfterSeconds` is the
 * answer's Retry-After header, which problemJson (the one writer of problem answers) sets from it:
 * a 503 says when to try again where it is made, never in a header set beside it.
 */
export class Problem extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly title: string,
    readonly detail: string,
    readonly type = 'about:blank',
    readonly extra: Record<string, unknown> = {},
    readonly retryAfterSeconds?: number,
  ) {
    super(detail);
  }
}

/** A 503 of a dependency or a bound that is busy or did not answer: the client tries again after `retryAfterSeconds` (Retry-After). */
export const serviceUnavailable = (detail: string, retryAfterSeconds: number) => new Problem(503, 'Service Unavailable', detail, 'about:blank', {}, retryAfterSeconds);

export const ProblemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    requestId: z.string().optional().openapi({ description: 'The request id (X-Request-Id) its log lines carry' }),
  })
  .openapi('Problem');

export const problemResponse = (description: string) => ({
  description,
  content: { 'application/problem+json': { schema: ProblemSchema } },
});

/** The Retry-After of a 503 for a URL whose host name's DNS servers failed or did not answer within security.dnsTimeoutSeconds (app.onError). */
export const HOST_LOOKUP_RETRY_AFTER_SECONDS = 5;

/**
 * The Retry-After of a 503 for a database that did not answer (unreachable, refusing, or past one of
 * the API pool's deadlines: database.*TimeoutSeconds): app.onError, the token check and the receivers.
 */
export const DATABASE_RETRY_AFTER_SECONDS = 5;

/**
 * The Retry-After of a 503 for Temporal that did not answer or did not take the request within
 * temporal.requestDeadlineSeconds (app.onError, the starts of runs, attach/detach signals): every such
 * request is safe to repeat (a start joins the run it began, signals are idempotent).
 */
export const TEMPORAL_RETRY_AFTER_SECONDS = 5;

/** The 503 of a route that looks up a tenant's URL (lib/url.ts), with whatever else answers 503 there (`also`). */
export const hostLookupUnavailableResponse = (also?: string) => ({
  ...problemResponse(
    `${also ? `${also}, or the` : 'The'} URL's host name could not be looked up: its DNS servers failed (SERVFAIL, REFUSED, FORMERR, NOTIMP, none reachable) or did not answer within security.dnsTimeoutSeconds; the detail names the host. That is no answer about the name (a host that does not exist is a 400): try again after Retry-After`,
  ),
  headers: { 'Retry-After': { description: `Seconds to wait before trying again (${HOST_LOOKUP_RETRY_AFTER_SECONDS} for a host lookup)`, schema: { type: 'integer' as const } } },
});

/** The answer of `problem`: its JSON, and its Retry-After when it has one. Every problem the API answers is written here. */
export function problemJson(c: Context, problem: Problem): Response {
  const requestId = c.get('requestId') as string | undefined;
  return c.body(
    JSON.stringify({ type: problem.type, title: problem.title, status: problem.status, detail: problem.detail, ...problem.extra, ...(requestId ? { requestId } : {}) }),
    problem.status,
    { 'content-type': 'application/problem+json', ...(problem.retryAfterSeconds === undefined ? {} : { 'retry-after': String(problem.retryAfterSeconds) }) },
  );
}

export const notFound = (what: string) => new Problem(404, 'Not Found', `${what} does not exist`);
export const badRequest = (detail: string) => new Problem(400, 'Bad Request', detail);

/** A URL lib/url.ts refused, as a 400 naming `field`: the address a name resolved to goes to the log, never into the answer. */
export function unsafeUrl(c: Context<AppEnv>, field: string, error: UnsafeUrlError): Problem {
  if (error.address) c.var.deps.logger.warn({ field, address: error.address, reason: error.message }, 'a URL resolving to a refused address');
  return badRequest(`${field}: ${error.message}`);
}
