import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { sql } from 'kysely';
import { PROVIDERS } from '../../lib/domain.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { runLabels } from '../../workflows/run-labels.ts';
import { resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { decodeCursor, encodeCursor } from '../cursor.ts';
import { problemResponse } from '../problem.ts';
import { startWorkflow } from '../start-workflow.ts';

const RepositorySchema = z
  .object({
    id: z.uuid(),
    connectionId: z.uuid(),
    provider: z.enum(PROVIDERS),
    externalId: z.string(),
    fullName: z.string(),
    project: z.string().optional(),
    defaultBranch: z.string().optional(),
    webUrl: z.string().optional(),
    attached: z.boolean(),
  })
  .openapi('Repository');

const OrgParam = z.object({ org: z.string().min(1) });
const errors = { 400: problemResponse('Invalid request'), 401: problemResponse('Missing or bad token'), 404: problemResponse('No such organization') };


/** The repository picker (served from the cache only) and the on-demand refresh of that cache. */
export function repositoryPickerRoutes() {
  const app = new OpenAPIHono<AppEnv>();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/repositories',
      summary: 'Repositories the organization can reach (the cache), Azure DevOps ones grouped under their project',
      request: {
        params: OrgParam,
        query: z.object({
          connection: z.uuid().optional(),
          q: z.string().max(200).optional().openapi({ description: 'Case-insensitive part of the full name' }),
          cursor: z.string().max(2000).optional(),
          limit: z.coerce.number().int().min(1).max(500).default(100),
        }),
      },
      responses: {
        200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(RepositorySchema), nextCursor: z.string().optional() }) } } },
        ...errors,
      },
    }),
    async (c) => {
      const { db } = c.var.deps;
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const query = c.req.valid('query');
      // (project or '', full name, id) of the previous page's last row.
      const after = query.cursor ? decodeCursor(query.cursor, 3) : undefined;
      const projectKey = sql<string>`coalesce(r.project, '')`;
      const rows = await db
        .selectFrom('repositories as r')
        .leftJoin('attachments as a', 'a.repository_id', 'r.id')
        .select(['r.id', 'r.connection_id', 'r.provider', 'r.external_id', 'r.full_name', 'r.project', 'r.default_branch', 'r.web_url', 'a.status as attachment_status'])
        .select(projectKey.as('project_key'))
        .where('r.organization_id', '=', org.id)
        .where('r.vanished_at', 'is', null)
        .$if(query.connection !== undefined, (q) => q.where('r.connection_id', '=', query.connection!))
        .$if(Boolean(query.q), (q) => q.where(sql<boolean>`lower(r.full_name) like ${`%${query.q!.toLowerCase().replace(/[\\%_]/g, (m) => `\\${m}`)}%`}`))
        .$if(after !== undefined, (q) => q.where(sql<boolean>`(${projectKey}, r.full_name, r.id) > (${after![0]}, ${after![1]}, ${after![2]}::uuid)`))
        .orderBy(projectKey)
        .orderBy('r.full_name')
        .orderBy('r.id')
        .limit(query.limit + 1)
        .execute();
      const page = rows.slice(0, query.limit);
      const last = page[page.length - 1];
      return c.json(
        {
          items: page.map((r) => ({
            id: r.id,
            connectionId: r.connection_id,
            provider: r.provider,
            externalId: r.external_id,
            fullName: r.full_name,
            ...(r.project ? { project: r.project } : {}),
            ...(r.default_branch ? { defaultBranch: r.default_branch } : {}),
            ...(r.web_url ? { webUrl: r.web_url } : {}),
            attached: r.attachment_status === 'attached' || r.attachment_status === 'attaching',
          })),
          ...(rows.length > query.limit && last ? { nextCursor: encodeCursor([last.project_key, last.full_name, last.id]) } : {}),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/{org}/repositories/refresh',
      summary: "Refresh the organization's repository cache now (joins a refresh already running)",
      request: { params: OrgParam },
      responses: {
        202: { description: 'Accepted', content: { 'application/json': { schema: z.object({ workflowId: z.string() }) } } },
        503: problemResponse('Temporal unavailable'),
        ...errors,
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const { workflowId } = await startWorkflow(deps, 'refreshRepositoriesWorkflow', {
        workflowId: workflowIds.refreshOrganization(org.id),
        input: { organizationId: org.id },
        allowRerun: true,
        labels: runLabels('refresh repositories', { organization: { id: org.id, slug: org.slug } }),
      });
      return c.json({ workflowId }, 202);
    },
  );
  return app;
}
