import { randomBytes } from 'node:crypto';
import type { Kysely, Transaction } from 'kysely';
import { open, seal, type EncryptionKeys } from '../../crypto.ts';
import type { Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/**
 * One webhook credential of a connection, opened. It lives only in activity and receiver memory:
 * sent to the connection's own provider in the hooks it creates, compared against deliveries.
 */
export interface WebhookCredential {
  version: number;
  /** Azure DevOps: the Basic auth user the subscriptions deliver with (the secret is the password). */
  basicAuthUser?: string;
  /** GitLab: the hook's secret token; Bitbucket: the HMAC key; Azure DevOps: the Basic auth password. */
  secret: string;
}

/** Providers whose hooks carry a credential forgelink makes per connection (GitHub signs with the App's secret). */
export const hasWebhookCredential = (provider: Provider): boolean => provider !== 'github';

/** Bound to the connection as associated data: a sealed secret copied onto another connection will not open. */
const sealContext = (connectionId: string) => `webhook-credential:${connectionId}`;

function generated(keys: EncryptionKeys, connection: { id: string; provider: Provider }) {
  return {
    basic_auth_user: connection.provider === 'azure-devops' ? `forgelink-${randomBytes(9).toString('base64url')}` : null,
    secret: seal(keys, randomBytes(32).toString('base64url'), sealContext(connection.id)),
  };
}

/** Every accepted credential of the connection, the current (highest version) first. */
export async function webhookCredentialsOf(db: Executor, keys: EncryptionKeys, connectionId: string): Promise<WebhookCredential[]> {
  const rows = await db
    .selectFrom('webhook_credentials')
    .select(['version', 'basic_auth_user', 'secret'])
    .where('connection_id', '=', connectionId)
    .orderBy('version', 'desc')
    .execute();
  return rows.map((row) => ({
    version: row.version,
    ...(row.basic_auth_user ? { basicAuthUser: row.basic_auth_user } : {}),
    secret: open(keys, row.secret, sealContext(connectionId)),
  }));
}

/**
 * The connection's current credential, made (version 1) when it has none yet: at connect, or for a
 * connection made before per-connection credentials. Safe to run concurrently and to repeat.
 */
export async function ensureWebhookCredential(db: Executor, keys: EncryptionKeys, connection: { id: string; provider: Provider }): Promise<WebhookCredential> {
  const [current] = await webhookCredentialsOf(db, keys, connection.id);
  if (current) return current;
  await db
    .insertInto('webhook_credentials')
    .values({ connection_id: connection.id, version: 1, ...generated(keys, connection) })
    .onConflict((oc) => oc.columns(['connection_id', 'version']).doNothing())
    .execute();
  return (await webhookCredentialsOf(db, keys, connection.id))[0]!;
}

/**
 * A new current credential (rotation). The older ones stay accepted until dropped. Two rotations
 * of one connection at once collide on the primary key: one fails (and may be retried).
 */
export async function addWebhookCredential(db: Executor, keys: EncryptionKeys, connection: { id: string; provider: Provider }): Promise<WebhookCredential> {
  const { latest } = await db.selectFrom('webhook_credentials').select((eb) => eb.fn.max('version').as('latest')).where('connection_id', '=', connection.id).executeTakeFirstOrThrow();
  const version = (latest ?? 0) + 1;
  await db.insertInto('webhook_credentials').values({ connection_id: connection.id, version, ...generated(keys, connection) }).execute();
  return (await webhookCredentialsOf(db, keys, connection.id)).find((c) => c.version === version)!;
}

/** Stops accepting every credential of the connection older than `version` (the end of a rotation). */
export async function dropWebhookCredentialsBefore(db: Executor, connectionId: string, version: number): Promise<void> {
  await db.deleteFrom('webhook_credentials').where('connection_id', '=', connectionId).where('version', '<', version).execute();
}

/** What the webhook receiver needs to verify a delivery to a connection's own hook: its provider, organization and accepted credentials. */
export async function receivingConnection(db: Executor, keys: EncryptionKeys, connectionId: string) {
  const connection = await db.selectFrom('connections').select(['provider', 'organization_id']).where('id', '=', connectionId).executeTakeFirst();
  if (!connection) return undefined;
  return { provider: connection.provider, organizationId: connection.organization_id, credentials: await webhookCredentialsOf(db, keys, connectionId) };
}
