import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventResult } from '../../workflows/contract.ts';
import { delivery, fixture, PUSH_FIXTURES, receiverPath, withRepository } from '../fakes/webhook-deliveries.ts';
import { seedAttachedRepository, send, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

/**
 * An organization sees an event run when the run's own delivery recorded events for it: the rows of
 * that delivery exactly (events.connection_id against the connection the workflow id names, or none),
 * not those another tenant's hook stored under the same delivery id.
 */
describe('event runs an organization may read (real Temporal, real PostgreSQL)', () => {
  let h: Harness;

  beforeAll(async () => {
    // A legacy hook's run: deliveries with the global secret are accepted only during the migration window.
    h = await startHarness({ acceptLegacyHooks: true });
  });
  afterAll(async () => {
    await h?.close();
  });

  it("does not show a legacy hook's run to another organization whose own hook delivered under the same id, nor the other way round", async () => {
    const a = await createOrgWithToken(h);
    const b = await createOrgWithToken(h);
    // A: a project attached with a hook from before per-connection credentials (the global secret, no `c`).
    const legacy = { externalId: uniqueExternalId('gitlab'), fullName: 'team/legacy' };
    await seedAttachedRepository(h, { organizationId: a.org.id, provider: 'gitlab', ...legacy, legacyHook: true });
    // B: its own project and connection hook, on an instance B runs (it knows its hook's token and picks the delivery id).
    const own = { externalId: uniqueExternalId('gitlab'), fullName: 'attacker/own' };
    const { connectionId, hook } = await seedAttachedRepository(h, { organizationId: b.org.id, provider: 'gitlab', ...own });

    const deliveryId = randomUUID();
    const push = (repository: { externalId: string; fullName: string }, options: { url?: string; secret: string }) => {
      const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository);
      payload.test_push = randomUUID();
      return delivery('gitlab', payload, { deliveryId, ...options });
    };
    const legacyRun = `event:gitlab:${deliveryId}`;
    const ownRun = `event:gitlab@${connectionId}:${deliveryId}`;
    for (const [d, workflowId] of [
      [push(legacy, { url: `https://forgelink.test${receiverPath('gitlab')}`, secret: TEST_WEBHOOK_SECRETS.gitlab }), legacyRun],
      [push(own, { url: hook.url!, secret: hook.secret }), ownRun],
    ] as const) {
      const res = await send(h, d);
      expect(res.status).toBe(202);
      expect(((await res.json()) as { workflowId: string }).workflowId).toBe(workflowId);
      expect((await resultOf<EventResult>(h, workflowId)).recorded).toBe(1);
    }

    const read = (token: string, workflowId: string) => h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token });
    // Each organization reads its own run, and only its own part.
    const aLegacy = await read(a.token, legacyRun);
    expect(aLegacy.status).toBe(200);
    expect(await aLegacy.json()).toMatchObject({ status: 'COMPLETED', result: { recorded: 1 } });
    const bOwn = await read(b.token, ownRun);
    expect(bOwn.status).toBe(200);
    expect(await bOwn.json()).toMatchObject({ status: 'COMPLETED', result: { recorded: 1 } });
    // B's rows under the same delivery id do not open A's legacy run to B (its status, timing, result); nor A's rows B's run to A.
    const bLegacy = await read(b.token, legacyRun);
    expect(bLegacy.status).toBe(404);
    expect(bLegacy.headers.get('content-type')).toBe('application/problem+json');
    expect((await read(a.token, ownRun)).status).toBe(404);

    // The rows say which hook delivered them.
    const rows = await h.db.selectFrom('events').select(['organization_id', 'connection_id']).where('provider', '=', 'gitlab').where('delivery_id', '=', deliveryId).orderBy('connection_id').execute();
    expect(rows).toEqual(
      expect.arrayContaining([
        { organization_id: a.org.id, connection_id: null },
        { organization_id: b.org.id, connection_id: connectionId },
      ]),
    );
    expect(rows).toHaveLength(2);
  });

  it("answers 404 to an event run id whose connection part is not a UUID, for an organization as for the admin, never a 500", async () => {
    const { token } = await createOrgWithToken(h);
    const logsBefore = h.logs.length;
    // 36 of hex digits and dashes (the contract's pattern) that PostgreSQL's uuid refuses (22P02).
    for (const connection of ['-'.repeat(36), `${'0'.repeat(32)}----`, 'a'.repeat(36), `${randomUUID().slice(0, 35)}-`]) {
      const workflowId = `event:gitlab@${connection}:x`;
      for (const caller of [token, h.adminToken]) {
        const res = await h.request('GET', `/api/v1/workflows/${encodeURIComponent(workflowId)}`, { token: caller });
        expect(res.status, `${workflowId}: ${await res.clone().text()}`).toBe(404);
        expect(res.headers.get('content-type')).toBe('application/problem+json');
      }
    }
    expect(h.logs.slice(logsBefore).join('')).not.toContain('unhandled error');
  });
});
