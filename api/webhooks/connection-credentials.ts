import type { EncryptionKeys } from '../../lib/crypto.ts';
import type { Db } from '../../lib/db/index.ts';
import { receivingConnection } from '../../lib/db/repositories/webhook-credentials.ts';

export type ReceivingConnection = NonNullable<Awaited<ReturnType<typeof receivingConnection>>>;

/**
 * The accepted webhook credentials of connections, opened, remembered for `ttlMs` so a delivery
 * costs neither a database read nor a decryption. A delivery that matches none of them is checked
 * once more against the database (`reload`): a rotation may have made a credential since, and a
 * valid delivery must never be refused (providers disable hooks that fail). That costs a forged
 * delivery one indexed read, as a delivery for a repository not attached does. A dropped credential
 * stays accepted here for at most `ttlMs`. Unknown connections are remembered too (as undefined).
 */
export function createCredentialCache({ db, keys, ttlMs = 60_000, maxEntries = 10_000, now = () => Date.now() }: { db: Db; keys: EncryptionKeys; ttlMs?: number; maxEntries?: number; now?: () => number }) {
  const entries = new Map<string, { value: ReceivingConnection | undefined; readAt: number }>();

  async function reload(connectionId: string): Promise<ReceivingConnection | undefined> {
    const value = await receivingConnection(db, keys, connectionId);
    entries.delete(connectionId);
    if (ttlMs > 0) {
      // Insertion order is age order: past the bound, the oldest goes first.
      if (entries.size >= maxEntries) entries.delete(entries.keys().next().value!);
      entries.set(connectionId, { value, readAt: now() });
    }
    return value;
  }

  return {
    /** The connection as remembered, or read when it is not (or no longer). */
    async get(connectionId: string): Promise<{ connection: ReceivingConnection | undefined; fresh: boolean }> {
      const entry = entries.get(connectionId);
      if (entry && now() - entry.readAt < ttlMs) return { connection: entry.value, fresh: false };
      return { connection: await reload(connectionId), fresh: true };
    },
    reload,
  };
}

export type CredentialCache = ReturnType<typeof createCredentialCache>;
