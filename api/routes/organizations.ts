import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { generateApiToken, hashApiToken } from '../../lib/crypto.ts';
import { createOrganization, insertApiToken } from '../../lib/db/repositories/organizations.ts';
import { requireAdmin, resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { Problem, problemResponse } from '../problem.ts';

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
            slug: z.string().regex(/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/, 'lower-case letters, digits and inner hyphens, at most 63'),
            name: z.string().trim().min(1).max(200),
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

const issueTokenRoute = createRoute({
  method: 'post',
  path: '/{org}/tokens',
  summary: 'Issue an organization token (admin); the token is shown once',
  request: { params: OrgParam },
  responses: {
    201: { description: 'Issued', content: { 'application/json': { schema: z.object({ token: z.string() }) } } },
    401: problemResponse('Missing or bad token'),
    403: problemResponse('Not the admin token'),
    404: problemResponse('No such organization'),
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
    const token = generateApiToken();
    await insertApiToken(c.var.deps.db, org.id, hashApiToken(token));
    return c.json({ token }, 201);
  });
  return app;
}
