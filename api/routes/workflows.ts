import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { undeliveredDispatchesOf } from '../../lib/db/repositories/event-dispatches.ts';
import { deliveryPartOf } from '../../lib/db/repositories/events.ts';
import { parseEventWorkflowId, parseWorkflowId, type EventResult } from '../../workflows/contract.ts';
import type { Context } from 'hono';
import type { Provider } from '../../lib/domain.ts';
import { mayAccessOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { notFound, problemResponse } from '../problem.ts';
import { withinTemporalDeadline } from '../temporal-deadline.ts';

const RunSchema = z
  .object({
    workflowId: z.string(),
    runId: z.string(),
    type: z.string(),
    status: z.string().openapi({ example: 'COMPLETED', description: 'Temporal execution status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, CONTINUED_AS_NEW, TIMED_OUT' }),
    startedAt: z.string(),
    closedAt: z.string().optional(),
    result: z.unknown().optional(),
    failure: z.object({ message: z.string(), type: z.string().optional() }).optional(),
    uiUrl: z.string(),
  })
  .openapi('WorkflowRun');

function failureOf(error: unknown): { message: string; type?: string } {
  let cause: unknown = error instanceof WorkflowFailedError ? error.cause : error;
  // The innermost cause says what actually went wrong (an activity's ApplicationFailure).
  while (cause instanceof Error && cause.cause instanceof Error) cause = cause.cause;
  const err = cause as Error & { type?: string };
  return { message: err?.message ?? String(error), ...(err?.type ? { type: err.type } : {}) };
}

type DeliveryPart = Awaited<ReturnType<typeof deliveryPartOf>> & { provider: Provider; deliveryId: string; organizationId: string };

/** A connection id as the database makes them (gen_random_uuid, lower case). */
const CONNECTION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** As many undelivered pairs as a queued fan-out's run result names. */
const UNDELIVERED_LISTED = 100;

/**
 * Whether the caller may see the run (by the organization in its id, or for an event run, the
 * organizations its delivery concerns), and for an organization looking at an event run, its part.
 */
async function accessToRun(c: Context<AppEnv>, workflowId: string): Promise<{ allowed: boolean; part?: DeliveryPart }> {
  const principal = c.var.principal;
  const event = parseEventWorkflowId(workflowId);
  if (event) {
    if (principal.kind === 'admin') return { allowed: true };
    // The id's connection part is compared with a uuid column: anything but a UUID (the contract's
    // pattern takes any 36 of hex digits and dashes) names no run, and is not sent to PostgreSQL,
    // which would refuse it (22P02) as a 500.
    if (event.connectionId !== undefined && !CONNECTION_ID.test(event.connectionId)) return { allowed: false };
    const part = await deliveryPartOf(c.var.deps.db, event.provider, event.deliveryId, principal.organizationId, event.connectionId);
    return { allowed: part.eventIds.length > 0, part: { ...part, provider: event.provider, deliveryId: event.deliveryId, organizationId: principal.organizationId } };
  }
  const parsed = parseWorkflowId(workflowId);
  return { allowed: parsed !== undefined && mayAccessOrganization(c, parsed.organizationId) };
}

/**
 * An event run's result as one organization may see it: a delivery can concern several, and the
 * run's result counts them all and names their events and subscribers. The run itself is unchanged.
 */
async function ownPartOf(c: Context<AppEnv>, result: EventResult, part: DeliveryPart): Promise<EventResult> {
  const own = new Set(part.eventIds);
  if (result.undeliveredCount === undefined) return { recorded: own.size, delivered: part.delivered, undelivered: result.undelivered.filter((u) => own.has(u.eventId)) };
  // A queued fan-out's result names only the first undelivered pairs, which may all be another
  // organization's: the organization's own are read from the queue.
  const undelivered = await undeliveredDispatchesOf(c.var.deps.db, part, UNDELIVERED_LISTED);
  return { recorded: own.size, delivered: part.delivered, undelivered: undelivered.first, undeliveredCount: undelivered.count };
}

/**
 * A failed event run's failure as one of several organizations its delivery concerns sees it: its
 * kind only. The message is the run's, whatever organization it names (an operator's termination
 * reason, another organization's subscriber or event), so only the admin reads it.
 */
function sharedRunFailure(failure: { message: string; type?: string }, status: string): { message: string; type?: string } {
  return {
    message: `the run ended ${status}; it concerns other organizations too, so its reason is shown to the operator (admin token, Temporal UI) only`,
    ...(failure.type ? { type: failure.type } : {}),
  };
}

export function workflowRoutes() {
  const app = new OpenAPIHono<AppEnv>();
  app.openapi(
    createRoute({
      method: 'get',
      path: '/{workflowId}',
      summary: "A run's status, result or failure, and its Temporal UI link",
      description:
        'An organization token sees its own runs, and an event run when the delivery recorded events for the organization: then only its part of the ' +
        'result (its events, acknowledged deliveries and undelivered entries), and when the delivery concerns other organizations too, a failure by its type only.',
      request: { params: z.object({ workflowId: z.string().min(1) }) },
      responses: {
        200: { description: 'OK', content: { 'application/json': { schema: RunSchema } } },
        401: problemResponse('Missing or bad token'),
        404: problemResponse('No such run visible to the caller'),
        503: problemResponse('Temporal or the database unavailable'),
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const { workflowId } = c.req.valid('param');
      const access = await accessToRun(c, workflowId);
      if (!access.allowed) throw notFound(`workflow ${workflowId}`);
      const handle = deps.temporal.workflow.getHandle(workflowId);
      // Both calls under the request's one deadline: Temporal not answering in time is app.onError's 503.
      const { description, result, failure } = await withinTemporalDeadline(deps, async () => {
        let description;
        try {
          description = await handle.describe();
        } catch (error) {
          if (error instanceof WorkflowNotFoundError) throw notFound(`workflow ${workflowId}`);
          throw error;
        }
        const status = description.status.name;
        let result: unknown;
        let failure: { message: string; type?: string } | undefined;
        if (status === 'COMPLETED') result = await handle.result();
        else if (status === 'FAILED' || status === 'TIMED_OUT' || status === 'TERMINATED' || status === 'CANCELLED') {
          failure = await handle.result().then(
            () => undefined,
            (error: unknown) => {
              // Only the run's own ending is its failure; Temporal not answering (the deadline) is a 503.
              if (!(error instanceof WorkflowFailedError)) throw error;
              return failureOf(error);
            },
          );
        }
        return { description, result, failure };
      });
      const status = description.status.name;
      const shown = result !== undefined && access.part ? await ownPartOf(c, result as EventResult, access.part) : result;
      const shownFailure = failure && access.part?.shared ? sharedRunFailure(failure, status) : failure;
      const uiUrl = `${deps.temporalUiUrl}/namespaces/${encodeURIComponent(deps.namespace)}/workflows/${encodeURIComponent(workflowId)}/${description.runId}/history`;
      return c.json(
        {
          workflowId,
          runId: description.runId,
          type: description.type,
          status,
          startedAt: description.startTime.toISOString(),
          ...(description.closeTime ? { closedAt: description.closeTime.toISOString() } : {}),
          ...(shown !== undefined ? { result: shown } : {}),
          ...(shownFailure ? { failure: shownFailure } : {}),
          uiUrl,
        },
        200,
      );
    },
  );
  return app;
}
