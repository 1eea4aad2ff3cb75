import { randomUUID } from 'node:crypto';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { generateApiToken, hashApiToken } from '../../lib/crypto.ts';
import { deleteApiToken, insertApiToken, listApiTokens, type ApiTokenInfo } from '../../lib/db/repositories/api-tokens.ts';
import { createOrganization } from '../../lib/db/repositories/organizations.ts';
import { requireAdmin, resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { notFound, Problem, problemResponse } from '../problem.ts';
import { text } from '../text.ts';

const OrganizationSchema = z.object({ id: z.uuid(), slug: z.string(), name: z.string() }).openapi('Organization');
const OrgParam = z.object({ org: z.string().min(1).openapi({ description: "The organization's slug or id" }) });

const createOrgRoute = createRoute({
  method: 'post',
  path: '/',
  summary: 'Create an organization (admin)',
  request: {
    body: {
      required: true,
      content: {
        'application/json': {
          schema: z.object({
            slug: z
              .string()
              .regex(/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/, 'lower-case letters, digits and inner hyphens, at most 63')
              // Paths take an id where a slug goes: a slug shaped like one could name another organization.
              .refine((slug) => !z.uuid().safeParse(slug).success, 'must not be shaped like a UUID (organizations are also named by id)'),
            name: text().trim().min(1).max(200),
          }),
        },
      },
    },
  },
  responses: {
    201: { description: 'Created', content: { 'application/json': { schema: OrganizationSchema } } },
    400: problemResponse('Invalid body'),
    401: problemResponse('Missing or bad token'),
    403: problemResponse('Not the admin token'),
    409: problemResponse('Slug taken'),
  },
});

const TokenSchema = z
  .object({ id: z.uuid(), name: z.string(), createdAt: z.string(), lastUsedAt: z.string().optional(), expiresAt: z.string().optional() })
  .openapi('ApiToken');

function tokenToApi(t: ApiTokenInfo) {
  return {
    id: t.id,
    name: t.name,
    createdAt: t.createdAt.toISOString(),
    ...(t.lastUsedAt ? { lastUsedAt: t.lastUsedAt.toISOString() } : {}),
    ...(t.expiresAt ? { expiresAt: t.expiresAt.toISOString() } : {}),
  };
}

const DAY_MS = 24 * 60 * 60 * 1000;

const issueTokenRoute = createRoute({
  method: 'post',
  path: '/{org}/tokens',
  summary: 'Issue an organization token (admin); the token is shown once',
  request: {
    params: OrgParam,
    body: {
      required: false,
      content: {
        'application/json': {
          schema: z.object({
            name: text().trim().min(1).max(100).optional().openapi({ description: 'Tells tokens apart in the list; default token-<first 8 characters of its id>' }),
            expiresInDays: z.number().int().min(1).max(3650).optional().openapi({ description: 'Refused (401) from then on; absent: never expires' }),
          }),
        },
      },
    },
  },
  responses: {
    201: {
      description: 'Issued',
      content: { 'application/json': { schema: z.object({ id: z.uuid(), token: z.string(), name: z.string(), expiresAt: z.string().optional() }) } },
    },
    400: problemResponse('Invalid body'),
    401: problemResponse('Missing or bad token'),
    403: problemResponse('Not the admin token'),
    404: problemResponse('No such organization'),
  },
});

const listTokensRoute = createRoute({
  method: 'get',
  path: '/{org}/tokens',
  summary: "The organization's tokens (never the token itself)",
  request: { params: OrgParam },
  responses: {
    200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(TokenSchema) }) } } },
    401: problemResponse('Missing or bad token'),
    404: problemResponse('No such organization'),
  },
});

const revokeTokenRoute = createRoute({
  method: 'delete',
  path: '/{org}/tokens/{id}',
  summary: 'Revoke a token: refused (401) from the next request on',
  request: { params: OrgParam.extend({ id: z.uuid() }) },
  responses: {
    204: { description: 'Revoked' },
    401: problemResponse('Missing or bad token'),
    404: problemResponse('No such organization or token'),
  },
});

export function organizationRoutes() {
  const app = new OpenAPIHono<AppEnv>();
  app.openapi(createOrgRoute, async (c) => {
    requireAdmin(c);
    const body = c.req.valid('json');
    const org = await createOrganization(c.var.deps.db, body);
    if (!org) throw new Problem(409, 'Conflict', `organization slug "${body.slug}" is taken`);
    return c.json({ id: org.id, slug: org.slug, name: org.name }, 201);
  });
  app.openapi(issueTokenRoute, async (c) => {
    requireAdmin(c);
    const org = await resolveOrganization(c, c.req.valid('param').org);
    const body = c.req.valid('json'); // {} without a body: a token with the defaults
    const token = generateApiToken();
    const id = randomUUID();
    const issued = await insertApiToken(c.var.deps.db, {
      id,
      organizationId: org.id,
      tokenHash: hashApiToken(token),
      name: body.name ?? `token-${id.slice(0, 8)}`,
      expiresAt: body.expiresInDays ? new Date(Date.now() + body.expiresInDays * DAY_MS) : null,
    });
    const { createdAt: _c, lastUsedAt: _l, ...shown } = tokenToApi(issued);
    return c.json({ ...shown, token }, 201);
  });
  app.openapi(listTokensRoute, async (c) => {
    const org = await resolveOrganization(c, c.req.valid('param').org);
    return c.json({ items: (await listApiTokens(c.var.deps.db, org.id)).map(tokenToApi) }, 200);
  });
  app.openapi(revokeTokenRoute, async (c) => {
    const params = c.req.valid('param');
    const org = await resolveOrganization(c, params.org);
    if (!(await deleteApiToken(c.var.deps.db, org.id, params.id))) throw notFound(`token ${params.id}`);
    return c.body(null, 204);
  });
  return app;
}
