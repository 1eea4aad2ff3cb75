import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { attachRefusal, findAttachment, findOrganizationAndRepository } from '../../lib/db/repositories/attachments.ts';
import { ATTACHMENT_STATUSES, HOOK_HEALTH_STATUSES } from '../../lib/domain.ts';
import {
  attachmentRequested,
  workflowIds,
  type AttachmentAction,
  type RepositoryWorkflowInput,
} from '../../workflows/contract.ts';
import { runLabels } from '../../workflows/run-labels.ts';
import { visibleOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { notFound, Problem, problemResponse, serviceUnavailable, TEMPORAL_RETRY_AFTER_SECONDS } from '../problem.ts';
import { withinTemporalDeadline } from '../temporal-deadline.ts';

const AttachmentSchema = z
  .object({
    status: z.enum(ATTACHMENT_STATUSES),
    reason: z.string().optional(),
    repositoryVanished: z.boolean().openapi({
      description:
        "The connection no longer sees the repository (its last listing or an access event said so), so its hooks may be gone with it; false again once the repository is seen again.",
    }),
    hooks: z.array(z.object({ providerHookId: z.string(), events: z.array(z.string()) })),
    hookHealth: z
      .object({
        checkedAt: z.string().openapi({ format: 'date-time' }),
        status: z.enum(HOOK_HEALTH_STATUSES),
        reason: z.string().optional().openapi({ description: 'What was repaired, or why the hooks are failing' }),
      })
      .optional()
      .openapi({ description: "The last hook-health check (the nightly reconcile, or a webhook-credential rotation): absent until the first" }),
    workflowId: z.string().openapi({ description: "The repository's attach/detach workflow (GET /api/v1/workflows/{workflowId})" }),
  })
  .openapi('Attachment');

const Accepted = z.object({ workflowId: z.string() });
const RepositoryParam = z.object({ org: z.string().min(1), id: z.uuid() });

const errors = {
  400: problemResponse('Invalid request'),
  401: problemResponse('Missing or bad token'),
  404: problemResponse('No such organization or repository'),
};

/** The organization named in the path, if the caller may see it, and its repository `repositoryId`: one query, else 404. */
async function organizationRepository(c: Context<AppEnv>, orgRef: string, repositoryId: string) {
  const found = await findOrganizationAndRepository(c.var.deps.db, orgRef, repositoryId);
  const org = visibleOrganization(c, orgRef, found?.organization);
  if (!found?.repository) throw notFound(`repository ${repositoryId}`);
  return { org, repository: found.repository };
}

/**
 * Queues an attach or a detach on the repository's workflow with signalWithStart: it starts the
 * workflow, or adds the request to the run already there, which carries requests out in order.
 */
async function requestAttachment(c: Context<AppEnv>, orgRef: string, repositoryId: string, action: AttachmentAction) {
  const { deps } = c.var;
  const { org, repository } = await organizationRepository(c, orgRef, repositoryId);
  const refusal = action === 'attach' ? attachRefusal(repository) : undefined;
  if (refusal) throw new Problem(409, 'Conflict', refusal);
  const workflowId = workflowIds.repository(org.id, repository.id);
  const input: RepositoryWorkflowInput = { organizationId: org.id, repositoryId: repository.id, pending: [] };
  try {
    await withinTemporalDeadline(deps, () => deps.temporal.workflow.signalWithStart('repositoryWorkflow', {
      taskQueue: deps.taskQueue,
      workflowId,
      args: [input],
      signal: attachmentRequested,
      signalArgs: [{ action }],
      // The run carries on with later requests too; it is named after the one that started it.
      ...runLabels(action, {
        organization: { id: org.id, slug: org.slug },
        provider: repository.provider,
        connectionId: repository.connection_id,
        repository: { id: repository.id, fullName: repository.full_name },
      }),
    }));
  } catch (error) {
    // A signal Temporal did not answer in time may still have been queued: asking again is safe, an attach or a detach carried out twice changes nothing more.
    deps.logger.error({ err: error, workflowId }, 'could not queue the attachment request');
    throw serviceUnavailable(`the workflow engine (Temporal) did not take the request or did not answer in time; try again (${action} is idempotent)`, TEMPORAL_RETRY_AFTER_SECONDS);
  }
  return workflowId;
}

export function attachmentRoutes() {
  const app = new OpenAPIHono<AppEnv>();
  const accepted = {
    202: { description: 'Accepted: the request is queued on the repository workflow', content: { 'application/json': { schema: Accepted } } },
    503: problemResponse('Temporal unavailable'),
    ...errors,
  };

  app.openapi(
    createRoute({
      method: 'put',
      path: '/{org}/repositories/{id}/attachment',
      summary: 'Attach the repository: create its hook set (idempotent; on an attached repository, reconciles its hooks)',
      request: { params: RepositoryParam },
      responses: { ...accepted, 409: problemResponse('The connection is not active') },
    }),
    async (c) => {
      const { org, id } = c.req.valid('param');
      return c.json({ workflowId: await requestAttachment(c, org, id, 'attach') }, 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/{org}/repositories/{id}/attachment',
      summary: 'Detach the repository: delete its hooks (idempotent)',
      request: { params: RepositoryParam },
      responses: accepted,
    }),
    async (c) => {
      const { org, id } = c.req.valid('param');
      return c.json({ workflowId: await requestAttachment(c, org, id, 'detach') }, 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/repositories/{id}/attachment',
      summary: "The repository's attachment state and the hooks recorded for it",
      request: { params: RepositoryParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: AttachmentSchema } } }, ...errors },
    }),
    async (c) => {
      const { deps } = c.var;
      const params = c.req.valid('param');
      const { org, repository } = await organizationRepository(c, params.org, params.id);
      // A repository never attached is simply detached.
      const attachment = (await findAttachment(deps.db, repository.id)) ?? { status: 'detached' as const, reason: null, hooks: [] };
      return c.json(
        {
          status: attachment.status,
          ...(attachment.reason ? { reason: attachment.reason } : {}),
          repositoryVanished: repository.vanished_at !== null,
          hooks: attachment.hooks,
          ...(attachment.hookHealth ? { hookHealth: { ...attachment.hookHealth, checkedAt: attachment.hookHealth.checkedAt.toISOString() } } : {}),
          workflowId: workflowIds.repository(org.id, repository.id),
        },
        200,
      );
    },
  );

  return app;
}
