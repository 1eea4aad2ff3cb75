import type { Context, MiddlewareHandler } from 'hono';
import { hashApiToken, safeEqual } from '../lib/crypto.ts';
import { useApiToken } from '../lib/db/repositories/api-tokens.ts';
import { findOrganization } from '../lib/db/repositories/organizations.ts';
import type { Organization } from '../lib/db/schema.ts';
import type { AppEnv } from './context.ts';
import { DATABASE_RETRY_AFTER_SECONDS, notFound, Problem, serviceUnavailable } from './problem.ts';

const unauthorized = (detail: string) => new Problem(401, 'Unauthorized', detail);

/**
 * Bearer auth: the admin token (break glass) or an organization token (stored as its SHA-256; an
 * expired or revoked one is refused). When the database cannot say, the answer is 503, never 401:
 * the token may well be valid.
 */
export const requireAuth: MiddlewareHandler<AppEnv> = async (c, next) => {
  const header = c.req.header('authorization');
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  if (!match) throw unauthorized('send Authorization: Bearer <token>');
  const token = match[1]!;
  const { deps } = c.var;
  if (safeEqual(token, deps.adminToken)) {
    c.set('principal', { kind: 'admin' });
  } else {
    let found;
    try {
      found = await useApiToken(deps.db, hashApiToken(token));
    } catch (error) {
      deps.logger.error({ err: error, path: c.req.path }, 'could not check an organization token');
      throw serviceUnavailable('the token could not be checked (database unavailable); try again', DATABASE_RETRY_AFTER_SECONDS);
    }
    if (!found) throw unauthorized('the token is not valid (unknown, revoked or expired)');
    c.set('principal', { kind: 'organization', organizationId: found.organizationId });
  }
  await next();
};

/** Whether an Authorization header carries the admin token (for routes anyone may call that show the admin more). */
export function isAdminRequest(header: string | undefined, adminToken: string): boolean {
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match !== null && match !== undefined && safeEqual(match[1]!, adminToken);
}

export function requireAdmin(c: Context<AppEnv>): void {
  if (c.var.principal.kind !== 'admin') throw new Problem(403, 'Forbidden', 'this operation needs the admin token');
}

/** The organization named in the path, if the caller may see it; otherwise 404 (never reveal existence). */
export async function resolveOrganization(c: Context<AppEnv>, ref: string): Promise<Organization> {
  return visibleOrganization(c, ref, await findOrganization(c.var.deps.db, ref));
}

/** `org`, found by the path's `ref`, if there is one and the caller may see it; otherwise 404 (never reveal existence). */
export function visibleOrganization(c: Context<AppEnv>, ref: string, org: Organization | undefined): Organization {
  if (!org || !mayAccessOrganization(c, org.id)) throw notFound(`organization ${ref}`);
  return org;
}

export function mayAccessOrganization(c: Context<AppEnv>, organizationId: string): boolean {
  const principal = c.var.principal;
  return principal.kind === 'admin' || principal.organizationId === organizationId;
}
