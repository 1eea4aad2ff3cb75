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
});
