import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout } from 'node:timers/promises';
import { serve } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import type { EventInput, EventResult } from '../../workflows/contract.ts';
import { startInput } from '../support/histories.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository, type DeliveryOptions, type Payload } from '../fakes/webhook-deliveries.ts';
import { deliveryUrlOf, seedConnection } from '../support/attachments.ts';
import { deliveryRunExists, eventRunExists, eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { addWebhookCredential, ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';


const FULL_NAMES: Record<Provider, string> = {
  github: 'octo-org/receiver',
  gitlab: 'group/sub/receiver',
  bitbucket: 'PROJ/receiver',
  'azure-devops': 'Fabrikam/receiver',
};

describe('webhook receivers (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  let org: { id: string; slug: string };
  let orgToken: string;
  const attached = {} as Record<Provider, { externalId: string; fullName: string; repositoryId: string }>;
  /** Per provider, the connection the repositories are attached through, and where and with what its hooks deliver (GitHub: the App's secret). */
  const hookOf = {} as Record<Provider, { connectionId: string; url?: string; secret: string; basicAuthUser?: string }>;

  beforeAll(async () => {
    // The legacy hooks' global secrets accepted (webhooks.acceptLegacyHooks), for the legacy-hook tests below; the others use connections' own hooks.
    h = await startHarness({ acceptLegacyHooks: true });
    ({ org, token: orgToken } = await createOrgWithToken(h));
    for (const provider of PROVIDERS) {
      const repository = { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] };
      const { repositoryId, connectionId } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repository });
      attached[provider] = { ...repository, repositoryId };
      if (provider === 'github') hookOf.github = { connectionId, secret: TEST_WEBHOOK_SECRETS.github };
      else {
        const { secret, basicAuthUser } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider });
        hookOf[provider] = { connectionId, url: deliveryUrlOf(provider, connectionId), secret, basicAuthUser };
      }
    }
  });
  afterAll(async () => {
    await h?.close();
  });

  /** GitLab's push fixture as sent by the instance at `webUrl`'s origin. */
  function gitlabPushAt(webUrl: string): Payload {
    const payload = structuredClone(fixture(PUSH_FIXTURES.gitlab));
    payload.project.web_url = webUrl;
    payload.repository.homepage = webUrl;
    return payload;
  }

  function pushTo(provider: Provider, repository: { externalId: string; fullName: string }, options: Partial<DeliveryOptions> & { payload?: Payload } = {}) {
    const payload = withRepository(provider, options.payload ?? fixture(PUSH_FIXTURES[provider]), repository);
    // Every push its own body: the same body again for a connection is a replay, whatever its delivery id.
    payload.test_push = randomUUID();
    const { connectionId: _c, ...hook } = hookOf[provider];
    return delivery(provider, payload, { deliveryId: randomUUID(), ...hook, ...options });
  }

  async function expectProblem(res: Response, status: number) {
    expect(res.status).toBe(status);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    const problem = (await res.json()) as { status: number; detail: string };
    expect(problem.status).toBe(status);
    return problem;
  }

  describe.each(PROVIDERS)('%s', (provider) => {
    it('acknowledges a valid delivery with 202 once it is stored; the relay then starts its event run, which records the push', async () => {
      const push = pushTo(provider, attached[provider]);
      const { deliveryId } = push;
      const res = await send(h, push);
      expect(res.status).toBe(202);
      const ack = (await res.json()) as { status: string; workflowId: string };
      expect(ack).toMatchObject({ status: 'accepted', workflowId: provider === 'github' ? `event:github:${deliveryId}` : `event:${provider}@${hookOf[provider].connectionId}:${deliveryId}` });
      const result = await resultOf<EventResult>(h, ack.workflowId);
      expect(result).toMatchObject({ recorded: 1, delivered: 0, undelivered: [] });

      const events = await eventsOfDelivery(h.db, provider, deliveryId);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ organization_id: org.id, repository_id: attached[provider].repositoryId, sequence: 0, kind: 'push' });
      expect(events[0]!.event).toMatchObject({ provider, deliveryId, kind: 'push', repository: { externalId: attached[provider].externalId, fullName: attached[provider].fullName } });

      // The run names the stored delivery and summarizes it; never the events, the raw body or a credential.
      const stored = await h.db.selectFrom('webhook_deliveries').select('events').where('provider', '=', provider).where('delivery_id', '=', deliveryId).executeTakeFirstOrThrow();
      expect(stored.events).toEqual([events[0]!.event]);
      expect(await startInput<EventInput>(h.client, ack.workflowId)).toEqual({
        provider,
        deliveryId,
        receivedAt: expect.any(String),
        summary: { events: 1, kinds: { push: 1 }, repositories: [attached[provider].fullName] },
        // A connection's own hook: the run acts on that connection's attachments only; a body signed
        // without its delivery id (Bitbucket's) is known by its digest, so a replay under a new id records nothing.
        ...(provider === 'github' ? {} : { connectionId: hookOf[provider].connectionId }),
        ...(provider === 'bitbucket' ? { bodyDigest: expect.stringMatching(/^[0-9a-f]{64}$/) } : {}),
      });
      const history = await historyText(h, ack.workflowId);
      expect(history).not.toContain(attached[provider].externalId);
      expect(history).not.toContain(push.body.slice(0, 60));
      expect(history).not.toContain(hookOf[provider].secret);
    });

    it('records a delivery whose ref holds a lone surrogate and a NUL (escapes PostgreSQL refuses), each as U+FFFD, once', async () => {
      const payload = withRepository(provider, fixture(PUSH_FIXTURES[provider]), attached[provider]);
      const ref = 'refs/heads/x\ud800y\u0000z';
      if (provider === 'bitbucket') payload.changes[0].refId = ref;
      else if (provider === 'azure-devops') payload.resource.refUpdates[0].name = ref;
      else payload.ref = ref;
      const push = pushTo(provider, attached[provider], { payload });
      expect(push.body).toContain('x\\ud800y\\u0000z');
      for (let attempt = 0; attempt < 2; attempt++) {
        const res = await send(h, push);
        expect(res.status, await res.clone().text()).toBe(202);
      }
      const stored = await h.db.selectFrom('webhook_deliveries').select('events').where('provider', '=', provider).where('delivery_id', '=', push.deliveryId).execute();
      expect(stored).toHaveLength(1);
      expect(stored[0]!.events.map((e) => e.ref?.name)).toEqual(['x\uFFFDy\uFFFDz']);
      const workflowId = provider === 'github' ? `event:github:${push.deliveryId}` : `event:${provider}@${hookOf[provider].connectionId}:${push.deliveryId}`;
      expect(await resultOf<EventResult>(h, workflowId)).toMatchObject({ recorded: 1 });
      const events = await eventsOfDelivery(h.db, provider, push.deliveryId);
      expect(events.map((e) => e.event.ref?.name)).toEqual(['x\uFFFDy\uFFFDz']);
    });

    it('answers 401 to a forged credential and starts nothing', async () => {
      const forged = pushTo(provider, attached[provider], { secret: 'not-the-webhook-secret' });
      const problem = await expectProblem(await send(h, forged), 401);
      expect(problem.detail).not.toContain(hookOf[provider].secret);
      expect(await deliveryRunExists(h, forged)).toBe(false);
      expect(await eventsOfDelivery(h.db, provider, forged.deliveryId)).toEqual([]);
    });

    it('answers 401 to a delivery without credentials and starts nothing', async () => {
      const unsigned = pushTo(provider, attached[provider], { secret: undefined });
      await expectProblem(await send(h, unsigned), 401);
      expect(await deliveryRunExists(h, unsigned)).toBe(false);
    });

    it(provider === 'github' ? "accepts the App's previous secret while it is configured (rotation)" : "accepts the connection's current and previous credential during a rotation, a new one at once", async () => {
      if (provider === 'github') {
        const res = await send(h, pushTo(provider, attached[provider], { secret: TEST_WEBHOOK_SECRETS.previous }));
        expect(res.status).toBe(202);
        expect((await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);
        return;
      }
      // The receiver has the connection's credentials cached by now; a rotation adds one.
      expect((await send(h, pushTo(provider, attached[provider]))).status).toBe(202);
      const rotated = await addWebhookCredential(h.db, h.keys, { id: hookOf[provider].connectionId, provider });
      for (const credential of [{ secret: rotated.secret, basicAuthUser: rotated.basicAuthUser }, hookOf[provider]]) {
        const res = await send(h, pushTo(provider, attached[provider], { secret: credential.secret, basicAuthUser: credential.basicAuthUser }));
        expect(res.status).toBe(202);
        expect((await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);
      }
      // The connection's credential is good at its own provider's receiver only.
      const other = provider === 'gitlab' ? 'bitbucket' : 'gitlab';
      const push = pushTo(provider, attached[provider]);
      await expectProblem(await send(h, { ...push, path: push.path.replace(`/events/${provider}?`, `/events/${other}?`) }), 401);
    });

    it('answers 200 and starts nothing for a repository that is not attached', async () => {
      const unknown = pushTo(provider, { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] });
      const res = await send(h, unknown);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ status: 'ignored', reason: 'repository not attached' });
      expect(await deliveryRunExists(h, unknown)).toBe(false);
    });

    it('acts on a repository attached right after a delivery for it was ignored; one detached since it was seen starts a run that records nothing', async () => {
      const repository = { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] };
      expect((await send(h, pushTo(provider, repository))).status).toBe(200);
      // Not attached is never remembered: the attach counts from the next delivery on.
      const { repositoryId } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repository, connectionId: hookOf[provider].connectionId });
      const accepted = await send(h, pushTo(provider, repository));
      expect(accepted.status).toBe(202);
      expect((await resultOf<EventResult>(h, ((await accepted.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);

      // The receiver remembers it attached for a while; the event workflow reads the attachments itself.
      await h.db.updateTable('attachments').set({ status: 'detached' }).where('repository_id', '=', repositoryId).execute();
      const late = pushTo(provider, repository);
      const res = await send(h, late);
      expect(res.status).toBe(202);
      expect(await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ recorded: 0, delivered: 0 });
      expect(await eventsOfDelivery(h.db, provider, late.deliveryId)).toEqual([]);
    });

    it('answers 202 to a redelivery without starting anything new', async () => {
      const push = pushTo(provider, attached[provider]);
      const first = await send(h, push);
      expect(first.status).toBe(202);
      const { workflowId } = (await first.json()) as { workflowId: string };
      await resultOf(h, workflowId);
      const { runId } = await h.client.workflow.getHandle(workflowId).describe();

      const again = await send(h, push);
      expect(again.status).toBe(202);
      expect(await again.json()).toMatchObject({ status: 'accepted', workflowId });
      const after = await h.client.workflow.getHandle(workflowId).describe();
      expect(after.runId).toBe(runId);
      expect(after.status.name).toBe('COMPLETED');
      expect(await eventsOfDelivery(h.db, provider, push.deliveryId)).toHaveLength(1);
    });

    it('answers 400 to a correctly signed body that is not JSON, and starts nothing', async () => {
      const broken = pushTo(provider, attached[provider], { rawBody: '{"object_kind": "push", "ref": ' });
      const problem = await expectProblem(await send(h, broken), 400);
      expect(problem.detail).toMatch(/not JSON/);
      expect(await deliveryRunExists(h, broken)).toBe(false);
    });

    it('answers 400 to a signed delivery with another content type', async () => {
      const push = pushTo(provider, attached[provider]);
      const problem = await expectProblem(await send(h, { ...push, headers: { ...push.headers, 'content-type': 'application/x-www-form-urlencoded' } }), 400);
      expect(problem.detail).toMatch(/content-type/);
    });

    it('answers 413 to a body over the size limit, declared or streamed, and starts nothing', async () => {
      const payload = withRepository(provider, fixture(PUSH_FIXTURES[provider]), attached[provider]);
      payload.padding = 'x'.repeat(1024 * 1024);
      const big = pushTo(provider, attached[provider], { payload });
      await expectProblem(await send(h, { ...big, headers: { ...big.headers, 'content-length': String(Buffer.byteLength(big.body)) } }), 413);
      await expectProblem(await send(h, big), 413);
      expect(await deliveryRunExists(h, big)).toBe(false);
      // Close to the limit (1 MiB in the harness) is fine.
      payload.padding = 'x'.repeat(1024 * 1024 - 16 * 1024);
      const fits = pushTo(provider, attached[provider], { payload });
      expect(Buffer.byteLength(fits.body)).toBeGreaterThan(1000 * 1000);
      expect((await send(h, { ...fits, headers: { ...fits.headers, 'content-length': String(Buffer.byteLength(fits.body)) } })).status).toBe(202);
    });
  });

  it.each(['gitlab', 'azure-devops'] as const)('%s: checks the header credential before reading the body (a wrong one on a 25 MiB body: 401, nothing read)', async (provider) => {
    const CHUNK = 64 * 1024;
    /** A chunked 25 MiB body that counts what the receiver pulls from it. */
    const streamed = () => {
      const read = { bytes: 0 };
      const body = new ReadableStream<Uint8Array>(
        {
          pull(controller) {
            if (read.bytes >= 25 * 1024 * 1024) return controller.close();
            read.bytes += CHUNK;
            controller.enqueue(new Uint8Array(CHUNK).fill(0x20));
          },
        },
        { highWaterMark: 0 },
      );
      return { read, body };
    };
    const post = (push: ReturnType<typeof pushTo>, body: ReadableStream<Uint8Array>) =>
      h.app.request(push.path, { method: 'POST', headers: push.headers, body, duplex: 'half' } as RequestInit);

    const forged = streamed();
    await expectProblem(await post(pushTo(provider, attached[provider], { secret: 'not-the-credential-of-this-connection' }), forged.body), 401);
    expect(forged.read.bytes).toBeLessThanOrEqual(CHUNK);
    // With the connection's credential the body is read, up to the size limit.
    const genuine = streamed();
    await expectProblem(await post(pushTo(provider, attached[provider]), genuine.body), 413);
    expect(genuine.read.bytes).toBeGreaterThan(1024 * 1024);
  });

  it('rejects a GitHub or Bitbucket body changed after signing', async () => {
    for (const provider of ['github', 'bitbucket'] as const) {
      const push = pushTo(provider, attached[provider]);
      const tampered = { ...push, body: push.body.replace('refs/heads/master', 'refs/heads/evil') };
      expect(tampered.body).not.toBe(push.body);
      await expectProblem(await send(h, tampered), 401);
    }
  });

  it('answers 200 to pings: Bitbucket diagnostics:ping unsigned, GitHub ping', async () => {
    const bitbucketPing = delivery('bitbucket', fixture('bitbucket/diagnostics-ping.json'), { deliveryId: randomUUID() });
    bitbucketPing.headers['x-event-key'] = 'diagnostics:ping';
    const bb = await send(h, bitbucketPing);
    expect(bb.status).toBe(200);
    expect(await bb.json()).toEqual({ status: 'pong' });

    const githubPing = delivery('github', { zen: 'Keep it logically awesome.', hook_id: 1 }, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github, githubEvent: 'ping' });
    expect((await send(h, githubPing)).status).toBe(200);
    expect(await eventRunExists(h, 'github', githubPing.headers['x-github-delivery']!)).toBe(false);
  });

  it('answers 401 to a GitHub ping that is unsigned or wrongly signed: GitHub signs its pings', async () => {
    const zen = { zen: 'Keep it logically awesome.', hook_id: 1 };
    for (const secret of [undefined, 'not-the-webhook-secret']) {
      const ping = delivery('github', zen, { deliveryId: randomUUID(), githubEvent: 'ping', ...(secret ? { secret } : {}) });
      await expectProblem(await send(h, ping), 401);
    }
  });

  it('answers 200 to valid deliveries of event kinds it does not act on', async () => {
    const issue = delivery('github', { action: 'opened', repository: { id: Number(attached.github.externalId), full_name: attached.github.fullName } }, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github, githubEvent: 'issues' });
    const res = await send(h, issue);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'ignored', reason: 'event kind not handled' });

    const prModified = withRepository('bitbucket', fixture('bitbucket/pr-modified.json'), attached.bitbucket);
    expect((await send(h, pushTo('bitbucket', attached.bitbucket, { payload: prModified }))).status).toBe(200);
  });

  it('records every ref change of a Bitbucket delivery with three, in order', async () => {
    const push = pushTo('bitbucket', attached.bitbucket, { payload: fixture('bitbucket/repo-refs-changed-three-refs.json') });
    const res = await send(h, push);
    expect(res.status).toBe(202);
    const { workflowId, events: count } = (await res.json()) as { workflowId: string; events: number };
    expect(count).toBe(3);
    expect((await resultOf<EventResult>(h, workflowId)).recorded).toBe(3);
    const events = await eventsOfDelivery(h.db, 'bitbucket', push.headers['x-request-id']!);
    expect(events.map((e) => [e.sequence, e.kind, e.event.ref?.name])).toEqual([
      [0, 'push', 'master'],
      [1, 'branch.created', 'feature/login'],
      [2, 'tag.deleted', 'v0.9'],
    ]);
    expect(new Set(events.map((e) => e.organization_id))).toEqual(new Set([org.id]));

    // Listed through the API, newest first (all three share the delivery's receipt time).
    const listed = await h.request('GET', `/api/v1/orgs/${org.slug}/events?repository=${attached.bitbucket.repositoryId}&kind=branch.created`, { token: orgToken });
    expect(listed.status).toBe(200);
    const body = (await listed.json()) as { items: { id: string; kind: string; receivedAt: string }[] };
    expect(body.items.map((i) => i.id)).toEqual([events[1]!.id]);
  });

  it('answers 400 to a delivery id too long to name a run', async () => {
    const res = await send(h, pushTo('gitlab', attached.gitlab, { deliveryId: 'x'.repeat(201) }));
    expect((await expectProblem(res, 400)).detail).toMatch(/delivery id/);
  });

  it('documents the receivers, events and subscribers in the OpenAPI document', async () => {
    const doc = (await (await h.request('GET', '/openapi.json')).json()) as { paths: Record<string, Record<string, { security?: unknown[]; parameters?: unknown[] }>> };
    for (const provider of PROVIDERS) {
      const receiver = doc.paths[`/api/events-handler/v1/events/${provider}`]?.post;
      expect(receiver?.security).toEqual([]);
      // The connection's query parameter is documented (as a parameter, not a validated query schema).
      expect(receiver?.parameters).toEqual([expect.objectContaining({ name: 'c', in: 'query', required: false, schema: { type: 'string' } })]);
    }
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(['/api/v1/orgs/{org}/events', '/api/v1/orgs/{org}/events/{id}/deliveries', '/api/v1/orgs/{org}/subscribers', '/api/v1/orgs/{org}/subscribers/{id}']),
    );
  });

  describe('legacy hooks (made before per-connection credentials: the global secret, no connection in the URL)', () => {
    /** A repository attached on a connection to `baseUrl` whose hook is a legacy one (as the migration marks them). */
    async function attachedWithLegacyHook(organizationId: string, baseUrl: string, externalId: string) {
      const connectionId = await seedConnection(h, { organizationId, provider: 'gitlab', baseUrl });
      const { repositoryId } = await seedAttachedRepository(h, { organizationId, provider: 'gitlab', externalId, fullName: 'team/app', connectionId });
      const attachment = await h.db.selectFrom('attachments').select('id').where('repository_id', '=', repositoryId).executeTakeFirstOrThrow();
      await h.db.insertInto('hooks').values({ attachment_id: attachment.id, provider_hook_id: '900', events: JSON.stringify(['push_events']), credential_version: null }).execute();
      return repositoryId;
    }
    const legacyPush = (externalId: string, webUrl: string, secret = TEST_WEBHOOK_SECRETS.gitlab) =>
      pushTo('gitlab', { externalId, fullName: 'team/app' }, { payload: gitlabPushAt(webUrl), url: `https://forgelink.test${receiverPath('gitlab')}`, secret });

    it('are verified with the configured global secret and act only on attachments holding a legacy hook', async () => {
      const externalId = uniqueExternalId('gitlab');
      const { org: legacyOrg } = await createOrgWithToken(h);
      const { org: newOrg } = await createOrgWithToken(h);
      await attachedWithLegacyHook(legacyOrg.id, 'https://gitlab.one.test', externalId);
      // The same project attached by another organization since, through its own hook: the global secret does not reach it.
      await seedAttachedRepository(h, { organizationId: newOrg.id, provider: 'gitlab', externalId, fullName: 'team/app', connectionId: await seedConnection(h, { organizationId: newOrg.id, provider: 'gitlab', baseUrl: 'https://gitlab.one.test' }) });
      const push = legacyPush(externalId, 'https://gitlab.one.test/team/app');
      const res = await send(h, push);
      expect(res.status).toBe(202);
      expect((await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);
      expect((await eventsOfDelivery(h.db, 'gitlab', push.deliveryId)).map((e) => e.organization_id)).toEqual([legacyOrg.id]);

      // The global secret is no connection's credential, and a connection's credential no legacy hook's.
      await expectProblem(await send(h, pushTo('gitlab', attached.gitlab, { secret: TEST_WEBHOOK_SECRETS.gitlab })), 401);
      await expectProblem(await send(h, legacyPush(externalId, 'https://gitlab.one.test/team/app', hookOf.gitlab.secret)), 401);
    });

    it('tell apart one GitLab project id attached on two instances by the URL the delivery carries', async () => {
      const externalId = uniqueExternalId('gitlab');
      const orgs = [];
      for (const baseUrl of ['https://gitlab.one.test', 'https://gitlab.two.test/']) {
        const { org: o } = await createOrgWithToken(h);
        await attachedWithLegacyHook(o.id, baseUrl, externalId);
        orgs.push(o.id);
      }
      const fromTwo = legacyPush(externalId, 'https://gitlab.two.test/team/app');
      const res = await send(h, fromTwo);
      expect(res.status).toBe(202);
      expect((await resultOf<EventResult>(h, ((await res.json()) as { workflowId: string }).workflowId)).recorded).toBe(1);
      expect((await eventsOfDelivery(h.db, 'gitlab', fromTwo.deliveryId)).map((e) => e.organization_id)).toEqual([orgs[1]]);

      // A delivery from neither instance is not handed to either organization.
      const fromElsewhere = legacyPush(externalId, 'https://gitlab.three.test/team/app');
      const ignored = await send(h, fromElsewhere);
      expect(ignored.status).toBe(200);
      expect(await ignored.json()).toMatchObject({ status: 'ignored', reason: 'repository not attached' });
      expect(await deliveryRunExists(h, fromElsewhere)).toBe(false);
    });
  });

  it('accepts a GitLab delivery with neither Idempotency-Key nor X-Gitlab-Event-UUID (older GitLab), once', async () => {
    const push = pushTo('gitlab', attached.gitlab);
    const { 'idempotency-key': _key, 'x-gitlab-event-uuid': _uuid, ...headers } = push.headers;
    const first = await send(h, { ...push, headers });
    expect(first.status).toBe(202);
    const { workflowId } = (await first.json()) as { workflowId: string };
    expect(workflowId).toBe(`event:gitlab@${hookOf.gitlab.connectionId}:${workflowId.split(':').at(-1)}`);
    expect(workflowId).toMatch(/:sha256-[0-9a-f]{64}$/);
    const again = await send(h, { ...push, headers });
    expect(again.status).toBe(202);
    expect(((await again.json()) as { workflowId: string }).workflowId).toBe(workflowId);
    expect((await resultOf<EventResult>(h, workflowId)).recorded).toBe(1);
    expect(await eventsOfDelivery(h.db, 'gitlab', workflowId.split(':').at(-1)!)).toHaveLength(1);
  });

  it('reads headers from Node\'s parsed request behind a real HTTP server (as the API runs)', async () => {
    const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
      const s = serve({ fetch: h.app.fetch, hostname: '127.0.0.1', port: 0 }, () => resolve(s));
    });
    try {
      const { port } = server.address() as AddressInfo;
      const post = (d: { path: string; headers: Record<string, string>; body: string | Uint8Array }) =>
        fetch(`http://127.0.0.1:${port}${d.path}`, { method: 'POST', headers: d.headers, body: d.body });
      const generatedId = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
      for (const provider of PROVIDERS) {
        const valid = pushTo(provider, attached[provider]);
        // The request id goes on Node's answer directly here (api/request-context.ts): every answer carries it.
        const accepted = await post({ ...valid, headers: { ...valid.headers, 'x-request-id': `behind-server-${provider}` } });
        expect(accepted.status, provider).toBe(202);
        expect(accepted.headers.get('x-request-id'), provider).toBe(`behind-server-${provider}`);
        expect(accepted.headers.get('content-type'), provider).toMatch(/^application\/json/);
        expect(await accepted.json()).toMatchObject({ status: 'accepted', events: 1 });
        const forged = pushTo(provider, attached[provider], { secret: 'not-the-webhook-secret' });
        const refused = await post(forged);
        expect(refused.status, provider).toBe(401);
        expect(refused.headers.get('content-type'), provider).toBe('application/problem+json');
        expect(refused.headers.get('x-request-id'), provider).toMatch(generatedId);
        expect(((await refused.json()) as { requestId: string }).requestId).toBe(refused.headers.get('x-request-id'));
        expect(await deliveryRunExists(h, forged)).toBe(false);
      }
      const oversized = pushTo('gitlab', attached.gitlab);
      const big = await post({ ...oversized, body: `${' '.repeat(1024 * 1024)}${String(oversized.body)}` });
      expect(big.status).toBe(413);
      expect(big.headers.get('x-request-id')).toMatch(generatedId);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  describe('a delivery answered before its body has all arrived, behind a real HTTP server', () => {
    const LIMIT = 16 * 1024 * 1024;
    const CHUNK = 64 * 1024;
    let server: ReturnType<typeof serve>;
    let port: number;
    beforeAll(async () => {
      // A size limit above the 8 MB body (the harness's is 1 MiB); a request timeout short enough to see it cut a stalled sender.
      const app = h.appWith({ webhooks: { ...h.apiDeps.webhooks, maxBodyBytes: LIMIT } });
      server = await new Promise<ReturnType<typeof serve>>((resolve) => {
        const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0, serverOptions: { requestTimeout: 2000, connectionsCheckingInterval: 100 } }, () => resolve(s));
      });
      ({ port } = server.address() as AddressInfo);
    });
    afterAll(async () => {
      await new Promise<void>((resolve) => server?.close(() => resolve()));
    });

    interface Sent {
      status: number;
      headers: IncomingHttpHeaders;
      body: string;
      /** Errors of the request or its socket while it was sent and answered. */
      errors: string[];
      socket: Socket;
      reusedSocket: boolean;
    }

    /**
     * Posts `d` as a provider's sender does: the whole body written (here in 64 KiB chunks, a short
     * pause after every 1 MiB, as a sender on a slow link), then the answer read. `sendUpTo` stops
     * writing after that many bytes and waits for an answer as it is.
     */
    function post(d: { path: string; headers: Record<string, string>; body: string | Uint8Array }, options: { agent?: Agent; contentLength?: number; sendUpTo?: number } = {}) {
      const body = Buffer.from(d.body);
      const errors: string[] = [];
      return new Promise<Sent>((resolve, reject) => {
        const headers = { ...d.headers, 'content-length': String(options.contentLength ?? body.length) };
        const req = httpRequest({ hostname: '127.0.0.1', port, path: d.path, method: 'POST', headers, agent: options.agent ?? false });
        req.on('error', (error) => errors.push(`request: ${error.message}`));
        req.on('socket', (socket) => socket.on('error', (error) => errors.push(`socket: ${error.message}`)));
        req.on('close', () => reject(new Error(`no answer (${errors.join('; ') || 'closed'})`)));
        req.on('response', (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text, errors, socket: req.socket!, reusedSocket: req.reusedSocket }));
          res.on('error', reject);
        });
        void (async () => {
          const until = Math.min(body.length, options.sendUpTo ?? body.length);
          for (let offset = 0; offset < until && !req.destroyed; offset += CHUNK) {
            if (!req.write(body.subarray(offset, Math.min(offset + CHUNK, until)))) await once(req, 'drain');
            if ((offset + CHUNK) % (1024 * 1024) === 0) await setTimeout(10);
          }
          if (options.sendUpTo === undefined) req.end();
        })().catch((error: Error) => errors.push(`write: ${error.message}`));
      });
    }

    it('reads the rest of a delivery refused from its header credential before answering 401, and keeps the connection for the next one', async () => {
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        // A wrong header credential is refused before the body is read: most of the 8 MB are still on their way.
        const forged = pushTo('gitlab', attached.gitlab, { secret: 'not-the-credential-of-this-connection' });
        const refused = await post({ ...forged, body: `${' '.repeat(8 * 1024 * 1024)}${String(forged.body)}` }, { agent });
        expect(refused.errors).toEqual([]);
        expect(refused.status).toBe(401);
        expect(refused.headers['content-type']).toBe('application/problem+json');
        expect(JSON.parse(refused.body)).toMatchObject({ status: 401 });
        expect(refused.headers.connection).not.toBe('close');
        expect(await deliveryRunExists(h, forged)).toBe(false);

        const valid = await post(pushTo('gitlab', attached.gitlab), { agent });
        expect(valid).toMatchObject({ status: 202, errors: [], reusedSocket: true });
        expect(valid.socket).toBe(refused.socket);
      } finally {
        agent.destroy();
      }
    });

    it('answers 413 to a body declared over the limit without reading it, and closes the connection', async () => {
      // A keep-alive client: the close is the server's decision.
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const push = pushTo('gitlab', attached.gitlab);
        const tooLarge = await post(push, { agent, contentLength: LIMIT + 1, sendUpTo: CHUNK });
        expect(tooLarge.status).toBe(413);
        expect(tooLarge.headers['content-type']).toBe('application/problem+json');
        expect(tooLarge.headers.connection).toBe('close');
        if (!tooLarge.socket.closed) await once(tooLarge.socket, 'close');
        expect(await deliveryRunExists(h, push)).toBe(false);
      } finally {
        agent.destroy();
      }
    });

    it("cuts a sender that stalls in the middle of a refused delivery's body at the server's request timeout, while others are answered", async () => {
      const forged = pushTo('azure-devops', attached['azure-devops'], { secret: 'not-the-credential-of-this-connection' });
      const stalled = post(forged, { contentLength: 1024 * 1024, sendUpTo: CHUNK });
      // Meanwhile the server answers others.
      const other = await post(pushTo('gitlab', attached.gitlab, { secret: 'not-the-credential-of-this-connection' }));
      expect(other).toMatchObject({ status: 401, errors: [] });
      const cut = await stalled;
      expect(cut.status).toBe(408);
      if (!cut.socket.closed) await once(cut.socket, 'close');
    });
  });
});
