import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { insertDeliveryEvents, type NewEventRow } from '../../lib/db/repositories/events.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

/**
 * Recording a delivery's events: the first recording returns its rows from the insert itself (one
 * statement per delivery on the ingestion path), a repeat returns the rows already there, and both
 * answer the same rows in the same order (sequence, then organization).
 */
describe('insertDeliveryEvents', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('answers the same rows, in order, whether it inserted them or found them there', async () => {
    const orgs = await Promise.all([createOrgWithToken(h), createOrgWithToken(h), createOrgWithToken(h)]);
    const deliveryId = randomUUID();
    const event = (i: number): NormalizedEvent => ({ provider: 'gitlab', deliveryId, kind: 'push', repository: { externalId: '1', fullName: 'a/b' }, ref: { type: 'branch', name: `b${i}`, before: null, after: null } });
    // Given out of order: sequences descending, organizations in the order they were made.
    const rows: NewEventRow[] = [2, 1, 0].flatMap((sequence) => orgs.map(({ org }) => ({ organizationId: org.id, repositoryId: null, sequence, event: event(sequence) })));
    const delivery = { provider: 'gitlab' as const, deliveryId, receivedAt: new Date() };

    const first = await insertDeliveryEvents(h.db, delivery, rows);
    const sortedOrgIds = orgs.map(({ org }) => org.id).sort();
    expect(first.map((r) => [r.sequence, r.organizationId])).toEqual([0, 1, 2].flatMap((sequence) => sortedOrgIds.map((id) => [sequence, id])));
    expect(new Set(first.map((r) => r.id)).size).toBe(9);

    // A retried activity: nothing inserted, the same rows back.
    expect(await insertDeliveryEvents(h.db, delivery, rows)).toEqual(first);
    // Partly there (an earlier attempt recorded some): the rows inserted now and those found, together.
    const other = { ...delivery, deliveryId: randomUUID() };
    const partial = await insertDeliveryEvents(h.db, other, rows.slice(0, 3));
    const whole = await insertDeliveryEvents(h.db, other, rows);
    expect(whole).toHaveLength(9);
    expect(whole.filter((r) => r.sequence === 2)).toEqual(partial.filter((r) => r.sequence === 2));
    expect(whole.map((r) => [r.sequence, r.organizationId])).toEqual(first.map((r) => [r.sequence, r.organizationId]));
  });

  it('stores each row as given: its repository or none, the connection or none, names of any characters, and gives the stored events back', async () => {
    const [{ org: a }, { org: b }] = await Promise.all([createOrgWithToken(h), createOrgWithToken(h)]);
    const { id: connectionId } = await h.db
      .insertInto('connections')
      .values({ organization_id: a.id, provider: 'gitlab', base_url: 'https://gitlab.example', credential: 'sealed', status: 'active' } as never)
      .returning('id')
      .executeTakeFirstOrThrow();
    const { id: repositoryId } = await h.db
      .insertInto('repositories')
      .values({ organization_id: a.id, connection_id: connectionId, provider: 'gitlab', external_id: '9', full_name: 'g/p' } as never)
      .returning('id')
      .executeTakeFirstOrThrow();
    // What an array literal would have to escape: quotes, backslashes, braces, commas, NULL, and characters past ASCII.
    const names = ['g/"quoted" \\ back\\slash', 'g/{braces},commas', 'NULL', 'g/ünïcödé ✓ 𝄞', ''];
    const receivedAt = new Date('2026-12-07T10:11:12.345Z');
    for (const conn of [connectionId, undefined]) {
      const deliveryId = randomUUID();
      const event = (i: number): NormalizedEvent => ({ provider: 'gitlab', deliveryId, kind: i === 1 ? 'branch.created' : 'push', repository: { externalId: '9', fullName: names[i]! }, sender: names[(i + 1) % names.length]! });
      const rows: NewEventRow[] = names.flatMap((_, sequence) => [
        { organizationId: a.id, repositoryId, sequence, event: event(sequence) },
        { organizationId: b.id, repositoryId: null, sequence, event: event(sequence) },
      ]);
      const delivery = { provider: 'gitlab' as const, deliveryId, ...(conn ? { connectionId: conn } : {}), receivedAt };
      const recorded = await insertDeliveryEvents(h.db, delivery, rows, { withEvents: true });
      expect(recorded.map((r) => [r.sequence, r.organizationId, r.kind, r.event])).toEqual(
        names.flatMap((_, sequence) => [a.id, b.id].sort().map((org) => [sequence, org, event(sequence).kind, event(sequence)])),
      );
      const stored = await h.db
        .selectFrom('events')
        .select(['id', 'organization_id', 'repository_id', 'provider', 'delivery_id', 'connection_id', 'sequence', 'kind', 'event', 'received_at'])
        .where('delivery_id', '=', deliveryId)
        .where('connection_id', conn ? '=' : 'is', conn ?? null)
        .orderBy('sequence')
        .orderBy('organization_id')
        .execute();
      expect(stored.map((r) => r.id)).toEqual(recorded.map((r) => r.id));
      expect(stored).toEqual(
        names.flatMap((_, sequence) =>
          [a.id, b.id].sort().map((org) => ({
            id: expect.any(String),
            organization_id: org,
            repository_id: org === a.id ? repositoryId : null,
            provider: 'gitlab',
            delivery_id: deliveryId,
            connection_id: conn ?? null,
            sequence,
            kind: event(sequence).kind,
            event: event(sequence),
            received_at: receivedAt,
          })),
        ),
      );
      // Without `withEvents` (a fan-out too large to go inline) the rows come back without their events.
      const again = await insertDeliveryEvents(h.db, { ...delivery, deliveryId: randomUUID() }, rows.slice(0, 2));
      expect(again.every((r) => r.event === undefined)).toBe(true);
    }
  });
});
