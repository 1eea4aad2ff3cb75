import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Provider } from '../../lib/domain.ts';
import { workflowIds, type EventInput, type EventResult } from '../../workflows/contract.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Payload } from '../fakes/webhook-deliveries.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyBytes, MAX_HISTORY_BYTES, startInput } from '../support/histories.ts';

/**
 * Deliveries of any size and content up to webhooks.maxBodyBytes are recorded, every ref change as
 * its own event, while no run's history grows with the delivery: the receiver stores the events in
 * the intake table and the event run's input names the row.
 */
const FULL_NAMES: Record<Provider, string> = {
  github: 'octo-org/durable',
  gitlab: 'group/durable',
  bitbucket: 'PROJ/durable',
  'azure-devops': 'Fabrikam/durable',
};
const MAX_BODY_BYTES = 25 * 1024 * 1024;
const REF_CHANGES = 10_000;

describe('durable deliveries (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  let org: { id: string };
  const repositories = {} as Record<Provider, { externalId: string; fullName: string }>;
  const hooks = {} as Record<Provider, { connectionId: string; hook: DeliveringHook }>;

  beforeAll(async () => {
    // The recording's window open for Bitbucket's legacy hook (as settingsFromConfig with webhooks.acceptLegacyHooks): a run started before the intake table carries no connection.
    h = await startHarness({ maxBodyBytes: MAX_BODY_BYTES, settings: { legacyHookProviders: ['bitbucket'] } });
    ({ org } = await createOrgWithToken(h));
    for (const provider of ['github', 'bitbucket', 'azure-devops'] as const) {
      repositories[provider] = { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] };
      // Bitbucket's also holds a legacy hook: a run started before the intake table (and before per-connection credentials) acts on it.
      const { connectionId, hook } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repositories[provider], legacyHook: provider === 'bitbucket' });
      hooks[provider] = { connectionId, hook };
    }
  });
  afterAll(async () => {
    await h?.close();
  });

  function signed(provider: Provider, payload: Payload) {
    return delivery(provider, withRepository(provider, payload, repositories[provider]), { deliveryId: randomUUID(), ...hooks[provider].hook });
  }

  /** Sends the delivery twice (a redelivery), expects 202 both times, waits for the run and returns its result. */
  async function deliverTwice(push: ReturnType<typeof signed>) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await send(h, push);
      expect(res.status, await res.clone().text()).toBe(202);
    }
    const workflowId = workflowIds.event(push.provider, push.deliveryId, push.provider === 'github' ? undefined : hooks[push.provider].connectionId);
    const result = await resultOf<EventResult>(h, workflowId);
    expect(await historyBytes(h.client, workflowId)).toBeLessThan(MAX_HISTORY_BYTES);
    return { workflowId, result };
  }

  async function expectEveryRefRecordedOnce(provider: Provider, deliveryId: string, refNames: string[]) {
    const events = await eventsOfDelivery(h.db, provider, deliveryId);
    expect(events).toHaveLength(refNames.length);
    expect(events.map((e) => e.sequence)).toEqual(refNames.map((_, i) => i));
    expect(events.map((e) => e.event.ref?.name)).toEqual(refNames);
  }

  it(`records a signed Bitbucket delivery with ${REF_CHANGES} ref changes, each once, in a small run`, async () => {
    const payload = fixture(PUSH_FIXTURES.bitbucket);
    const template = payload.changes[0];
    const refNames = Array.from({ length: REF_CHANGES }, (_, i) => `mirror/branch-${i}`);
    payload.changes = refNames.map((name) => ({ ...template, ref: { ...template.ref, id: `refs/heads/${name}`, displayId: name }, refId: `refs/heads/${name}` }));
    const push = signed('bitbucket', payload);
    expect(push.body.length).toBeGreaterThan(2 * 1024 * 1024);

    const { workflowId, result } = await deliverTwice(push);
    expect(result).toMatchObject({ recorded: REF_CHANGES });
    await expectEveryRefRecordedOnce('bitbucket', push.deliveryId, refNames);
    expect(await startInput<EventInput>(h.client, workflowId)).toMatchObject({ summary: { events: REF_CHANGES, kinds: { push: REF_CHANGES }, repositories: [FULL_NAMES.bitbucket] } });
  });

  it(`records an Azure DevOps push with ${REF_CHANGES} ref updates, each once, in a small run`, async () => {
    const payload = fixture(PUSH_FIXTURES['azure-devops']);
    const template = payload.resource.refUpdates[0];
    const refNames = Array.from({ length: REF_CHANGES }, (_, i) => `import/tag-source-${i}`);
    payload.resource.refUpdates = refNames.map((name) => ({ ...template, name: `refs/heads/${name}` }));
    const push = signed('azure-devops', payload);

    const { result } = await deliverTwice(push);
    expect(result).toMatchObject({ recorded: REF_CHANGES });
    await expectEveryRefRecordedOnce('azure-devops', push.deliveryId, refNames);
  });

  it('acknowledges a 20 MiB GitHub delivery within 5 s and records it', async () => {
    const payload = fixture(PUSH_FIXTURES.github);
    const commit = payload.commits[0];
    const message = 'x'.repeat(10 * 1024);
    payload.commits = Array.from({ length: 2048 }, (_, i) => ({ ...commit, id: String(i).padStart(40, '0'), message }));
    const push = signed('github', payload);
    expect(push.body.length).toBeGreaterThan(20 * 1024 * 1024);

    const started = performance.now();
    const res = await send(h, push);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(res.status, await res.clone().text()).toBe(202);
    const workflowId = workflowIds.event('github', push.deliveryId);
    expect(await resultOf<EventResult>(h, workflowId)).toMatchObject({ recorded: 1 });
    const [event] = await eventsOfDelivery(h.db, 'github', push.deliveryId);
    expect(event!.event).toMatchObject({ kind: 'push', commitCount: 2048 });
    expect(await historyBytes(h.client, workflowId)).toBeLessThan(MAX_HISTORY_BYTES);
  });

  it('records a delivery with NUL characters, each replaced by U+FFFD, the rest of each string kept', async () => {
    const payload = fixture(PUSH_FIXTURES.github);
    payload.commits[0].message = 'fix\u0000 the build';
    payload.ref = 'refs/heads/nul\u0000branch';
    const push = signed('github', payload);
    expect(push.body).toContain('\\u0000');

    const res = await send(h, push);
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await resultOf<EventResult>(h, workflowIds.event('github', push.deliveryId))).toMatchObject({ recorded: 1 });
    const [event] = await eventsOfDelivery(h.db, 'github', push.deliveryId);
    expect(event!.event.ref?.name).toBe('nul\uFFFDbranch');
  });

  it('completes a run started before the intake table, with its events in its input', async () => {
    const deliveryId = randomUUID();
    const workflowId = workflowIds.event('bitbucket', deliveryId);
    const event = { provider: 'bitbucket' as const, deliveryId, kind: 'push' as const, repository: repositories.bitbucket, ref: { type: 'branch' as const, name: 'main', before: 'a', after: 'b' } };
    const input: EventInput = { provider: 'bitbucket', deliveryId, events: [event], receivedAt: new Date().toISOString() };
    await h.client.workflow.start('eventWorkflow', { taskQueue: h.taskQueue, workflowId, args: [input] });
    expect(await resultOf<EventResult>(h, workflowId)).toMatchObject({ recorded: 1 });
    expect((await eventsOfDelivery(h.db, 'bitbucket', deliveryId)).map((e) => e.event)).toEqual([event]);
  });
});

describe('a Temporal that does not answer', () => {
  let h: Harness;
  let blackhole: Server;
  const sockets = new Set<Socket>();

  beforeAll(async () => {
    // Accepts connections and never answers: a start through it can only end by its deadline.
    blackhole = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
    h = await startHarness({ withoutWorker: true, apiTemporalAddress: `127.0.0.1:${(blackhole.address() as AddressInfo).port}` });
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await h?.close();
    // The harness's intake relay kept trying to start the delivery: cut what it opened meanwhile.
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => blackhole.close(() => resolve()));
  });

  it('acknowledges within 1 s once the delivery is stored; its run waits for Temporal (store first, start after)', async () => {
    const { org } = await createOrgWithToken(h);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: 'group/unanswered' };
    const { hook } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'gitlab', ...repository });
    const push = delivery('gitlab', withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), { deliveryId: randomUUID(), ...hook });

    const started = performance.now();
    const res = await send(h, push);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(res.status).toBe(202);
    const stored = await h.db.selectFrom('webhook_deliveries').select(['delivery_id', 'started_at']).where('provider', '=', 'gitlab').where('delivery_id', '=', push.deliveryId).execute();
    expect(stored).toEqual([{ delivery_id: push.deliveryId, started_at: null }]);
  });
});
