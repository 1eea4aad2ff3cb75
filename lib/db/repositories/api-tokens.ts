import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** An organization token as listed: never its hash, let alone the token. */
export interface ApiTokenInfo {
  id: string;
  name: string;
  createdAt: Date;
  lastUsedAt: Date | null;
  expiresAt: Date | null;
}

/** How stale `last_used_at` may get: a token in steady use costs one write a minute, not one per request. */
export const LAST_USED_RESOLUTION_MS = 60_000;

export async function insertApiToken(
  db: Executor,
  token: { id: string; organizationId: string; tokenHash: string; name: string; expiresAt: Date | null },
): Promise<ApiTokenInfo> {
  return db
    .insertInto('api_tokens')
    .values({ id: token.id, organization_id: token.organizationId, token_hash: token.tokenHash, name: token.name, expires_at: token.expiresAt })
    .returning(['id', 'name', 'created_at as createdAt', 'last_used_at as lastUsedAt', 'expires_at as expiresAt'])
    .executeTakeFirstOrThrow();
}

export async function listApiTokens(db: Executor, organizationId: string): Promise<ApiTokenInfo[]> {
  return db
    .selectFrom('api_tokens')
    .select(['id', 'name', 'created_at as createdAt', 'last_used_at as lastUsedAt', 'expires_at as expiresAt'])
    .where('organization_id', '=', organizationId)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
}

/** Revokes (deletes) a token of the organization; false when it has no such token. */
export async function deleteApiToken(db: Executor, organizationId: string, id: string): Promise<boolean> {
  const result = await db.deleteFrom('api_tokens').where('organization_id', '=', organizationId).where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/**
 * The organization a presented token acts for: undefined when no token has this hash or it has
 * expired. Records the use when the last one recorded is over a minute old.
 */
export async function useApiToken(db: Executor, tokenHash: string, now = new Date()): Promise<{ organizationId: string } | undefined> {
  const row = await db
    .selectFrom('api_tokens')
    .select(['id', 'organization_id', 'expires_at', 'last_used_at'])
    .where('token_hash', '=', tokenHash)
    .executeTakeFirst();
  if (!row || (row.expires_at && row.expires_at <= now)) return undefined;
  if (!row.last_used_at || now.getTime() - row.last_used_at.getTime() >= LAST_USED_RESOLUTION_MS) {
    // Concurrent first uses in the same minute write once: the condition is checked again in the row.
    await db
      .updateTable('api_tokens')
      .set({ last_used_at: now })
      .where('id', '=', row.id)
      .where((eb) => eb.or([eb('last_used_at', 'is', null), eb('last_used_at', '<=', sql<Date>`${now}::timestamptz - interval '1 minute'`)]))
      .execute();
  }
  return { organizationId: row.organization_id };
}
