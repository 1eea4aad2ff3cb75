import { sql, type Kysely, type Transaction } from 'kysely';
import type { CredentialRotationStatus } from '../../domain.ts';
import type { Connection, Database, NewConnection } from '../schema.ts';
import { lockOrganization } from './organizations.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** Columns safe to return from the API: never a credential. */
export const PUBLIC_CONNECTION_COLUMNS = [
  'id',
  'organization_id',
  'provider',
  'base_url',
  'external_key',
  'account',
  'status',
  'reason',
  'disconnect_requested_at',
  'rotation_status',
  'rotation_reason',
  'rotation_requested_at',
  'created_at',
  'updated_at',
] as const;
export type PublicConnection = Pick<Connection, (typeof PUBLIC_CONNECTION_COLUMNS)[number]>;

export async function insertConnection(db: Executor, values: NewConnection & { id: string }): Promise<void> {
  await db.insertInto('connections').values(values).execute();
}

export async function listConnections(db: Executor, organizationId: string): Promise<PublicConnection[]> {
  return db
    .selectFrom('connections')
    .select(PUBLIC_CONNECTION_COLUMNS)
    .where('organization_id', '=', organizationId)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
}

export async function findConnection(db: Executor, organizationId: string, id: string): Promise<PublicConnection | undefined> {
  return db
    .selectFrom('connections')
    .select(PUBLIC_CONNECTION_COLUMNS)
    .where('organization_id', '=', organizationId)
    .where('id', '=', id)
    .executeTakeFirst();
}

/** The sealed credentials of a connection, for activities only. */
export async function loadConnectionSecrets(db: Executor, id: string) {
  return db
    .selectFrom('connections')
    .select(['id', 'organization_id', 'provider', 'base_url', 'external_key', 'status', 'credential', 'pending_credential', 'rotation_id', 'rotation_status'])
    .where('id', '=', id)
    .executeTakeFirst();
}

export async function markConnectionActive(db: Executor, id: string, account: string): Promise<void> {
  await db
    .updateTable('connections')
    .set((eb) => ({
      credential: eb.fn.coalesce('pending_credential', 'credential'),
      pending_credential: null,
      status: 'active',
      account,
      reason: null,
      updated_at: new Date(),
    }))
    .where('id', '=', id)
    .where('status', '<>', 'disconnected')
    .execute();
}

export async function markConnectionFailed(db: Executor, id: string, reason: string): Promise<void> {
  await db
    .updateTable('connections')
    .set({ pending_credential: null, status: 'failed', reason, updated_at: new Date() })
    .where('id', '=', id)
    .where('status', '<>', 'disconnected')
    .execute();
}

/** A disconnect began: the connection takes no new attach from now on (the first request's time stays). */
export async function markDisconnectRequested(db: Executor, id: string): Promise<void> {
  await db
    .updateTable('connections')
    .set((eb) => ({ disconnect_requested_at: eb.fn.coalesce('disconnect_requested_at', sql<Date>`now()`), updated_at: new Date() }))
    .where('id', '=', id)
    .execute();
}

/**
 * Deletes the connection's credentials: its token and its webhook credentials (its hooks are gone,
 * or given up on by a forced disconnect: an attachment not detached then stops being routed).
 */
export async function markConnectionDisconnected(db: Executor, id: string): Promise<void> {
  await db
    .updateTable('attachments')
    .set({ status: 'failed', reason: 'the connection was disconnected before this repository was detached: its hooks may remain at the provider', updated_at: new Date() })
    .where('repository_id', 'in', (eb) => eb.selectFrom('repositories').select('id').where('connection_id', '=', id))
    .where('status', 'not in', ['detached', 'failed'])
    .execute();
  await db.deleteFrom('webhook_credentials').where('connection_id', '=', id).execute();
  await db
    .updateTable('connections')
    .set({
      credential: null,
      pending_credential: null,
      status: 'disconnected',
      reason: null,
      // A rotation still being validated ends with the connection.
      rotation_reason: sql<string | null>`case when rotation_status = 'validating' then 'the connection was disconnected' else rotation_reason end`,
      rotation_status: sql<CredentialRotationStatus | null>`case when rotation_status = 'validating' then 'failed' else rotation_status end`,
      updated_at: new Date(),
    })
    .where('id', '=', id)
    .execute();
}

/** A disconnect could not detach every repository: the connection keeps its credential, and says why. */
export async function recordDisconnectIncomplete(db: Executor, id: string, reason: string): Promise<void> {
  await db.updateTable('connections').set({ reason, updated_at: new Date() }).where('id', '=', id).where('status', '<>', 'disconnected').execute();
}

/** Connections (not disconnected) of any organization bound to a provider key (an installation, an Azure DevOps organization). */
function liveWithKey(db: Executor, provider: Connection['provider'], externalKey: string) {
  return db.selectFrom('connections').where('provider', '=', provider).where('external_key', '=', externalKey).where('status', '<>', 'disconnected');
}

/** The connection (not disconnected) already bound to this installation / Azure DevOps organization. */
export async function findLiveConnectionByExternalKey(db: Executor, organizationId: string, provider: Connection['provider'], externalKey: string) {
  return liveWithKey(db, provider, externalKey).select(['id', 'status']).where('organization_id', '=', organizationId).executeTakeFirst();
}

/**
 * Whether `error` is PostgreSQL refusing a second live connection of one organization to one key
 * (unique index connections_org_external_key_live): a same-key insert that raced past the check.
 */
export function isLiveKeyConflict(error: unknown): boolean {
  const { code, constraint } = (error ?? {}) as { code?: unknown; constraint?: unknown };
  return code === '23505' && constraint === 'connections_org_external_key_live';
}

/** Live connections (not disconnected) of other organizations bound to the same provider key (a GitHub installation). */
export async function liveConnectionsElsewhere(db: Executor, organizationId: string, provider: Connection['provider'], externalKey: string) {
  return liveWithKey(db, provider, externalKey).select(['id', 'organization_id']).where('organization_id', '<>', organizationId).execute();
}

/**
 * Holds, until `trx` ends, the lock of one provider key across organizations, so that a check that
 * no other organization binds it and the insert that binds it are one step (a transaction-scoped
 * advisory lock: nothing to clean up, and no lock held by a request that failed).
 */
export async function lockExternalKey(trx: Transaction<Database>, provider: Connection['provider'], externalKey: string): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${`connections:${provider}:${externalKey}`}, 0))`.execute(trx);
}

/** A rotation not settled after this long is taken as lost (its run never started): a new one may replace it. */
const STALE_ROTATION = sql<Date>`now() - interval '15 minutes'`;

/**
 * Starts a credential rotation: the new credential waits in pending_credential while the connection
 * goes on with its old one. Refused (false) while the connection is being connected or disconnected,
 * or another rotation is being validated.
 */
export async function beginCredentialRotation(db: Executor, id: string, rotationId: string, sealed: string): Promise<boolean> {
  const row = await db
    .updateTable('connections')
    .set({ pending_credential: sealed, rotation_id: rotationId, rotation_status: 'validating', rotation_reason: null, rotation_requested_at: new Date(), updated_at: new Date() })
    .where('id', '=', id)
    .where('status', 'in', ['active', 'failed'])
    .where('disconnect_requested_at', 'is', null)
    .where((eb) => eb.or([eb('rotation_status', 'is distinct from', 'validating'), eb('rotation_requested_at', '<', STALE_ROTATION)]))
    .returning('id')
    .executeTakeFirst();
  return row !== undefined;
}

/** Promotes exactly the credential of this rotation, if it is still the one being validated. */
export async function promoteCredentialRotation(db: Executor, id: string, rotationId: string, account: string): Promise<void> {
  await db
    .updateTable('connections')
    .set((eb) => ({ credential: eb.ref('pending_credential'), pending_credential: null, status: 'active', account, reason: null, rotation_status: 'succeeded', rotation_reason: null, updated_at: new Date() }))
    .where('id', '=', id)
    .where('rotation_id', '=', rotationId)
    .where('rotation_status', '=', 'validating')
    .where('pending_credential', 'is not', null)
    .where('status', '<>', 'disconnected')
    .execute();
}

/** Records why a rotation failed; the connection keeps its credential and status. */
export async function failCredentialRotation(db: Executor, id: string, rotationId: string, reason: string): Promise<void> {
  await db
    .updateTable('connections')
    .set({ pending_credential: null, rotation_status: 'failed', rotation_reason: reason, updated_at: new Date() })
    .where('id', '=', id)
    .where('rotation_id', '=', rotationId)
    .where('rotation_status', '=', 'validating')
    .execute();
}

/** How many connections (not disconnected) the organization has, holding its row until the transaction ends (lockOrganization). */
export async function lockLiveConnectionCount(trx: Transaction<Database>, organizationId: string): Promise<number> {
  await lockOrganization(trx, organizationId);
  const { count } = await trx
    .selectFrom('connections')
    .select((eb) => eb.fn.countAll<string>().as('count'))
    .where('organization_id', '=', organizationId)
    .where('status', '<>', 'disconnected')
    .executeTakeFirstOrThrow();
  return Number(count);
}
