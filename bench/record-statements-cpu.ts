/**
 * `tsx bench/record-statements-cpu.ts [--events=N]`: this process's CPU per event for an event's
 * recording and its attempt record as the worker runs them against PostgreSQL (loadDelivery; in
 * one transaction claimDeliveryDigest, findAttachedRepositories, insertDeliveryEvents,
 * listSubscribersForDispatchOf; then recordDispatchAttempt), without Temporal: Kysely and pg on
 * the calling thread, one event at a time, in a throwaway database (issue 16, statements compiled once).
 */
import { createHash, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { createDb } from '../lib/db/index.ts';
import { migrateToLatest } from '../lib/db/migrate.ts';
import { loadDelivery, storeDelivery } from '../lib/db/repositories/deliveries.ts';
import { claimDeliveryDigest, findAttachedRepositories, insertDeliveryEvents } from '../lib/db/repositories/events.ts';
import { listSubscribersForDispatchOf, recordDispatchAttempt } from '../lib/db/repositories/subscribers.ts';
import type { NormalizedEvent } from '../lib/domain.ts';
import { testPostgres } from '../test/support/postgres.ts';

const events = Number(process.argv.find((a) => a.startsWith('--events='))?.split('=')[1] ?? 3000);
const postgres = await testPostgres();
const admin = createDb(postgres.adminUrl, { max: 1 });
const database = `forgelink_record_cpu_${Date.now()}`;
await sql`create database ${sql.id(database)}`.execute(admin);
const url = new URL(postgres.adminUrl);
url.pathname = `/${database}`;
const db = createDb(url.toString(), { max: 4 });
try {
  await migrateToLatest(db);
  const org = await db.insertInto('organizations').values({ slug: 'bench', name: 'bench' }).returning('id').executeTakeFirstOrThrow();
  const connection = await db.insertInto('connections').values({ organization_id: org.id, provider: 'gitlab', base_url: 'https://gitlab.example', credential: 'x', status: 'active' } as never).returning('id').executeTakeFirstOrThrow();
  const repository = await db.insertInto('repositories').values({ organization_id: org.id, connection_id: connection.id, provider: 'gitlab', external_id: '42', full_name: 'g/p' } as never).returning('id').executeTakeFirstOrThrow();
  await db.insertInto('attachments').values({ organization_id: org.id, repository_id: repository.id, status: 'attached' } as never).execute();
  const subscriber = await db.insertInto('subscribers').values({ id: randomUUID(), organization_id: org.id, url: 'https://subscriber.example/hook', secret: 'sealed', kinds: '[]', ref_globs: '[]' } as never).returning('id').executeTakeFirstOrThrow();

  const oneEvent = async () => {
    const deliveryId = randomUUID();
    const event: NormalizedEvent = { provider: 'gitlab', deliveryId, kind: 'push', repository: { externalId: '42', fullName: 'g/p' }, ref: { type: 'branch', name: 'main', before: 'a'.repeat(40), after: 'b'.repeat(40) } };
    await storeDelivery(db, { provider: 'gitlab', deliveryId, connectionId: connection.id, events: [event] });
    // Measured from here: what the worker runs for the event.
    const start = process.cpuUsage();
    const delivery = (await loadDelivery(db, { provider: 'gitlab', deliveryId, connectionId: connection.id }))!;
    const receivedAt = new Date();
    const recorded = await db.transaction().execute(async (trx) => {
      const digest = createHash('sha256').update(deliveryId).digest('hex');
      await claimDeliveryDigest(trx, { connectionId: connection.id, digest, deliveryId, receivedAt, notBefore: new Date(receivedAt.getTime() - 7 * 86_400_000) });
      const found = await findAttachedRepositories(trx, 'gitlab', delivery.events.map((e) => e.repository.externalId), { connectionId: connection.id });
      const rows = found.map((r) => ({ organizationId: r.organizationId, repositoryId: r.repositoryId, sequence: 0, event: delivery.events[0]! }));
      const inserted = await insertDeliveryEvents(trx, { provider: 'gitlab', deliveryId, connectionId: connection.id, receivedAt }, rows, { withEvents: true });
      await listSubscribersForDispatchOf(trx, inserted.map((r) => r.organizationId));
      return inserted;
    });
    await recordDispatchAttempt(db, { subscriberId: subscriber.id, eventId: recorded[0]!.id, attempt: 1, succeeded: true, statusCode: 200, durationMs: 3 });
    const used = process.cpuUsage(start);
    return used.user + used.system;
  };
  for (let i = 0; i < 300; i++) await oneEvent();
  let total = 0;
  for (let i = 0; i < events; i++) total += await oneEvent();
  console.log(JSON.stringify({ events, cpuMicrosecondsPerEvent: Math.round(total / events) }));
} finally {
  await db.destroy();
  await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  await admin.destroy();
  await postgres.stop();
}
