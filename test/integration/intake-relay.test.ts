import { randomUUID } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startIntakeRelay, type IntakeRelay } from '../../api/intake-relay.ts';
import { startIntakeRelayThread } from '../../api/intake-relay-thread.ts';
import type { Config } from '../../lib/config.ts';
import { createDb } from '../../lib/db/index.ts';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

const FULL_NAMES: Record<Provider, string> = { github: 'octo-org/relay', gitlab: 'group/relay', bitbucket: 'PROJ/relay', 'azure-devops': 'Fabrikam/relay' };

/**
 * A TCP proxy in front of the Temporal frontend whose outage is switched by the test: while down
 * it cuts every connection and refuses new ones, which is what the API's client sees of a Temporal
 * cluster that is stopped or upgrading.
 */
async function temporalProxy(upstream: string) {
  const [host, port] = upstream.split(':') as [string, string];
  const sockets = new Set<Socket>();
  let up = true;
  let refusedOnce: () => void;
  const refused = new Promise<void>((resolve) => (refusedOnce = resolve));
  const server: Server = createServer((client) => {
    if (!up) {
      refusedOnce();
      return void client.destroy();
    }
    const target = connect(Number(port), host);
    for (const s of [client, target]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(target).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    /** Resolves once a connection attempt met the outage. */
    refused,
    down() {
      up = false;
      for (const s of sockets) s.destroy();
    },
    up() {
      up = true;
    },
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}

describe('intake relay: store first, start after', () => {
  let proxy: Awaited<ReturnType<typeof temporalProxy>>;
  let h: Harness;
  let org: { id: string };
  const attached = {} as Record<Provider, { externalId: string; fullName: string }>;
  /** Each connection's own hook: its URL (naming the connection) and its webhook credential. */
  const hooks = {} as Record<Provider, DeliveringHook & { connectionId?: string }>;
  const relays: IntakeRelay[] = [];
  const relay = (options: { maxBackoffMs?: number; rowRetryMs?: number; busyGapMs?: number; maxDeferMs?: number } = {}) => {
    const started = startIntakeRelay(h.apiDeps, { databaseUrl: inject('databaseUrl'), track: true, ...options });
    relays.push(started);
    return started;
  };

  beforeAll(async () => {
    proxy = await temporalProxy(inject('temporalAddress'));
    // The API (receivers and relays) reaches Temporal through the proxy; the worker directly.
    h = await startHarness({ withoutIntakeRelay: true, apiTemporalAddress: proxy.address });
    ({ org } = await createOrgWithToken(h));
    for (const provider of PROVIDERS) {
      attached[provider] = { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] };
      const { connectionId, hook } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...attached[provider] });
      hooks[provider] = { ...hook, ...(provider === 'github' ? {} : { connectionId }) };
    }
  });
  afterAll(async () => {
    for (const r of relays) await r.stop();
    await h?.close();
    await proxy?.close();
  });

  const pushes = (count: number) =>
    Array.from({ length: count }, (_, i) => {
      const provider = PROVIDERS[i % PROVIDERS.length]!;
      // Every push its own body: the same body again for a connection is a replay, recorded once.
      const payload = { ...withRepository(provider, fixture(PUSH_FIXTURES[provider]), attached[provider]), test_push: randomUUID() };
      const { connectionId: _connection, ...hook } = hooks[provider];
      return delivery(provider, payload, { deliveryId: randomUUID(), ...hook });
    });
  const runOf = (d: { provider: Provider; deliveryId: string }) => workflowIds.event(d.provider, d.deliveryId, hooks[d.provider].connectionId);
  const runExists = async (workflowId: string) =>
    h.client.workflow
      .getHandle(workflowId)
      .describe()
      .then(
        () => true,
        () => false,
      );

  /** Resolves once the run exists (the server's state, which nothing tells the test of), failing after 30 s. */
  const runStarted = async (workflowId: string) => {
    const deadline = performance.now() + 30_000;
    while (!(await runExists(workflowId))) {
      if (performance.now() > deadline) throw new Error(`${workflowId} was not started within 30 s`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };

  it('acknowledges every delivery while Temporal is unreachable, and starts and records each exactly once when it is back', async () => {
    const relayed = relay({ maxBackoffMs: 500 });
    proxy.down();
    const sent = pushes(12);
    try {
      for (const d of sent) {
        const t0 = performance.now();
        expect((await send(h, d)).status).toBe(202);
        expect(performance.now() - t0).toBeLessThan(1000);
      }
      // The relay met the outage; nothing has started.
      await proxy.refused;
      for (const d of sent) expect(await runExists(runOf(d))).toBe(false);
    } finally {
      proxy.up();
    }
    await Promise.all(sent.map((d) => relayed.whenStarted(runOf(d))));
    await Promise.all(sent.map((d) => h.client.workflow.getHandle(runOf(d)).result()));
    for (const d of sent) expect(await eventsOfDelivery(h.db, d.provider, d.deliveryId)).toHaveLength(1);
    // A redelivery of a stored delivery: 202 again, no second row, no second start.
    expect((await send(h, sent[0]!)).status).toBe(202);
    const rows = await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', sent[0]!.deliveryId).execute();
    expect(rows).toHaveLength(1);
  });

  it('picks up deliveries stored while no relay ran (an API killed between the write and the start)', async () => {
    for (const r of relays.splice(0)) await r.stop();
    const sent = pushes(4);
    for (const d of sent) expect((await send(h, d)).status).toBe(202);
    for (const d of sent) expect(await runExists(runOf(d))).toBe(false);

    const restarted = relay();
    await Promise.all(sent.map((d) => restarted.whenStarted(runOf(d))));
    for (const d of sent) {
      await h.client.workflow.getHandle(runOf(d)).result();
      expect(await eventsOfDelivery(h.db, d.provider, d.deliveryId)).toHaveLength(1);
    }
  });

  it('runs as several relays (API replicas) that never start the same delivery twice', async () => {
    for (const r of relays.splice(0)) await r.stop();
    const sent = pushes(40);
    for (const d of sent) expect((await send(h, d)).status).toBe(202);
    const [a, b] = [relay(), relay()];
    await Promise.all(sent.map((d) => Promise.race([a.whenStarted(runOf(d)), b.whenStarted(runOf(d))])));
    const both = a.started.filter((id) => b.started.includes(id));
    expect(both).toEqual([]);
    expect(new Set([...a.started, ...b.started])).toEqual(new Set(sent.map(runOf)));
  });

  it('retries a delivery Temporal refuses on its own schedule, without holding up the others, and shows it to the admin', async () => {
    for (const r of relays.splice(0)) await r.stop();
    // A row whose start Temporal refuses for good: its run id is longer than Temporal allows (the
    // receiver refuses such ids today; a row from before that check, or any start refused as invalid).
    const poisonedId = `poisoned-${'x'.repeat(1100)}`;
    await h.db
      .insertInto('webhook_deliveries')
      .values({
        provider: 'github',
        delivery_id: poisonedId,
        events: JSON.stringify([]),
        received_at: new Date(Date.now() - 60_000),
        start: JSON.stringify({ taskQueue: h.taskQueue, summary: { events: 0, kinds: {}, repositories: [] } }),
      })
      .execute();
    const poisoned = () => h.db.selectFrom('webhook_deliveries').select(['attempts', 'last_error', 'next_attempt_at', 'started_at']).where('delivery_id', '=', poisonedId).executeTakeFirstOrThrow();
    try {
      const relayed = relay({ rowRetryMs: 60_000 });
      // One delivery at a time, each started before the next is sent: a round (or more) for each,
      // with the refused row older than all of them, at the head of the queue.
      for (const d of pushes(8)) {
        expect((await send(h, d)).status).toBe(202);
        await relayed.whenStarted(runOf(d));
      }
      const row = await poisoned();
      expect(row.started_at).toBeNull();
      // Tried once, then left alone until its own next attempt, a minute on: no hot loop.
      expect(row.attempts).toBe(1);
      expect(row.last_error).toMatch(/^INVALID_ARGUMENT: /);
      expect(row.last_error!.length).toBeLessThanOrEqual(300);
      expect(row.next_attempt_at!.getTime()).toBeGreaterThan(Date.now() + 30_000);
      expect(h.logs.join('\n')).toMatch(/"level":50.*could not be started/);

      // The admin sees the backlog and the failing row on /readyz; anyone else the verdict only.
      const ready = await h.request('GET', '/readyz', { token: h.adminToken });
      expect(ready.status).toBe(200);
      const { details } = (await ready.json()) as { details: { intake: { pending: number; failing: number; oldestAgeSeconds: number; oldestReceivedAt: string; byTaskQueue: Record<string, number> } } };
      expect(details.intake.byTaskQueue[h.taskQueue]).toBe(1);
      expect(details.intake.pending).toBeGreaterThanOrEqual(1);
      expect(details.intake.failing).toBeGreaterThanOrEqual(1);
      expect(details.intake.oldestAgeSeconds).toBeGreaterThanOrEqual(60);
      for (const token of [undefined, 'not-the-admin-token']) {
        const anonymous = await h.request('GET', '/readyz', token ? { token } : {});
        expect(await anonymous.json()).toEqual({ status: 'ready', checks: { database: 'ok', temporal: 'ok' } });
      }
    } finally {
      await h.db.deleteFrom('webhook_deliveries').where('delivery_id', '=', poisonedId).execute();
    }
  });

  it('starts an isolated delivery at once, and while deliveries arrive back to back holds starts back for them, at most maxDeferMs', async () => {
    for (const r of relays.splice(0)) await r.stop();
    const [busyGapMs, maxDeferMs] = [2000, 3000];
    const relayed = relay({ busyGapMs, maxDeferMs });
    const [alone, amidStream] = pushes(2);
    // Nothing else arriving: started without waiting for a gap in the receipts.
    const sentAlone = performance.now();
    expect((await send(h, alone!)).status).toBe(202);
    await relayed.whenStarted(runOf(alone!));
    expect(performance.now() - sentAlone).toBeLessThan(busyGapMs);

    // A steady stream of receipts (as the receivers report them) that never pauses for busyGapMs
    // until the delivery sent into it has started: its start waits, but no longer than maxDeferMs.
    let firstTickAt = 0;
    let firstTick: () => void;
    const streaming = new Promise<void>((resolve) => (firstTick = resolve));
    const stream = setInterval(() => {
      if (!firstTickAt) firstTickAt = performance.now();
      h.apiDeps.intake.stored();
      firstTick();
    }, 50);
    try {
      await streaming;
      expect((await send(h, amidStream!)).status).toBe(202);
      await relayed.whenStarted(runOf(amidStream!));
      // Held back for maxDeferMs from the first receipt the relay waited on (the stream's first or
      // second), not until the stream ends; without the yielding it starts as soon as it is stored.
      const waited = performance.now() - firstTickAt;
      expect(waited).toBeGreaterThanOrEqual(maxDeferMs - 5);
      expect(waited).toBeLessThan(maxDeferMs + 10_000);
    } finally {
      clearInterval(stream);
    }
  });

  it("runs on a thread of its own as the API runs it: a receipt wakes it, its starts count in the API's metrics, and stop ends it", async () => {
    for (const r of relays.splice(0)) await r.stop();
    const counted: string[] = [];
    const thread = startIntakeRelayThread(
      { intake: h.apiDeps.intake, logger: h.apiDeps.logger, metrics: { intakeStart: (outcome) => counted.push(outcome) } },
      {
        temporal: { namespace: 'default', taskQueue: h.apiDeps.taskQueue } as Config['temporal'],
        address: proxy.address,
        databaseUrl: inject('databaseUrl'),
        tracing: { enabled: false } as Config['tracing'],
        logLevel: 'warn',
        // No sweep within the test: only a receipt can make the thread's relay look for a row.
        sweepMs: 10 * 60_000,
      },
    );
    try {
      // The first delivery may be found by the relay's first sweep, as it starts; once its run exists that sweep is over.
      const [first, d] = pushes(2);
      expect((await send(h, first!)).status).toBe(202);
      await runStarted(runOf(first!));
      // The second can only be started because its receipt woke the relay: the next sweep is 10 minutes away.
      expect((await send(h, d!)).status).toBe(202);
      await runStarted(runOf(d!));
      await h.client.workflow.getHandle(runOf(d!)).result();
      expect(await eventsOfDelivery(h.db, d!.provider, d!.deliveryId)).toHaveLength(1);
      const row = await h.db.selectFrom('webhook_deliveries').select('started_at').where('delivery_id', '=', d!.deliveryId).executeTakeFirstOrThrow();
      expect(row.started_at).not.toBeNull();
      // Counted in the thread, sent over within a second (a message a second, not one per start).
      await expect.poll(() => counted, { timeout: 10_000 }).toContain('started');
    } finally {
      await thread.stop();
    }
  });

  it("starts another organization's delivery in the relay's first round, however large one organization's backlog ahead of it", async () => {
    for (const r of relays.splice(0)) await r.stop();
    // 200 unstarted rows of another organization, acknowledged a minute ago (as its receivers store them), then this organization's push.
    const flooding = randomUUID();
    const backlog = Array.from({ length: 200 }, (_, i) => `flood-${randomUUID()}-${i}`);
    await h.db
      .insertInto('webhook_deliveries')
      .values(backlog.map((deliveryId, i) => ({ provider: 'github' as const, delivery_id: deliveryId, events: JSON.stringify([]), received_at: new Date(Date.now() - 60_000 + i), start: JSON.stringify({ taskQueue: h.taskQueue, summary: { events: 0, kinds: {}, repositories: [] }, organizationId: flooding }) })))
      .execute();
    const [d] = pushes(1);
    expect((await send(h, d!)).status).toBe(202);
    const relayed = relay();
    await relayed.whenStarted(runOf(d!));
    // In turns: among the first round's starts (50 rows, half a turn each), not after the 200.
    expect(relayed.started.indexOf(runOf(d!))).toBeLessThan(50);
    // The backlog is started too, in full rounds once it is alone, oldest first.
    await Promise.all(backlog.map((id) => relayed.whenStarted(workflowIds.event('github', id))));
    const order = backlog.map((id) => relayed.started.indexOf(workflowIds.event('github', id)));
    expect(order).toEqual([...order].sort((a, b) => a - b));
  });

  it('answers 503 when the database cannot take the delivery, and starts nothing', async () => {
    const unreachable = createDb('postgres://postgres@127.0.0.1:1/none', { max: 1 });
    try {
      const app = h.appWith({ db: unreachable });
      const [d] = pushes(1);
      const res = await app.request(d!.path, { method: 'POST', headers: d!.headers, body: d!.body });
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(await runExists(runOf(d!))).toBe(false);
      const stored = await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', d!.deliveryId).execute();
      expect(stored).toEqual([]);
    } finally {
      await unreachable.destroy();
    }
  });
});
