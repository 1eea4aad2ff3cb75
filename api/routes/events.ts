import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { findEvent, listEvents, type EventListItem, type EventPageCursor } from '../../lib/db/repositories/events.ts';
import { listDispatchAttempts } from '../../lib/db/repositories/subscribers.ts';
import { PROVIDERS, type EventKind } from '../../lib/domain.ts';
import { resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { decodeCursor, encodeCursor, notOurs } from '../cursor.ts';
import { notFound, problemResponse } from '../problem.ts';

// A record, so the compiler names any kind lib/domain.ts gains and this list lacks.
const KINDS: Record<EventKind, true> = {
  push: true,
  'branch.created': true,
  'branch.deleted': true,
  'tag.created': true,
  'tag.updated': true,
  'tag.deleted': true,
  'pull_request.opened': true,
  'pull_request.updated': true,
  'pull_request.merged': true,
  'pull_request.closed': true,
  'repository.added': true,
  'repository.removed': true,
};
export const EVENT_KINDS = Object.keys(KINDS) as [EventKind, ...EventKind[]];

const EventSchema = z
  .object({
    id: z.uuid(),
    receivedAt: z.string(),
    repositoryId: z.uuid().optional().openapi({ description: 'The repository in the cache (GET …/repositories), when it is there' }),
    provider: z.enum(PROVIDERS),
    deliveryId: z.string(),
    kind: z.enum(EVENT_KINDS),
    repository: z.object({ externalId: z.string(), fullName: z.string(), project: z.string().optional() }),
    ref: z.object({ type: z.enum(['branch', 'tag']), name: z.string(), before: z.string().nullable(), after: z.string().nullable() }).optional(),
    pullRequest: z
      .object({ number: z.number().int(), sourceBranch: z.string(), targetBranch: z.string(), headSha: z.string().optional(), title: z.string().optional() })
      .optional(),
    commitCount: z.number().int().optional(),
    sender: z.string().optional(),
  })
  .openapi('Event');

const DispatchAttemptSchema = z
  .object({
    subscriberId: z.uuid(),
    attempt: z.number().int(),
    succeeded: z.boolean(),
    statusCode: z.number().int().optional(),
    error: z.string().optional(),
    durationMs: z.number().int().optional(),
    attemptedAt: z.string(),
  })
  .openapi('DispatchAttempt');

const OrgParam = z.object({ org: z.string().min(1) });
const EventParam = OrgParam.extend({ id: z.uuid() });
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const errors = {
  400: problemResponse('Invalid request'),
  401: problemResponse('Missing or bad token'),
  404: problemResponse('No such organization or event'),
};

function toApi(row: EventListItem) {
  return { ...row.event, id: row.id, receivedAt: row.receivedAt.toISOString(), ...(row.repositoryId ? { repositoryId: row.repositoryId } : {}) };
}

const eventCursor = (row: EventListItem) => encodeCursor([row.receivedAt.toISOString(), row.id]);

/** An instant as eventCursor writes it: four-digit years only, as JavaScript's wider ones (-010000) are out of PostgreSQL's range. */
const CURSOR_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

function eventPageAfter(cursor: string): EventPageCursor {
  const [receivedAt, id] = decodeCursor(cursor, 2) as [string, string];
  const date = new Date(receivedAt);
  // The round trip refuses what Date would roll over (2026-02-31) as well.
  if (!CURSOR_INSTANT.test(receivedAt) || Number.isNaN(date.getTime()) || date.toISOString() !== receivedAt) throw notOurs();
  return { receivedAt: date, id };
}

export function eventRoutes() {
  const app = new OpenAPIHono<AppEnv>();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/events',
      summary: "The organization's normalized events, newest first",
      request: {
        params: OrgParam,
        query: z.object({
          repository: z.string().min(1).optional().openapi({ description: 'A repository id from the cache, or a full name' }),
          kind: z.enum(EVENT_KINDS).optional(),
          cursor: z.string().optional().openapi({ description: 'nextCursor of the previous page' }),
          limit: z.coerce.number().int().min(1).max(200).default(50),
        }),
      },
      responses: {
        200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(EventSchema), nextCursor: z.string().optional() }) } } },
        ...errors,
      },
    }),
    async (c) => {
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const query = c.req.valid('query');
      const rows = await listEvents(c.var.deps.db, org.id, {
        ...(query.repository ? (UUID.test(query.repository) ? { repositoryId: query.repository } : { repositoryFullName: query.repository }) : {}),
        kind: query.kind,
        after: query.cursor ? eventPageAfter(query.cursor) : undefined,
        limit: query.limit + 1,
      });
      const page = rows.slice(0, query.limit);
      const nextCursor = rows.length > query.limit ? eventCursor(page[page.length - 1]!) : undefined;
      return c.json({ items: page.map(toApi), ...(nextCursor ? { nextCursor } : {}) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/events/{id}',
      summary: 'One event',
      request: { params: EventParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: EventSchema } } }, ...errors },
    }),
    async (c) => {
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      const row = await findEvent(c.var.deps.db, org.id, params.id);
      if (!row) throw notFound(`event ${params.id}`);
      return c.json(toApi(row), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/events/{id}/deliveries',
      summary: "Every attempt to deliver the event to the organization's subscribers, with its outcome",
      request: { params: EventParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(DispatchAttemptSchema) }) } } }, ...errors },
    }),
    async (c) => {
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      const { db } = c.var.deps;
      if (!(await findEvent(db, org.id, params.id))) throw notFound(`event ${params.id}`);
      const attempts = await listDispatchAttempts(db, params.id);
      return c.json(
        {
          items: attempts.map((a) => ({
            subscriberId: a.subscriberId,
            attempt: a.attempt,
            succeeded: a.succeeded,
            ...(a.statusCode !== null ? { statusCode: a.statusCode } : {}),
            ...(a.error !== null ? { error: a.error } : {}),
            ...(a.durationMs !== null ? { durationMs: a.durationMs } : {}),
            attemptedAt: a.attemptedAt.toISOString(),
          })),
        },
        200,
      );
    },
  );

  return app;
}
