import { randomUUID } from 'node:crypto';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { seal } from '../../lib/crypto.ts';
import { findConnection, insertConnection, listConnections, type PublicConnection } from '../../lib/db/repositories/connections.ts';
import { CONNECTION_STATUSES, PROVIDERS } from '../../lib/domain.ts';
import { normalizeProviderUrl, UnsafeUrlError } from '../../lib/url.ts';
import { GITLAB_DEFAULT_BASE_URL } from '../../activities/providers/gitlab.ts';
import { SA_CONNECTION, SA_ORGANIZATION, SA_PROVIDER, workflowIds } from '../../workflows/contract.ts';
import { resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { badRequest, notFound, Problem, problemResponse } from '../problem.ts';
import { startWorkflow } from '../start-workflow.ts';

const ConnectionSchema = z
  .object({
    id: z.uuid(),
    provider: z.enum(PROVIDERS),
    baseUrl: z.string(),
    status: z.enum(CONNECTION_STATUSES),
    reason: z.string().optional(),
    account: z.string().optional(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Connection');

const GitlabConnect = z.object({
  provider: z.literal('gitlab'),
  baseUrl: z.string().optional().openapi({ description: 'GitLab instance URL; default https://gitlab.com' }),
  token: z.string().min(1).max(1024).openapi({ description: 'Personal access token with api, read_user, read_repository' }),
});
const ConnectBody = z.discriminatedUnion('provider', [GitlabConnect]).openapi('ConnectRequest');

const OrgParam = z.object({ org: z.string().min(1) });
const ConnParam = OrgParam.extend({ id: z.uuid() });

function toApi(row: PublicConnection) {
  return {
    id: row.id,
    provider: row.provider,
    baseUrl: row.base_url,
    status: row.status,
    ...(row.reason ? { reason: row.reason } : {}),
    ...(row.account ? { account: row.account } : {}),
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

const errors = {
  400: problemResponse('Invalid request'),
  401: problemResponse('Missing or bad token'),
  404: problemResponse('No such organization or connection'),
};

export function connectionRoutes() {
  const app = new OpenAPIHono<AppEnv>();

  app.openapi(
    createRoute({
      method: 'post',
      path: '/{org}/connections',
      summary: 'Connect a provider; validation runs in the connect workflow',
      request: { params: OrgParam, body: { required: true, content: { 'application/json': { schema: ConnectBody } } } },
      responses: {
        202: {
          description: 'Accepted',
          content: { 'application/json': { schema: z.object({ id: z.uuid(), status: z.literal('pending'), workflowId: z.string() }) } },
        },
        409: problemResponse('Already connected'),
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const body = c.req.valid('json');
      let baseUrl: string;
      try {
        baseUrl = await normalizeProviderUrl(body.baseUrl ?? GITLAB_DEFAULT_BASE_URL, {
          allowHttpHosts: deps.allowHttpHosts,
          resolve: deps.resolveHost,
        });
      } catch (error) {
        if (error instanceof UnsafeUrlError) throw badRequest(`baseUrl: ${error.message}`);
        throw error;
      }
      const id = randomUUID();
      await insertConnection(deps.db, {
        id,
        organization_id: org.id,
        provider: body.provider,
        base_url: baseUrl,
        external_key: null,
        pending_credential: seal(deps.keys, body.token, id),
        status: 'pending',
      });
      const workflowId = workflowIds.connect(org.id, id);
      try {
        await startWorkflow(deps, 'connectWorkflow', {
          workflowId,
          input: { organizationId: org.id, connectionId: id },
          searchAttributes: [
            { key: SA_ORGANIZATION, value: org.id },
            { key: SA_PROVIDER, value: body.provider },
            { key: SA_CONNECTION, value: id },
          ],
        });
      } catch (error) {
        // Nothing half-written: without a workflow the pending row would never leave `pending`.
        await deps.db.deleteFrom('connections').where('id', '=', id).execute();
        deps.logger.error({ err: error, workflowId }, 'could not start the connect workflow');
        throw new Problem(503, 'Service Unavailable', 'the workflow engine is not reachable; nothing was stored, try again');
      }
      return c.json({ id, status: 'pending' as const, workflowId }, 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/connections',
      summary: "List the organization's connections (never shows a credential)",
      request: { params: OrgParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(ConnectionSchema) }) } } }, ...errors },
    }),
    async (c) => {
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const rows = await listConnections(c.var.deps.db, org.id);
      return c.json({ items: rows.map(toApi) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/connections/{id}',
      summary: 'One connection',
      request: { params: ConnParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: ConnectionSchema } } }, ...errors },
    }),
    async (c) => {
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      const row = await findConnection(c.var.deps.db, org.id, params.id);
      if (!row) throw notFound(`connection ${params.id}`);
      return c.json(toApi(row), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/{org}/connections/{id}',
      summary: 'Disconnect: detaches every repository, then deletes the credential',
      request: { params: ConnParam },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: z.object({ workflowId: z.string() }) } } },
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      const row = await findConnection(deps.db, org.id, params.id);
      if (!row) throw notFound(`connection ${params.id}`);
      const workflowId = workflowIds.disconnect(org.id, row.id);
      await startWorkflow(deps, 'disconnectWorkflow', {
        workflowId,
        input: { organizationId: org.id, connectionId: row.id },
        searchAttributes: [
          { key: SA_ORGANIZATION, value: org.id },
          { key: SA_PROVIDER, value: row.provider },
          { key: SA_CONNECTION, value: row.id },
        ],
      });
      return c.json({ workflowId }, 202);
    },
  );

  return app;
}
