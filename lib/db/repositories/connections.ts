import { sql, type Kysely, type Transaction } from 'kysely';
import type { Connection, Database, NewConnection } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** Columns safe to return from the API: never a credential. */
export const PUBLIC_CONNECTION_COLUMNS = ['id', 'organization_id', 'provider', 'base_url', 'external_key', 'account', 'status', 'reason', 'disconnect_requested_at', 'created_at', 'updated_at'] as const;
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
    .select(['id', 'organization_id', 'provider', 'base_url', 'external_key', 'status', 'credential', 'pending_credential'])
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

/** Deletes the connection's credentials: its token and its webhook credentials (its hooks are gone). */
export async function markConnectionDisconnected(db: Executor, id: string): Promise<void> {
  await db.deleteFrom('webhook_credentials').where('connection_id', '=', id).execute();
  await db
    .updateTable('connections')
    .set({ credential: null, pending_credential: null, status: 'disconnected', reason: null, updated_at: new Date() })
    .where('id', '=', id)
    .execute();
}

/** The connection (not disconnected) already bound to this installation / Azure DevOps organization. */
export async function findLiveConnectionByExternalKey(db: Executor, organizationId: string, provider: Connection['provider'], externalKey: string) {
  return db
    .selectFrom('connections')
    .select(['id', 'status'])
    .where('organization_id', '=', organizationId)
    .where('provider', '=', provider)
    .where('external_key', '=', externalKey)
    .where('status', '<>', 'disconnected')
    .executeTakeFirst();
}

export async function setPendingCredential(db: Executor, id: string, sealed: string | null): Promise<void> {
  await db.updateTable('connections').set({ pending_credential: sealed, status: sealed ? 'pending' : undefined, updated_at: new Date() }).where('id', '=', id).execute();
}
