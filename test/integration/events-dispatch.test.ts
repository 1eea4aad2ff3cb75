import { temporal } from '@temporalio/proto';
import { createHash, randomInt, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type { WebhookDefinition } from '@octokit/webhooks-examples';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open } from '../../lib/crypto.ts';
import type { Provider } from '../../lib/domain.ts';
import { normalizeWebhook } from '../../api/webhooks/normalize.ts';
import type { EventInput, EventResult } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';
import { seedConnection } from '../support/attachments.ts';
import { manualHold, startFlakyProxy } from '../support/flaky-proxy.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId } from '../support/events.ts';
import { deliveryUrlOf } from '../support/attachments.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { createOrgWithToken, historyText, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';
import { historyBytes, historyEvents, localStepsWithResultsOf, MAX_HISTORY_BYTES, recordHistory } from '../support/histories.ts';

/** Short, so giving up on a subscriber that never answers takes seconds: attempts at 0, 1 and 3 s, none at 7 s. */
const DEADLINE_SECONDS = 6;

const githubExamples: WebhookDefinition[] = createRequire(import.meta.url)('@octokit/webhooks-examples');

interface Org {
  org: { id: string; slug: string };
  token: string;
}

describe('event workflow: subscribers, dispatch, events API, repository cache', () => {
  let h: Harness;
  const subscribers: FakeSubscriber[] = [];

  beforeAll(async () => {
    h = await startHarness({ settings: { subscriberDeliveryDeadlineSeconds: DEADLINE_SECONDS } });
  });
  afterAll(async () => {
    await h?.close();
    await Promise.all(subscribers.map((s) => s.close()));
  });

  async function newSubscriber() {
    const subscriber = await startFakeSubscriber();
    subscribers.push(subscriber);
    return subscriber;
  }

  async function subscribe(o: Org, subscriber: FakeSubscriber, filters: { kinds?: string[]; refGlobs?: string[] } = {}) {
    const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: subscriber.url, ...filters } });
    expect(res.status, await res.clone().text()).toBe(201);
    const created = (await res.json()) as { id: string; secret: string; url: string; kinds: string[]; refGlobs: string[] };
    subscriber.verifyWith(created.secret);
    return created;
  }

  async function attachedRepository(o: Org, provider: Provider, fullName = `acme/${randomUUID().slice(0, 8)}`) {
    const repository = { externalId: uniqueExternalId(provider), fullName };
    return { ...repository, ...(await seedAttachedRepository(h, { organizationId: o.org.id, provider, ...repository })) };
  }

  /**
   * Sends a GitLab / Bitbucket delivery as the hook of the connection that attached the payload's
   * repository sends it (its URL, its credential), and waits for its event run to finish.
   */
  async function deliver(provider: 'gitlab' | 'bitbucket', payload: Payload, options: { connectionId?: string; deliveryId?: string } = {}) {
    const externalId = String(provider === 'gitlab' ? payload.project.id : (payload.repository ?? payload.pullRequest.toRef.repository).id);
    const connectionId = options.connectionId ?? (await h.db.selectFrom('repositories').select('connection_id').where('provider', '=', provider).where('external_id', '=', externalId).executeTakeFirstOrThrow()).connection_id;
    const { secret } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider });
    // Every delivery its own body: the same body again for a connection is a replay.
    const d = delivery(provider, { ...payload, test_push: randomUUID() }, { deliveryId: options.deliveryId ?? randomUUID(), secret, url: deliveryUrlOf(provider, connectionId) });
    const res = await send(h, d);
    expect(res.status, await res.clone().text()).toBe(202);
    const { workflowId } = (await res.json()) as { workflowId: string };
    return { delivery: d, workflowId, result: await resultOf<EventResult>(h, workflowId) };
  }

  const gitlabPush = (repository: { externalId: string; fullName: string }, ref = 'refs/heads/master') => ({
    ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository),
    ref,
  });

  describe('subscribers API', () => {
    it('registers an endpoint, shows its secret once and stores it sealed', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      const created = await subscribe(o, subscriber, { kinds: ['push', 'tag.created'], refGlobs: ['main', 'release/**'] });
      expect(created).toMatchObject({ url: subscriber.url, kinds: ['push', 'tag.created'], refGlobs: ['main', 'release/**'] });
      expect(created.secret).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);

      const listed = await h.request('GET', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token });
      const text = await listed.text();
      expect(JSON.parse(text)).toEqual({ items: [expect.objectContaining({ id: created.id, url: subscriber.url })] });
      expect(text).not.toContain(created.secret);
      const one = await h.request('GET', `/api/v1/orgs/${o.org.slug}/subscribers/${created.id}`, { token: o.token });
      expect(await one.json()).not.toHaveProperty('secret');

      const row = await h.db.selectFrom('subscribers').selectAll().where('id', '=', created.id).executeTakeFirstOrThrow();
      expect(row.secret).not.toContain(created.secret);
      expect(open(h.keys, row.secret, created.id)).toBe(created.secret);
      expect(h.logs.join('\n')).not.toContain(created.secret);
    });

    it('accepts https, and http only for security.allowHttpHosts; rejects bad filters', async () => {
      const o = await createOrgWithToken(h);
      const post = (body: unknown) => h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body });
      expect((await post({ url: 'https://ci.example.com/hooks/forgelink' })).status).toBe(201);
      const cases: [unknown, RegExp][] = [
        [{ url: 'http://ci.example.com/hooks' }, /plain http/],
        [{ url: 'https://169.254.169.254/latest' }, /link-local or metadata/],
        [{ url: 'https://user:pass@ci.example.com/' }, /credentials/],
        [{ url: 'ftp://ci.example.com/' }, /not allowed/],
        [{ url: 'https://ci.example.com/', kinds: ['issue.opened'] }, /kinds/],
        [{ url: 'https://ci.example.com/', refGlobs: [''] }, /refGlobs/],
        [{ url: 'https://ci.example.com/', refGlobs: ['release/***'] }, /three or more/],
      ];
      for (const [body, detail] of cases) {
        const res = await post(body);
        expect(res.status, JSON.stringify(body)).toBe(400);
        expect(((await res.json()) as { detail: string }).detail).toMatch(detail);
      }
    });

    it("hides one organization's subscribers from another and deletes", async () => {
      const o = await createOrgWithToken(h);
      const other = await createOrgWithToken(h);
      const created = await subscribe(o, await newSubscriber());
      expect((await h.request('GET', `/api/v1/orgs/${o.org.slug}/subscribers/${created.id}`, { token: other.token })).status).toBe(404);
      expect((await h.request('DELETE', `/api/v1/orgs/${other.org.slug}/subscribers/${created.id}`, { token: other.token })).status).toBe(404);
      expect((await h.request('DELETE', `/api/v1/orgs/${o.org.slug}/subscribers/${created.id}`, { token: o.token })).status).toBe(204);
      expect((await h.request('GET', `/api/v1/orgs/${o.org.slug}/subscribers/${created.id}`, { token: o.token })).status).toBe(404);
    });
  });

  describe('dispatch', () => {
    it('delivers to subscribers that answer at once within one workflow task; a retry goes on in a durable activity', async () => {
      const o = await createOrgWithToken(h);
      const [quick, flaky] = [await newSubscriber(), await newSubscriber()];
      await subscribe(o, quick);
      await subscribe(o, flaky);
      const repository = await attachedRepository(o, 'gitlab');

      const eventTypes = async (workflowId: string) => {
        const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
        return (history.events ?? []).map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
      };
      const first = await deliver('gitlab', gitlabPush(repository));
      expect(first.result).toEqual({ recorded: 1, delivered: 2, undelivered: [] });
      const types = await eventTypes(first.workflowId);
      expect(types.filter((t) => t === 'EVENT_TYPE_WORKFLOW_TASK_COMPLETED')).toHaveLength(1);
      // The patch record-with-first-attempts and recordEventAndDispatch, which made both first attempts.
      expect(types.filter((t) => t === 'EVENT_TYPE_MARKER_RECORDED')).toHaveLength(2);
      expect(types).not.toContain('EVENT_TYPE_ACTIVITY_TASK_SCHEDULED');
      const steps = localStepsWithResultsOf(await historyEvents(h.client, first.workflowId));
      expect(steps.map((s) => s.activityType)).toEqual(['recordEventAndDispatch']);
      expect(steps[0]!.result).toMatchObject({ recorded: 1, firstAttempts: [{ delivered: true, statusCode: 204 }, { delivered: true, statusCode: 204 }] });

      flaky.server.failNext('deliver', 1, { status: 503 });
      const second = await deliver('gitlab', gitlabPush(repository));
      expect(second.result).toEqual({ recorded: 1, delivered: 2, undelivered: [] });
      expect(await eventTypes(second.workflowId)).toEqual(expect.arrayContaining(['EVENT_TYPE_TIMER_FIRED', 'EVENT_TYPE_ACTIVITY_TASK_COMPLETED']));
      expect(quick.received).toHaveLength(2);
      expect(flaky.received).toHaveLength(2);
      // event-delivered-inline and event-retried-after-inline-failure are these runs before recordEventAndDispatch.
      await recordHistory(h.client, first.workflowId, 'event-recorded-with-first-attempts');
      await recordHistory(h.client, second.workflowId, 'event-retried-after-first-attempt-in-recording');
    });

    it('waits out the Retry-After of a refused first attempt before the second', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      await subscribe(o, subscriber);
      const repository = await attachedRepository(o, 'gitlab');
      subscriber.server.failNext('deliver', 1, { status: 429, headers: { 'retry-after': '2' }, text: 'slow down' });

      const { result, workflowId } = await deliver('gitlab', gitlabPush(repository));
      expect(result).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
      const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
      const timers = (history.events ?? []).flatMap((e) => (e.timerStartedEventAttributes ? [e.timerStartedEventAttributes.startToFireTimeout] : []));
      expect(timers.map((t) => Number(t?.seconds ?? 0) * 1000 + Math.round((t?.nanos ?? 0) / 1e6))).toEqual([2000]);
    });

    it('retries a subscriber that fails twice, then delivers once, signed, and records every attempt', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      const { id: subscriberId, secret } = await subscribe(o, subscriber);
      const repository = await attachedRepository(o, 'gitlab');
      subscriber.server.failNext('deliver', 2, { status: 503, text: 'warming up' });

      const { result, workflowId } = await deliver('gitlab', gitlabPush(repository));
      expect(result).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
      expect(subscriber.server.calls.map((c) => c.status)).toEqual([503, 503, 204]);
      expect(subscriber.received).toHaveLength(1);
      const [received] = subscriber.received;
      expect(received!.signatureValid).toBe(true);
      expect(received!.body).toMatchObject({ kind: 'push', provider: 'gitlab', repository: { externalId: repository.externalId }, ref: { name: 'master' } });
      expect(received!.headers['x-forgelink-event']).toBe('push');
      expect(received!.headers['x-forgelink-event-id']).toBe(received!.body.id);
      expect(received!.headers['x-forgelink-attempt']).toBe('3');

      const res = await h.request('GET', `/api/v1/orgs/${o.org.slug}/events/${received!.body.id}/deliveries`, { token: o.token });
      expect(res.status).toBe(200);
      const { items } = (await res.json()) as { items: { subscriberId: string; attempt: number; succeeded: boolean; statusCode?: number; error?: string }[] };
      expect(items.map(({ subscriberId: s, attempt, succeeded, statusCode, error }) => ({ s, attempt, succeeded, statusCode, error }))).toEqual([
        { s: subscriberId, attempt: 1, succeeded: false, statusCode: 503, error: 'answered 503' },
        { s: subscriberId, attempt: 2, succeeded: false, statusCode: 503, error: 'answered 503' },
        { s: subscriberId, attempt: 3, succeeded: true, statusCode: 204, error: undefined },
      ]);
      // The subscriber's secret never enters the run.
      expect(await historyText(h, workflowId)).not.toContain(secret);
      await recordHistory(h.client, workflowId, 'event-retried-twice');
    });

    it('gives up when the dispatch deadline passes, recording each failed attempt', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      const { id: subscriberId } = await subscribe(o, subscriber);
      const repository = await attachedRepository(o, 'gitlab');
      subscriber.server.failNext('deliver', 100, { status: 500 });

      const { result, workflowId } = await deliver('gitlab', gitlabPush(repository));
      subscriber.server.clearFaults();
      expect(result.recorded).toBe(1);
      expect(result.delivered).toBe(0);
      // Retries until the deadline add to the run's history, which stays small.
      expect(await historyBytes(h.client, workflowId)).toBeLessThan(MAX_HISTORY_BYTES);
      expect(result.undelivered).toEqual([{ eventId: expect.any(String), subscriberId, reason: expect.any(String) }]);
      const attempts = await h.db.selectFrom('dispatch_attempts').selectAll().where('subscriber_id', '=', subscriberId).orderBy('attempt').execute();
      expect(attempts.length).toBeGreaterThanOrEqual(3);
      expect(attempts.every((a) => !a.succeeded && a.status_code === 500)).toBe(true);
      expect(attempts.map((a) => a.attempt)).toEqual(attempts.map((_, i) => i + 1));
      expect(subscriber.received).toHaveLength(0);
    });

    it('sends nothing again when a delivery runs a second time (after Temporal forgot the first run)', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      await subscribe(o, subscriber);
      const repository = await attachedRepository(o, 'gitlab');
      const { delivery: d, workflowId } = await deliver('gitlab', gitlabPush(repository));
      expect(subscriber.received).toHaveLength(1);

      // The receiver refuses a duplicate id; past the namespace's retention the id is free again.
      const input: EventInput = {
        provider: 'gitlab',
        deliveryId: d.deliveryId,
        events: normalizeWebhook('gitlab', d.headers, d.body),
        receivedAt: new Date().toISOString(),
        connectionId: repository.connectionId,
        bodyDigest: createHash('sha256').update(d.body).digest('hex'),
      };
      const rerun = await h.client.workflow.execute('eventWorkflow', { taskQueue: h.taskQueue, workflowId, args: [input] });
      expect(rerun).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
      expect(subscriber.received).toHaveLength(1);
      expect(await eventsOfDelivery(h.db, 'gitlab', d.deliveryId)).toHaveLength(1);
    });

    it('records an unreachable subscriber as an attempt with the network error', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      const { id: subscriberId } = await subscribe(o, subscriber);
      const repository = await attachedRepository(o, 'gitlab');
      subscriber.server.dropNext('deliver', 1);

      const { result } = await deliver('gitlab', gitlabPush(repository));
      expect(result.delivered).toBe(1);
      const attempts = await h.db.selectFrom('dispatch_attempts').selectAll().where('subscriber_id', '=', subscriberId).orderBy('attempt').execute();
      expect(attempts.map((a) => [a.attempt, a.succeeded, a.status_code])).toEqual([
        [1, false, null],
        [2, true, 204],
      ]);
      expect(attempts[0]!.error).toBeTruthy();
    });

    it("sends each event only to subscribers whose kinds and ref globs match, in the event's organization", async () => {
      const o = await createOrgWithToken(h);
      const elsewhere = await createOrgWithToken(h);
      const [everything, masterOnly, featureBranches, tags, otherOrg] = await Promise.all([1, 2, 3, 4, 5].map(() => newSubscriber()));
      await subscribe(o, everything!);
      await subscribe(o, masterOnly!, { refGlobs: ['master'] });
      await subscribe(o, featureBranches!, { kinds: ['branch.created'], refGlobs: ['feature/*'] });
      await subscribe(o, tags!, { kinds: ['tag.created', 'tag.deleted'] });
      await subscribe(elsewhere, otherOrg!);
      const repository = await attachedRepository(o, 'bitbucket', 'PROJ/three-refs');

      const { result } = await deliver('bitbucket', withRepository('bitbucket', fixture('bitbucket/repo-refs-changed-three-refs.json'), repository));
      expect(result).toEqual({ recorded: 3, delivered: 6, undelivered: [] });
      const kinds = (s: FakeSubscriber) => s.received.map((r) => `${r.body.kind} ${(r.body.ref as { name: string }).name}`).sort();
      expect(kinds(everything!)).toEqual(['branch.created feature/login', 'push master', 'tag.deleted v0.9']);
      expect(kinds(masterOnly!)).toEqual(['push master']);
      expect(kinds(featureBranches!)).toEqual(['branch.created feature/login']);
      expect(kinds(tags!)).toEqual(['tag.deleted v0.9']);
      expect(otherOrg!.received).toEqual([]);
      expect([everything, masterOnly, featureBranches, tags].every((s) => s!.received.every((r) => r.signatureValid))).toBe(true);
    });

    it('records and dispatches once per organization when several attach the same repository, each through its own hook', async () => {
      const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
      const [subA, subB] = [await newSubscriber(), await newSubscriber()];
      await subscribe(a, subA);
      await subscribe(b, subB);
      const externalId = uniqueExternalId('gitlab');
      const fullName = 'shared/monorepo';
      const repoA = await seedAttachedRepository(h, { organizationId: a.org.id, provider: 'gitlab', externalId, fullName });
      const repoB = await seedAttachedRepository(h, { organizationId: b.org.id, provider: 'gitlab', externalId, fullName });

      // Each organization's hook delivers the push (older GitLab gives both deliveries one id): each run records its own.
      const deliveryId = randomUUID();
      for (const repo of [repoA, repoB]) {
        const { result } = await deliver('gitlab', gitlabPush({ externalId, fullName }), { connectionId: repo.connectionId, deliveryId });
        expect(result).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
      }
      const rows = await eventsOfDelivery(h.db, 'gitlab', deliveryId);
      expect(rows.map((r) => [r.organization_id, r.repository_id]).sort()).toEqual(
        [
          [a.org.id, repoA.repositoryId],
          [b.org.id, repoB.repositoryId],
        ].sort(),
      );
      expect(subA.received.map((r) => r.body.id)).toEqual([rows.find((r) => r.organization_id === a.org.id)!.id]);
      expect(subB.received.map((r) => r.body.id)).toEqual([rows.find((r) => r.organization_id === b.org.id)!.id]);
    });
  });

  describe('events API and event runs', () => {
    it('lists events newest first with kind, repository and cursor paging, per organization', async () => {
      const o = await createOrgWithToken(h);
      const other = await createOrgWithToken(h);
      const repository = await attachedRepository(o, 'gitlab');
      const second = await attachedRepository(o, 'gitlab');
      const ids: string[] = [];
      for (const ref of ['refs/heads/a', 'refs/heads/b', 'refs/heads/c']) {
        const { delivery: d } = await deliver('gitlab', gitlabPush(repository, ref));
        ids.unshift((await eventsOfDelivery(h.db, 'gitlab', d.deliveryId))[0]!.id);
      }
      const { delivery: tagDelivery } = await deliver('gitlab', withRepository('gitlab', fixture('gitlab/tag-push.json'), second));
      const tagId = (await eventsOfDelivery(h.db, 'gitlab', tagDelivery.deliveryId))[0]!.id;

      const get = async (query: string, token = o.token) => {
        const res = await h.request('GET', `/api/v1/orgs/${o.org.slug}/events${query}`, { token });
        return { status: res.status, body: (await res.json()) as { items: { id: string; kind: string; receivedAt: string; repositoryId?: string; ref?: { name: string } }[]; nextCursor?: string } };
      };
      const all = await get('');
      expect(all.body.items.map((i) => i.id)).toEqual([tagId, ...ids]);
      expect(all.body.items[1]).toMatchObject({ kind: 'push', ref: { name: 'c' }, repositoryId: repository.repositoryId, provider: 'gitlab', deliveryId: expect.any(String) });
      expect(Date.parse(all.body.items[0]!.receivedAt)).toBeGreaterThanOrEqual(Date.parse(all.body.items[1]!.receivedAt));

      const page1 = await get(`?repository=${repository.repositoryId}&limit=2`);
      expect(page1.body.items.map((i) => i.id)).toEqual(ids.slice(0, 2));
      const page2 = await get(`?repository=${repository.repositoryId}&limit=2&cursor=${page1.body.nextCursor}`);
      expect(page2.body.items.map((i) => i.id)).toEqual(ids.slice(2));
      expect(page2.body.nextCursor).toBeUndefined();

      expect((await get('?kind=tag.created')).body.items.map((i) => i.id)).toEqual([tagId]);
      expect((await get(`?repository=${encodeURIComponent(second.fullName)}`)).body.items.map((i) => i.id)).toEqual([tagId]);
      expect((await get('?cursor=not-a-cursor')).status).toBe(400);
      expect((await get('?kind=issue.opened')).status).toBe(400);
      expect((await get('', other.token)).status).toBe(404);
      expect((await h.request('GET', `/api/v1/orgs/${o.org.slug}/events/${tagId}`, { token: o.token })).status).toBe(200);
      expect((await h.request('GET', `/api/v1/orgs/${other.org.slug}/events/${tagId}`, { token: other.token })).status).toBe(404);
    });

    it('shows an event run to the organizations it concerns and to the admin only', async () => {
      const o = await createOrgWithToken(h);
      const other = await createOrgWithToken(h);
      const repository = await attachedRepository(o, 'gitlab');
      const { workflowId } = await deliver('gitlab', gitlabPush(repository));
      const path = `/api/v1/workflows/${encodeURIComponent(workflowId)}`;
      const mine = await h.request('GET', path, { token: o.token });
      expect(mine.status).toBe(200);
      expect(await mine.json()).toMatchObject({ type: 'eventWorkflow', status: 'COMPLETED', result: { recorded: 1 } });
      expect((await h.request('GET', path, { token: other.token })).status).toBe(404);
      expect((await h.request('GET', path, { token: h.adminToken })).status).toBe(200);
    });
    it("shows each organization only its own part of an event run's result", async () => {
      const a = await createOrgWithToken(h);
      const b = await createOrgWithToken(h);
      const installationId = String(randomInt(1_000_000, 2_000_000_000));
      const repository = { externalId: uniqueExternalId('github'), fullName: 'octo-org/shared' };
      const subscribed: Record<string, { failing: string; answering?: string }> = {};
      for (const [o, answering] of [[a, false], [b, true]] as const) {
        const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: installationId });
        await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'github', connectionId, ...repository });
        const failing = await newSubscriber();
        failing.server.failNext('deliver', 100, { status: 500 });
        subscribed[o.org.id] = { failing: (await subscribe(o, failing)).id, ...(answering ? { answering: (await subscribe(o, await newSubscriber())).id } : {}) };
      }
      const payload = withRepository('github', fixture(PUSH_FIXTURES.github), repository);
      payload.installation.id = Number(installationId);
      const d = delivery('github', payload, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github });
      const res = await send(h, d);
      expect(res.status, await res.clone().text()).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      const full = await resultOf<EventResult>(h, workflowId);
      expect(full.recorded).toBe(2);
      expect(full.undelivered).toHaveLength(2);

      const resultFor = async (token: string) => {
        const run = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token });
        expect(run.status).toBe(200);
        return ((await run.json()) as { result: EventResult }).result;
      };
      const eventOf = async (o: Org) => (await eventsOfDelivery(h.db, 'github', d.deliveryId)).find((e) => e.organization_id === o.org.id)!.id;
      expect(await resultFor(a.token)).toEqual({ recorded: 1, delivered: 0, undelivered: [{ eventId: await eventOf(a), subscriberId: subscribed[a.org.id]!.failing, reason: expect.any(String) }] });
      expect(await resultFor(b.token)).toEqual({ recorded: 1, delivered: 1, undelivered: [{ eventId: await eventOf(b), subscriberId: subscribed[b.org.id]!.failing, reason: expect.any(String) }] });
      // The admin sees the whole run; the run itself is unchanged.
      expect(await resultFor(h.adminToken)).toEqual(full);
    });
  });

  describe('a failed event run', () => {
    it("shows an organization of a shared delivery only the failure's kind; the admin reads its reason", async () => {
      const a = await createOrgWithToken(h);
      const b = await createOrgWithToken(h);
      const installationId = String(randomInt(1_000_000, 2_000_000_000));
      const repository = { externalId: uniqueExternalId('github'), fullName: 'octo-org/shared-failing' };
      for (const o of [a, b]) {
        const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: installationId });
        await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'github', connectionId, ...repository });
      }
      // B's subscriber takes the event, and its answer is held: the run is caught in flight, and the operator terminates it.
      const slow = await newSubscriber();
      const proxy = await startFlakyProxy(slow.url);
      const hold = manualHold();
      proxy.fault = () => hold.fault;
      const registered = await h.request('POST', `/api/v1/orgs/${b.org.slug}/subscribers`, { token: b.token, body: { url: `${proxy.url}/events` } });
      expect(registered.status).toBe(201);
      const bSubscriber = ((await registered.json()) as { id: string }).id;
      await subscribe(a, await newSubscriber());

      const payload = withRepository('github', fixture(PUSH_FIXTURES.github), repository);
      payload.installation.id = Number(installationId);
      const res = await send(h, delivery('github', payload, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github }));
      expect(res.status).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      await hold.held;
      const reason = `subscriber ${bSubscriber} of ${b.org.slug} hangs`;
      await h.client.workflow.getHandle(workflowId).terminate(reason);
      hold.release('drop');
      await proxy.close();

      const runFor = async (token: string) => {
        const run = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token });
        expect(run.status).toBe(200);
        return (await run.json()) as { status: string; failure?: { message: string; type?: string } };
      };
      for (const o of [a, b]) {
        const run = await runFor(o.token);
        expect(run.status).toBe('TERMINATED');
        expect(run.failure!.message).toContain('shown to the operator');
        expect(JSON.stringify(run)).not.toContain(bSubscriber);
        expect(JSON.stringify(run)).not.toContain(b.org.slug);
      }
      expect((await runFor(h.adminToken)).failure).toEqual({ message: reason });
    });

    it('shows the organization a connection\'s own hook delivered to the whole failure', async () => {
      const o = await createOrgWithToken(h);
      const repository = await attachedRepository(o, 'gitlab');
      const slow = await newSubscriber();
      const proxy = await startFlakyProxy(slow.url);
      const hold = manualHold();
      proxy.fault = () => hold.fault;
      const registered = await h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: `${proxy.url}/events` } });
      expect(registered.status).toBe(201);
      const { secret } = await ensureWebhookCredential(h.db, h.keys, { id: repository.connectionId, provider: 'gitlab' });
      const res = await send(h, delivery('gitlab', gitlabPush(repository), { deliveryId: randomUUID(), secret, url: deliveryUrlOf('gitlab', repository.connectionId) }));
      expect(res.status).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      await hold.held;
      await h.client.workflow.getHandle(workflowId).terminate('stuck subscriber');
      hold.release('drop');
      await proxy.close();
      const run = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token: o.token });
      expect(((await run.json()) as { failure?: unknown }).failure).toEqual({ message: 'stuck subscriber' });
    });
  });

  describe('repository cache', () => {
    function installationRepositories(action: 'added' | 'removed', installationId: number, repository: { id: number; full_name: string }): Payload {
      const examples = githubExamples.find((d) => d.name === 'installation_repositories')!.examples as Payload[];
      const example = structuredClone(examples.find((e) => e.action === action)!);
      example.installation.id = installationId;
      const repo = { id: repository.id, node_id: 'R_test', name: repository.full_name.split('/')[1], full_name: repository.full_name, private: true };
      example.repositories_added = action === 'added' ? [repo] : [];
      example.repositories_removed = action === 'removed' ? [repo] : [];
      return example;
    }

    async function deliverGithub(payload: Payload, event: string) {
      const d = delivery('github', payload, { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github, githubEvent: event });
      const res = await send(h, d);
      return { res, delivery: d };
    }

    it('adds and removes repositories an installation gains and loses, for connections bound to it', async () => {
      const o = await createOrgWithToken(h);
      const subscriber = await newSubscriber();
      await subscribe(o, subscriber, { kinds: ['repository.added', 'repository.removed'] });
      const installationId = randomInt(1_000_000, 2_000_000_000);
      const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: String(installationId) });
      const repo = { id: Number(uniqueExternalId('github')), full_name: 'octo-org/new-service' };
      const cached = () => h.db.selectFrom('repositories').selectAll().where('connection_id', '=', connectionId).where('external_id', '=', String(repo.id)).executeTakeFirst();

      const added = await deliverGithub(installationRepositories('added', installationId, repo), 'installation_repositories');
      expect(added.res.status).toBe(202);
      const addedRun = await resultOf<EventResult>(h, ((await added.res.json()) as { workflowId: string }).workflowId);
      expect(addedRun).toEqual({ recorded: 1, delivered: 1, undelivered: [] });
      expect(await cached()).toMatchObject({ organization_id: o.org.id, provider: 'github', full_name: 'octo-org/new-service', vanished_at: null });
      const [addedEvent] = await eventsOfDelivery(h.db, 'github', added.delivery.deliveryId);
      expect(addedEvent).toMatchObject({ kind: 'repository.added', organization_id: o.org.id, repository_id: (await cached())!.id });

      const removed = await deliverGithub(installationRepositories('removed', installationId, repo), 'installation_repositories');
      expect(removed.res.status).toBe(202);
      await resultOf(h, ((await removed.res.json()) as { workflowId: string }).workflowId);
      expect((await cached())!.vanished_at).toBeInstanceOf(Date);
      expect(subscriber.received.map((r) => r.body.kind)).toEqual(['repository.added', 'repository.removed']);

      // An installation no connection is bound to: acknowledged, nothing started.
      const stranger = await deliverGithub(installationRepositories('added', installationId + 1, repo), 'installation_repositories');
      expect(stranger.res.status).toBe(200);
    });

    it('follows a rename that an event of an attached repository reports', async () => {
      const o = await createOrgWithToken(h);
      const repository = await attachedRepository(o, 'gitlab', 'team/old-name');
      await deliver('gitlab', gitlabPush({ externalId: repository.externalId, fullName: 'team/new-name' }));
      const row = await h.db.selectFrom('repositories').select('full_name').where('id', '=', repository.repositoryId).executeTakeFirstOrThrow();
      expect(row.full_name).toBe('team/new-name');
    });
  });
});
