import { randomBytes, randomUUID } from 'node:crypto';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { seal } from '../../lib/crypto.ts';
import { deleteSubscriber, findSubscriber, insertSubscriber, listSubscribers, lockSubscriberTotals, type PublicSubscriber } from '../../lib/db/repositories/subscribers.ts';
import { refGlobProblem } from '../../lib/ref-glob.ts';
import { normalizeProviderUrl, UnsafeUrlError } from '../../lib/url.ts';
import { resolveOrganization } from '../auth.ts';
import type { AppEnv } from '../context.ts';
import { hostLookupUnavailableResponse, notFound, Problem, problemResponse, unsafeUrl } from '../problem.ts';
import { EVENT_KINDS } from './events.ts';
import { text } from '../text.ts';

const SubscriberSchema = z
  .object({
    id: z.uuid(),
    url: z.string(),
    kinds: z.array(z.enum(EVENT_KINDS)),
    refGlobs: z.array(z.string()),
    createdAt: z.string(),
  })
  .openapi('Subscriber');

const CreatedSubscriberSchema = SubscriberSchema.extend({
  secret: z.string().openapi({ description: 'HMAC-SHA256 key of X-Forgelink-Signature; shown only in this answer' }),
}).openapi('CreatedSubscriber');

const CreateBody = z
  .object({
    url: text().min(1).max(2048).openapi({ description: 'HTTPS endpoint events are POSTed to (http only for hosts in security.allowHttpHosts)' }),
    kinds: z.array(z.enum(EVENT_KINDS)).max(EVENT_KINDS.length).default([]).openapi({ description: 'Event kinds to receive; empty or absent: all' }),
    refGlobs: z
      .array(
        text()
          .min(1)
          .max(255)
          .superRefine((glob, ctx) => {
            const problem = refGlobProblem(glob);
            if (problem) ctx.addIssue({ code: 'custom', message: problem });
          }),
      )
      .max(50)
      .default([])
      .openapi({
        description:
          'Branch / tag names to receive (a pull request counts by its target branch); `*` within a path segment, `**` across, `?` one character other than `/`; three or more `*` in a row are refused. Empty or absent: all, including events without a ref',
        example: ['main', 'release/**', 'v*'],
      }),
  })
  .openapi('CreateSubscriberRequest');

/** The most subscribers an organization may have: every event is matched against each one's filters. */
export const MAX_SUBSCRIBERS_PER_ORGANIZATION = 100;
/**
 * The most ref globs, and glob characters, an organization's subscribers may have between them.
 * Matching a name costs about its length × ⌈(glob length + 1) / 32⌉ word steps a glob
 * (lib/ref-glob.ts), and an event is matched against them all, once per ref a delivery carries: 100
 * subscribers × 50 globs of 255 characters cost 147 ms of CPU a 1,024-character ref, so one
 * Bitbucket or Azure DevOps delivery of 2,000 refs could take minutes. Within these, at most about
 * 1,000 word steps a character (500 globs of 32 characters): a few milliseconds a ref. One subscriber
 * with the most a request takes (50 globs of 255, 12,750 characters) fits.
 */
export const MAX_REF_GLOBS_PER_ORGANIZATION = 500;
export const MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION = 16_384;

const OrgParam = z.object({ org: z.string().min(1) });
const SubscriberParam = OrgParam.extend({ id: z.uuid() });

const errors = {
  400: problemResponse('Invalid request'),
  401: problemResponse('Missing or bad token'),
  404: problemResponse('No such organization or subscriber'),
};

function toApi(row: PublicSubscriber) {
  return { id: row.id, url: row.url, kinds: row.kinds, refGlobs: row.refGlobs, createdAt: row.createdAt.toISOString() };
}

/** Endpoints an organization registers to receive its events, each signed with the subscriber's own secret. */
export function subscriberRoutes() {
  const app = new OpenAPIHono<AppEnv>();

  app.openapi(
    createRoute({
      method: 'post',
      path: '/{org}/subscribers',
      summary: "Register an endpoint for the organization's events; the signing secret is shown once",
      request: { params: OrgParam, body: { required: true, content: { 'application/json': { schema: CreateBody } } } },
      responses: {
        201: { description: 'Created', content: { 'application/json': { schema: CreatedSubscriberSchema } } },
        ...errors,
        409: problemResponse(`The organization already has ${MAX_SUBSCRIBERS_PER_ORGANIZATION} subscribers, or its subscribers' ref globs would pass ${MAX_REF_GLOBS_PER_ORGANIZATION} globs / ${MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION} characters`),
        503: hostLookupUnavailableResponse(),
      },
    }),
    async (c) => {
      const { deps } = c.var;
      const org = await resolveOrganization(c, c.req.valid('param').org);
      const body = c.req.valid('json');
      let url: string;
      try {
        url = await normalizeProviderUrl(body.url, { allowHttpHosts: deps.allowHttpHosts, allowPrivateNetworks: deps.allowPrivateNetworks, resolve: deps.resolveHost });
      } catch (error) {
        if (error instanceof UnsafeUrlError) throw unsafeUrl(c, 'url', error);
        throw error;
      }
      const id = randomUUID();
      const secret = `whsec_${randomBytes(32).toString('base64url')}`;
      const row = await deps.db.transaction().execute(async (trx) => {
        // Each event is matched against every subscriber of its organization: their number, and their globs', bound what one event costs.
        const totals = await lockSubscriberTotals(trx, org.id);
        if (totals.subscribers >= MAX_SUBSCRIBERS_PER_ORGANIZATION) {
          throw new Problem(409, 'Conflict', `organization ${org.slug} already has ${MAX_SUBSCRIBERS_PER_ORGANIZATION} subscribers, the most it may have; delete one first`, 'about:blank', {
            limit: MAX_SUBSCRIBERS_PER_ORGANIZATION,
          });
        }
        const globs = [...new Set(body.refGlobs)];
        const characters = globs.reduce((sum, glob) => sum + [...glob].length, 0);
        if (totals.refGlobs + globs.length > MAX_REF_GLOBS_PER_ORGANIZATION || totals.refGlobCharacters + characters > MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION) {
          throw new Problem(
            409,
            'Conflict',
            `organization ${org.slug}'s subscribers have ${totals.refGlobs} ref globs of ${totals.refGlobCharacters} characters; with these ${globs.length} of ${characters} they would pass the most an organization may have, ${MAX_REF_GLOBS_PER_ORGANIZATION} globs and ${MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION} characters: use fewer or broader globs, or delete a subscriber first`,
            'about:blank',
            { limits: { refGlobs: MAX_REF_GLOBS_PER_ORGANIZATION, refGlobCharacters: MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION } },
          );
        }
        return insertSubscriber(trx, {
          id,
          organizationId: org.id,
          url,
          sealedSecret: seal(deps.keys, secret, id),
          kinds: [...new Set(body.kinds)],
          refGlobs: globs,
        });
      });
      return c.json({ ...toApi(row), secret }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/subscribers',
      summary: "The organization's subscribers (never their secrets)",
      request: { params: OrgParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: z.object({ items: z.array(SubscriberSchema) }) } } }, ...errors },
    }),
    async (c) => {
      const org = await resolveOrganization(c, c.req.valid('param').org);
      return c.json({ items: (await listSubscribers(c.var.deps.db, org.id)).map(toApi) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/{org}/subscribers/{id}',
      summary: 'One subscriber',
      request: { params: SubscriberParam },
      responses: { 200: { description: 'OK', content: { 'application/json': { schema: SubscriberSchema } } }, ...errors },
    }),
    async (c) => {
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      const row = await findSubscriber(c.var.deps.db, org.id, params.id);
      if (!row) throw notFound(`subscriber ${params.id}`);
      return c.json(toApi(row), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/{org}/subscribers/{id}',
      summary: 'Remove a subscriber; events in flight to it are dropped',
      request: { params: SubscriberParam },
      responses: { 204: { description: 'Deleted' }, ...errors },
    }),
    async (c) => {
      const params = c.req.valid('param');
      const org = await resolveOrganization(c, params.org);
      if (!(await deleteSubscriber(c.var.deps.db, org.id, params.id))) throw notFound(`subscriber ${params.id}`);
      return c.body(null, 204);
    },
  );

  return app;
}
