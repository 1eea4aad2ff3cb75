import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import { storeDelivery, type StoredDelivery } from '../../lib/db/repositories/deliveries.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';

/**
 * The receiver's insert is a statement written out by hand (built once, not by the query builder
 * per delivery): every column lands where the relay and the run read it, and the intake key
 * (provider, delivery id, connection; a missing connection counts as one) keeps one row per delivery.
 */
describe('storing a delivery (the receiver\u2019s one statement)', () => {
  const db = createDb(inject('databaseUrl'), { max: 2 });
  afterAll(() => db.destroy());

  const row = (deliveryId: string) =>
    db.selectFrom('webhook_deliveries').select(['provider', 'connection_id', 'events', 'installation_id', 'instance_url', 'start', 'started_at', 'attempts']).where('delivery_id', '=', deliveryId).orderBy('connection_id').execute();
  const event = (deliveryId: string): NormalizedEvent => ({
    provider: 'github',
    deliveryId,
    kind: 'push',
    repository: { externalId: '42', fullName: 'acme/widgets' },
    ref: { type: 'branch', name: 'main', before: 'a'.repeat(40), after: 'b'.repeat(40) },
    commitCount: 1,
  });

  it('stores every column once, and a redelivery (no connection: GitHub, legacy hooks) stores nothing', async () => {
    const deliveryId = randomUUID();
    const delivery: StoredDelivery = {
      provider: 'github',
      deliveryId,
      events: [event(deliveryId)],
      installationId: '7',
      instanceUrl: 'https://github.example.com',
      start: { taskQueue: 'store-delivery-test', summary: { events: 1 }, organizationId: randomUUID() },
    };
    expect(await storeDelivery(db, delivery)).toBe(true);
    expect(await storeDelivery(db, { ...delivery, events: [] })).toBe(false);
    expect(await row(deliveryId)).toEqual([
      { provider: 'github', connection_id: null, events: delivery.events, installation_id: '7', instance_url: 'https://github.example.com', start: delivery.start, started_at: null, attempts: 0 },
    ]);
  });

  it('keeps a delivery id of each connection apart, once each', async () => {
    const org = await db.insertInto('organizations').values({ slug: `store-${randomUUID().slice(0, 8)}`, name: 'store' }).returning('id').executeTakeFirstOrThrow();
    const [a, b] = await db
      .insertInto('connections')
      .values([1, 2].map((n) => ({ organization_id: org.id, provider: 'gitlab' as const, base_url: `https://gitlab-${n}.example.com`, status: 'active' as const })))
      .returning('id')
      .execute();
    const deliveryId = randomUUID();
    const through = (connectionId: string): StoredDelivery => ({ provider: 'gitlab', deliveryId, connectionId, events: [{ ...event(deliveryId), provider: 'gitlab' }] });
    expect(await storeDelivery(db, through(a!.id))).toBe(true);
    expect(await storeDelivery(db, through(b!.id))).toBe(true);
    expect(await storeDelivery(db, through(a!.id))).toBe(false);
    const rows = await row(deliveryId);
    expect(rows.map((r) => r.connection_id).sort()).toEqual([a!.id, b!.id].sort());
    expect(rows.every((r) => r.start === null && r.installation_id === null && r.instance_url === null)).toBe(true);
  });
});
