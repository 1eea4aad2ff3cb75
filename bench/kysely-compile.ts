/**
 * `tsx bench/kysely-compile.ts [--calls=N]`: what each hot repository function costs on the
 * calling thread apart from PostgreSQL and pg, per call (µs of CPU): the function itself is called
 * against a Kysely whose driver answers at once (no socket, no parsing of results), so the time is
 * its building and compiling of the statement (or, for a statement written out once, only passing
 * it on) and Kysely's executing of it. The statements of an event's recording and its first
 * attempt, of a GitLab attach's steps and of the API's attach route (issue #16).
 */
import {
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type CompiledQuery,
  type DatabaseConnection,
  type Driver,
  type QueryResult,
} from 'kysely';
import { randomUUID } from 'node:crypto';
import type { Database } from '../lib/db/schema.ts';
import { loadDelivery } from '../lib/db/repositories/deliveries.ts';
import { claimDeliveryDigest, findAttachedRepositories, insertDeliveryEvents } from '../lib/db/repositories/events.ts';
import { listSubscribersForDispatchOf, loadDispatch, recordDispatchAttempt } from '../lib/db/repositories/subscribers.ts';
import {
  attachmentIdOf,
  findOrganizationAndRepository,
  forgetHooksExcept,
  loadRepositoryTarget,
  recordedCredentialVersions,
  recordedHookIds,
  setAttachmentStatus,
} from '../lib/db/repositories/attachments.ts';
import { recordHookCarrying, webhookCredentialsOf } from '../lib/db/repositories/webhook-credentials.ts';
import type { EncryptionKeys } from '../lib/crypto.ts';
import type { NormalizedEvent } from '../lib/domain.ts';

/** Answers every statement at once with no rows (a row for those that need one). */
class InstantConnection implements DatabaseConnection {
  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    // The row a caller needs to go on as it would (an attachment's id, the one event inserted).
    const rows = /returning "id"$/.test(query.sql) ? [{ id: 'x' }] : query.sql.startsWith('insert into "events"') ? [{ id: 'x', organizationId: 'o', sequence: 0, kind: 'push' }] : [];
    return { rows: rows as R[], numAffectedRows: 0n };
  }
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {}
}

class InstantDriver implements Driver {
  readonly connection = new InstantConnection();
  async init() {}
  async acquireConnection() {
    return this.connection;
  }
  async beginTransaction() {}
  async commitTransaction() {}
  async rollbackTransaction() {}
  async releaseConnection() {}
  async destroy() {}
}

const db = new Kysely<Database>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new InstantDriver(),
    createIntrospector: (k) => new PostgresIntrospector(k),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

const id = () => randomUUID();
const event: NormalizedEvent = {
  provider: 'gitlab',
  deliveryId: 'd',
  kind: 'push',
  repository: { externalId: '42', fullName: 'group/project' },
  ref: { type: 'branch', name: 'main', before: 'b'.repeat(40), after: 'a'.repeat(40) },
};

const statements: [string, () => Promise<unknown>][] = [
  ['event: loadDelivery', () => loadDelivery(db, { provider: 'gitlab', deliveryId: id(), connectionId: id() })],
  ['event: claimDeliveryDigest', () => claimDeliveryDigest(db, { connectionId: id(), digest: 'd'.repeat(64), deliveryId: id(), receivedAt: new Date(), notBefore: new Date() })],
  ['event: findAttachedRepositories', () => findAttachedRepositories(db, 'gitlab', ['42'], { connectionId: id() })],
  ['event: insertDeliveryEvents (1 row)', () => insertDeliveryEvents(db, { provider: 'gitlab', deliveryId: id(), connectionId: id(), receivedAt: new Date() }, [{ organizationId: id(), repositoryId: id(), sequence: 0, event }], { withEvents: true })],
  ['event: listSubscribersForDispatchOf', () => listSubscribersForDispatchOf(db, [id()])],
  ['event: recordDispatchAttempt', () => recordDispatchAttempt(db, { subscriberId: id(), eventId: id(), attempt: 1, succeeded: true, statusCode: 200, durationMs: 5 })],
  ['dispatch: loadDispatch', () => loadDispatch(db, id(), id())],
  ['api: findOrganizationAndRepository', () => findOrganizationAndRepository(db, id(), id())],
  ['attach: loadRepositoryTarget', () => loadRepositoryTarget(db, id(), id())],
  ['attach: setAttachmentStatus', () => setAttachmentStatus(db, { organizationId: id(), repositoryId: id(), status: 'attaching', keepAttached: true })],
  ['attach: recordedHookIds', () => recordedHookIds(db, id())],
  ['attach: recordedCredentialVersions', () => recordedCredentialVersions(db, id())],
  ['attach: attachmentIdOf', () => attachmentIdOf(db, id())],
  ['attach: recordHookCarrying', () => recordHookCarrying(db, { attachmentId: id(), connectionId: id(), credentialVersion: 1, providerHookId: '7', events: ['push'] })],
  ['attach: webhookCredentialsOf', () => webhookCredentialsOf(db, {} as EncryptionKeys, id())],
  ['attach: forgetHooksExcept', () => forgetHooksExcept(db, id(), ['7'])],
];

const calls = Number(process.argv.find((a) => a.startsWith('--calls='))?.split('=')[1] ?? 20_000);
const baseline = async () => id();

async function cpuPerCall(fn: () => Promise<unknown>, n: number): Promise<number> {
  for (let i = 0; i < 2000; i++) await fn(); // warm up: optimized code, as in a running worker
  const start = process.cpuUsage();
  for (let i = 0; i < n; i++) await fn();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / n;
}

const floor = await cpuPerCall(baseline, calls);
const results: Record<string, number> = {};
let eventUs = 0;
let attachUs = 0;
for (const [name, fn] of statements) {
  const us = (await cpuPerCall(fn, calls)) - floor;
  results[name] = Math.round(us * 10) / 10;
  if (name.startsWith('event:')) eventUs += us;
  if (name.startsWith('attach:')) attachUs += us;
}
console.log(JSON.stringify({ calls, floorUs: Math.round(floor * 10) / 10, perCallUs: results, eventRecordingAndAttemptUs: Math.round(eventUs), attachStatementsOnceEachUs: Math.round(attachUs) }, null, 2));
await db.destroy();
