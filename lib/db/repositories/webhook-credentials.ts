import { randomBytes } from 'node:crypto';
import { type Kysely, sql, type Transaction } from 'kysely';
import type { RecordedHook } from './attachments.ts';
import { open, seal, type EncryptionKeys } from '../../crypto.ts';
import type { Provider } from '../../domain.ts';
import type { Database } from '../schema.ts';
import { prepared } from '../prepared.ts';

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

/**
 * Why the connection's webhook credential cannot be rotated now, or undefined when it can: GitHub
 * deliveries are signed with the App's secret (the operator's), and the hooks are re-saved through
 * the connection's own access, so it must be active and not being disconnected.
 */
export function webhookCredentialRotationRefusal(connection: { id: string; provider: Provider; status: string; disconnect_requested_at: Date | null }): string | undefined {
  if (!hasWebhookCredential(connection.provider)) {
    return 'GitHub deliveries are signed with the App\'s webhook secret, not a credential of the connection: rotate gitProviders.github.webhookSecret (with previousWebhookSecret meanwhile)';
  }
  if (connection.status !== 'active') return `connection ${connection.id} is ${connection.status}: its hooks can be saved with a new credential only through an active connection`;
  if (connection.disconnect_requested_at) return `connection ${connection.id} is being disconnected`;
  return undefined;
}

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
  const { rows } = await WEBHOOK_CREDENTIALS_OF(db, { connectionId });
  return rows.map((row) => ({
    version: row.version,
    ...(row.basic_auth_user ? { basicAuthUser: row.basic_auth_user } : {}),
    secret: open(keys, row.secret, sealContext(connectionId)),
  }));
}

/** webhookCredentialsOf's statement, compiled once: every hook an attach saves reads it. */
const WEBHOOK_CREDENTIALS_OF = prepared((db, p: { connectionId: string }) =>
  db.selectFrom('webhook_credentials').select(['version', 'basic_auth_user', 'secret']).where('connection_id', '=', p.connectionId).orderBy('version', 'desc'),
);

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

/** The versions of the connection's accepted credentials, highest first. */
export async function webhookCredentialVersions(db: Executor, connectionId: string): Promise<number[]> {
  const rows = await db.selectFrom('webhook_credentials').select('version').where('connection_id', '=', connectionId).orderBy('version', 'desc').execute();
  return rows.map((row) => row.version);
}

/**
 * Makes credential `version` of the connection (a rotation's new one) unless it is there already:
 * a rotation picks its version once (one above the highest it found), so a repeated step finds
 * its own credential instead of making another.
 */
export async function ensureWebhookCredentialVersion(db: Executor, keys: EncryptionKeys, connection: { id: string; provider: Provider }, version: number): Promise<void> {
  await db
    .insertInto('webhook_credentials')
    .values({ connection_id: connection.id, version, ...generated(keys, connection) })
    .onConflict((oc) => oc.columns(['connection_id', 'version']).doNothing())
    .execute();
}

/**
 * Records a hook as carrying credential `credentialVersion`, provided that credential is still
 * accepted; false (nothing recorded) when it was dropped meanwhile. The credential row is locked
 * for share while the hook is recorded, and dropUnusedWebhookCredentials locks the rows it may
 * drop for update before it looks for hooks carrying them: a hook saved with a credential just
 * being dropped is either seen by the drop (the credential is kept) or refused here (saved again
 * with the current one), never left carrying a credential the receiver no longer accepts. One
 * statement (its lock held until it commits): one round trip where a transaction took four.
 */
export async function recordHookCarrying(db: Executor, hook: RecordedHook & { attachmentId: string; connectionId: string; credentialVersion: number }): Promise<boolean> {
  const recorded = await sql`
    insert into hooks (attachment_id, provider_hook_id, events, credential_version)
    select ${hook.attachmentId}::uuid, ${hook.providerHookId}, ${JSON.stringify(hook.events)}::jsonb, c.version
    from webhook_credentials c
    where c.connection_id = ${hook.connectionId} and c.version = ${hook.credentialVersion}
    for share
    on conflict (attachment_id, provider_hook_id) do update set events = excluded.events, credential_version = excluded.credential_version
    returning 1
  `.execute(db);
  return recorded.rows.length > 0;
}

/** A recorded hook of the connection still carrying a credential older than a version, and its attachment's last hook-health finding. */
export interface HookOnOlderCredential {
  repositoryId: string;
  providerHookId: string;
  credentialVersion: number;
  hookHealthStatus: string | null;
  hookHealthReason: string | null;
}

/**
 * Drops the connection's credentials older than `current` that no recorded hook carries any more
 * (the end of a rotation): a hook that could not be saved with the new credential keeps the one it
 * carries accepted. Returns the versions dropped and the hooks that kept theirs.
 */
export async function dropUnusedWebhookCredentials(db: Kysely<Database>, connectionId: string, current: number): Promise<{ dropped: number[]; stillCarried: HookOnOlderCredential[] }> {
  return db.transaction().execute(async (trx) => {
    const older = await trx
      .selectFrom('webhook_credentials')
      .select('version')
      .where('connection_id', '=', connectionId)
      .where('version', '<', current)
      .forUpdate()
      .execute();
    if (older.length === 0) return { dropped: [], stillCarried: [] };
    const versions = older.map((row) => row.version);
    const carried = await trx
      .selectFrom('hooks as h')
      .innerJoin('attachments as a', 'a.id', 'h.attachment_id')
      .innerJoin('repositories as r', 'r.id', 'a.repository_id')
      .select(['r.id as repository_id', 'h.provider_hook_id', 'h.credential_version', 'a.hook_health_status', 'a.hook_health_reason'])
      .where('r.connection_id', '=', connectionId)
      .where('h.credential_version', 'in', versions)
      .orderBy('r.id')
      .orderBy('h.provider_hook_id')
      .execute();
    const kept = new Set(carried.map((row) => row.credential_version));
    const dropped = versions.filter((version) => !kept.has(version));
    if (dropped.length > 0) await trx.deleteFrom('webhook_credentials').where('connection_id', '=', connectionId).where('version', 'in', dropped).execute();
    return {
      dropped: dropped.sort((a, b) => a - b),
      stillCarried: carried.map((row) => ({
        repositoryId: row.repository_id,
        providerHookId: row.provider_hook_id,
        credentialVersion: row.credential_version!,
        hookHealthStatus: row.hook_health_status,
        hookHealthReason: row.hook_health_reason,
      })),
    };
  });
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
