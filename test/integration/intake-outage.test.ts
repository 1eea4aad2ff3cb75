import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { startIntakeRelay, type IntakeRelay } from '../../api/intake-relay.ts';
import { PROVIDERS, type Provider } from '../../lib/domain.ts';
import { freeLoopbackPort } from '../../lib/net.ts';
import { workflowIds, type EventResult } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { createOrgWithToken, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';
import { ownTemporalServer, stallingProxy } from '../support/temporal-outage.ts';

/**
 * Issue #18's outage tests, on a Temporal dev server of this file's own (stopped and started again
 * on the same port and store, as a cluster restart or upgrade looks to forgelink), never the run's
 * shared one:
 * - the Temporal server stopped for INTAKE_OUTAGE_SECONDS (default 60, the issue's figure) while
 *   signed deliveries for all four providers arrive: each answers 202 within 1 s, and once the
 *   server is back every event is recorded exactly once and dispatched to the subscriber;
 * - an API process killed (SIGKILL) while its relay holds stored rows and its starts are on the
 *   wire: the next relay starts each of them, once.
 */
const OUTAGE_MS = Number(process.env.INTAKE_OUTAGE_SECONDS ?? 60) * 1000;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const FULL_NAMES: Record<Provider, string> = { github: 'octo-org/outage', gitlab: 'group/outage', bitbucket: 'PROJ/outage', 'azure-devops': 'Fabrikam/outage' };

describe('intake under a Temporal outage and an API crash (a dev server of its own)', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-outage-'));
  let server: Awaited<ReturnType<typeof ownTemporalServer>> | undefined;
  let h: Harness;
  let org: { id: string; slug: string };
  let subscriber: FakeSubscriber;
  let proxy: Awaited<ReturnType<typeof stallingProxy>> | undefined;
  let api: ChildProcess | undefined;
  const relays: IntakeRelay[] = [];
  const attached = {} as Record<Provider, { externalId: string; fullName: string }>;
  const hooks = {} as Record<Provider, DeliveringHook & { connectionId?: string }>;

  beforeAll(async () => {
    server = await ownTemporalServer(dir);
    await server.start();
    h = await startHarness({ temporalAddress: server.address, withoutIntakeRelay: true });
    let token: string;
    ({ org, token } = await createOrgWithToken(h));
    for (const provider of PROVIDERS) {
      attached[provider] = { externalId: uniqueExternalId(provider), fullName: FULL_NAMES[provider] };
      const { connectionId, hook } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...attached[provider] });
      hooks[provider] = { ...hook, ...(provider === 'github' ? {} : { connectionId }) };
    }
    subscriber = await startFakeSubscriber();
    const created = await h.request('POST', `/api/v1/orgs/${org.slug}/subscribers`, { token, body: { url: subscriber.url } });
    expect(created.status).toBe(201);
    subscriber.verifyWith(((await created.json()) as { secret: string }).secret);
  });
  afterAll(async () => {
    if (api?.exitCode === null) api.kill('SIGKILL');
    for (const r of relays) await r.stop();
    await h?.close();
    await server?.stop();
    await proxy?.close();
    await subscriber?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const pushes = (count: number, offset = 0) =>
    Array.from({ length: count }, (_, i) => {
      const provider = PROVIDERS[(offset + i) % PROVIDERS.length]!;
      // Every push its own body: the same body again for a connection is a replay, recorded once.
      const payload = { ...withRepository(provider, fixture(PUSH_FIXTURES[provider]), attached[provider]), test_push: randomUUID() };
      const { connectionId: _connection, ...hook } = hooks[provider];
      return delivery(provider, payload, { deliveryId: randomUUID(), ...hook });
    });
  const runOf = (d: { provider: Provider; deliveryId: string }) => workflowIds.event(d.provider, d.deliveryId, hooks[d.provider].connectionId);
  const relay = () => {
    const started = startIntakeRelay(h.apiDeps, { databaseUrl: inject('databaseUrl'), track: true });
    relays.push(started);
    return started;
  };
  const rowsOf = (sent: Delivery[]) =>
    h.db
      .selectFrom('webhook_deliveries')
      .select(['delivery_id', 'started_at'])
      .where(
        'delivery_id',
        'in',
        sent.map((d) => d.deliveryId),
      )
      .execute();

  /** Each delivery's run completed, its event recorded exactly once and received by the subscriber exactly once. */
  async function expectRecordedAndDispatchedOnce(sent: Delivery[]) {
    for (const d of sent) {
      expect(await h.client.workflow.getHandle(runOf(d)).result()).toMatchObject({ recorded: 1 } satisfies Partial<EventResult>);
      expect(await eventsOfDelivery(h.db, d.provider, d.deliveryId)).toHaveLength(1);
      const received = subscriber.received.filter((e) => e.body.deliveryId === d.deliveryId);
      expect(received).toHaveLength(1);
      expect(received[0]!.signatureValid).toBe(true);
    }
  }

  it('starts, once each, the deliveries an API process held when it was killed between their write and their start', { timeout: 120_000 }, async () => {
    proxy = await stallingProxy(server!.address);
    const port = await freeLoopbackPort();
    const configFile = path.join(dir, 'forgelink.yml');
    writeFileSync(
      configFile,
      toYaml({
        publicUrl: `http://127.0.0.1:${port}`,
        api: { host: '127.0.0.1', port },
        database: { url: inject('databaseUrl') },
        temporal: { address: proxy.address, taskQueue: h.taskQueue },
        auth: { adminToken: h.adminToken },
        encryption: { key: h.keys.current.key.toString('base64'), keyId: h.keys.current.id },
        gitProviders: {
          github: {
            enabled: true,
            appId: '1',
            privateKey: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
            webhookSecret: TEST_WEBHOOK_SECRETS.github,
          },
          gitlab: { enabled: true },
          bitbucket: { enabled: true },
          azureDevOps: { enabled: true },
        },
        security: { allowHttpHosts: ['127.0.0.1'] },
      }),
      { mode: 0o600 },
    );
    api = spawn(process.execPath, ['--import', 'tsx', 'api/main.ts'], { cwd: ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const exited = new Promise<NodeJS.Signals | null>((resolve) => api!.once('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      const check = () => output.includes('API listening') && resolve();
      api!.stdout!.on('data', (chunk: Buffer) => ((output += chunk.toString('utf8')), check()));
      api!.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
      api!.once('exit', () => reject(new Error(`the API exited before it listened:\n${output}`)));
    });

    // From here Temporal hangs for that process: its relay locks the rows and its starts wait.
    proxy.stall();
    const sent = pushes(8);
    for (const d of sent) {
      const res = await fetch(`http://127.0.0.1:${port}${d.path}`, { method: 'POST', headers: d.headers, body: d.body });
      expect(res.status, await res.text()).toBe(202);
    }
    await proxy.stalledRequest;
    // Killed with rows locked and starts in flight: nothing reached Temporal, nothing is marked started.
    api.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    expect((await rowsOf(sent)).map((r) => r.started_at)).toEqual(sent.map(() => null));

    const next = relay();
    await Promise.all(sent.map((d) => next.whenStarted(runOf(d))));
    expect(new Set(next.started)).toEqual(new Set(sent.map(runOf)));
    await expectRecordedAndDispatchedOnce(sent);
    expect((await rowsOf(sent)).every((r) => r.started_at !== null)).toBe(true);
  });

  it(`acknowledges every delivery within 1 s while the Temporal server is stopped for ${OUTAGE_MS / 1000} s, and records and dispatches each exactly once when it is back`, { timeout: OUTAGE_MS + 240_000 }, async () => {
    // The relay that took over above, with the production settings (backoff up to 30 s).
    const relayed = relays[0] ?? relay();
    await server!.stop();

    const sent: Delivery[] = [];
    const statuses: number[] = [];
    const slow: number[] = [];
    const started = performance.now();
    // A delivery every 250 ms, across the four providers, until the outage ends.
    for (let i = 0; performance.now() - started < OUTAGE_MS; i++) {
      const [d] = pushes(1, i);
      const t0 = performance.now();
      const res = await send(h, d!);
      const ms = performance.now() - t0;
      statuses.push(res.status);
      if (ms >= 1000) slow.push(ms);
      sent.push(d!);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + (i + 1) * 250 - performance.now())));
    }
    expect(new Set(statuses)).toEqual(new Set([202]));
    expect(slow).toEqual([]);
    expect(new Set(sent.map((d) => d.provider))).toEqual(new Set(PROVIDERS));
    // Stored, acknowledged, none started while the server was away.
    expect((await rowsOf(sent)).filter((r) => r.started_at !== null)).toEqual([]);

    await server!.start();
    await Promise.all(sent.map((d) => relayed.whenStarted(runOf(d))));
    await expectRecordedAndDispatchedOnce(sent);
    expect(relayed.started.filter((id) => sent.some((d) => runOf(d) === id))).toHaveLength(sent.length);
  });
});
