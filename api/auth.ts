import type { Context, MiddlewareHandler } from 'hono';
import { hashApiToken, safeEqual } from '../lib/crypto.ts';
import { findOrganization, findOrganizationIdByTokenHash } from '../lib/db/repositories/organizations.ts';
import type { Organization } from '../lib/db/schema.ts';
import type { AppEnv } from './context.ts';
import { notFound, Problem } from './problem.ts';

const unauthorized = (detail: string) => new Problem(401, 'Unauthorized', detail);

/** Bearer auth: the admin token (break glass) or an organization token (stored as its SHA-256). */
export const requireAuth: MiddlewareHandler<AppEnv> = async (c, next) => {
  const header = c.req.header('authorization');
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  if (!match) throw unauthorized('send Authorization: Bearer <token>');
  const token = match[1]!;
  const { deps } = c.var;
  if (safeEqual(token, deps.adminToken)) {
    c.set('principal', { kind: 'admin' });
  } else {
    const organizationId = await findOrganizationIdByTokenHash(deps.db, hashApiToken(token));
    if (!organizationId) throw unauthorized('the token is not valid');
    c.set('principal', { kind: 'organization', organizationId });
  }
  await next();
};

export function requireAdmin(c: Context<AppEnv>): void {
  if (c.var.principal.kind !== 'admin') throw new Problem(403, 'Forbidden', 'this operation needs the admin token');
}

/** The organization named in the path, if the caller may see it; otherwise 404 (never reveal existence). */
export async function resolveOrganization(c: Context<AppEnv>, ref: string): Promise<Organization> {
  const org = await findOrganization(c.var.deps.db, ref);
  const principal = c.var.principal;
  if (!org || (principal.kind === 'organization' && principal.organizationId !== org.id)) throw notFound(`organization ${ref}`);
  return org;
}

export function mayAccessOrganization(c: Context<AppEnv>, organizationId: string): boolean {
  const principal = c.var.principal;
  return principal.kind === 'admin' || principal.organizationId === organizationId;
}
