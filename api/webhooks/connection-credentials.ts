import type { EncryptionKeys } from '../../lib/crypto.ts';
import type { Db } from '../../lib/db/index.ts';
import { receivingConnection } from '../../lib/db/repositories/webhook-credentials.ts';

export type ReceivingConnection = NonNullable<Awaited<ReturnType<typeof receivingConnection>>>;

type Read = (connectionId: string) => Promise<ReceivingConnection | undefined>;

/**
 * The accepted webhook credentials of connections, opened, remembered for `ttlMs` so a delivery
 * costs neither a database read nor a decryption. A delivery that matches none of them is checked
 * once more against the database (`reload`): a rotation may have made a credential since, and a
 * valid delivery must never be refused (providers disable hooks that fail). A dropped credential
 * stays accepted here for at most `ttlMs`.
 *
 * Bounded against a caller who names connections at will (`?c=` is not a secret):
 * - Known connections (at most `maxEntries`, the oldest read dropped first) and connections found
 *   not to exist (at most `maxMissing`, apart) are remembered in separate maps, so ids made up by
 *   the thousand evict only each other, never a real connection.
 * - A connection's reloads start at least `minReloadMs` apart: deliveries refused meanwhile (a
 *   wrong credential sent over and over) wait for the next one, which starts after they came and
 *   which they all share, so a connection costs at most one read and decryption per `minReloadMs`
 *   however many forged deliveries name it, and a delivery carrying a credential made just before
 *   it is still checked against a read that sees it.
 * - Reads of one connection at once are one read.
 */
export function createCredentialCache({
  db,
  keys,
  ttlMs = 60_000,
  maxEntries = 10_000,
  maxMissing = 1_000,
  minReloadMs = 1_000,
  now = () => Date.now(),
  read = (connectionId: string) => receivingConnection(db, keys, connectionId),
}: {
  db: Db;
  keys: EncryptionKeys;
  ttlMs?: number;
  maxEntries?: number;
  maxMissing?: number;
  minReloadMs?: number;
  now?: () => number;
  /** The database read (a test counts its calls). */
  read?: Read;
}) {
  const known = new Map<string, { value: ReceivingConnection; readAt: number }>();
  const missing = new Map<string, number>();
  /** Reads in flight, and (for known connections) the next reload waiting for its turn. */
  const reading = new Map<string, Promise<ReceivingConnection | undefined>>();
  const waiting = new Map<string, Promise<ReceivingConnection | undefined>>();

  const remember = <V>(map: Map<string, V>, bound: number, id: string, value: V) => {
    map.delete(id);
    if (ttlMs <= 0) return;
    // Insertion order is age order: past the bound, the oldest goes first.
    if (map.size >= bound) map.delete(map.keys().next().value!);
    map.set(id, value);
  };

  /** One read of the connection, shared by whoever asks while it runs. */
  function readNow(connectionId: string): Promise<ReceivingConnection | undefined> {
    const running = reading.get(connectionId);
    if (running) return running;
    const startedAt = now();
    const promise = read(connectionId)
      .then((value) => {
        if (value) {
          missing.delete(connectionId);
          remember(known, maxEntries, connectionId, { value, readAt: startedAt });
        } else {
          known.delete(connectionId);
          remember(missing, maxMissing, connectionId, startedAt);
        }
        return value;
      })
      .finally(() => reading.delete(connectionId));
    reading.set(connectionId, promise);
    return promise;
  }

  return {
    /** The connection as remembered, or read when it is not (or no longer). `fresh`: read for this call. */
    async get(connectionId: string): Promise<{ connection: ReceivingConnection | undefined; fresh: boolean }> {
      const entry = known.get(connectionId);
      if (entry && now() - entry.readAt < ttlMs) return { connection: entry.value, fresh: false };
      const missingSince = missing.get(connectionId);
      if (missingSince !== undefined && now() - missingSince < ttlMs) return { connection: undefined, fresh: false };
      return { connection: await readNow(connectionId), fresh: true };
    },
    /**
     * The connection read again, by a read that starts after this call: at once, or, within
     * `minReloadMs` of the last one, when that has passed (shared by every caller until then).
     */
    reload(connectionId: string): Promise<ReceivingConnection | undefined> {
      const queued = waiting.get(connectionId);
      if (queued) return queued;
      const last = known.get(connectionId)?.readAt ?? missing.get(connectionId);
      const running = reading.get(connectionId);
      const wait = last === undefined ? 0 : Math.max(0, last + minReloadMs - now());
      if (!running && wait === 0) return readNow(connectionId);
      const next = (async () => {
        // A read already running may have started before this call: the next one starts after it.
        await running?.catch(() => undefined);
        const latest = known.get(connectionId)?.readAt ?? missing.get(connectionId);
        const left = latest === undefined ? 0 : latest + minReloadMs - now();
        if (left > 0) await new Promise((resolve) => setTimeout(resolve, left).unref?.());
        waiting.delete(connectionId);
        return readNow(connectionId);
      })();
      waiting.set(connectionId, next);
      return next;
    },
    /** How many connections are remembered: known, and found missing. */
    size: () => ({ known: known.size, missing: missing.size }),
  };
}

export type CredentialCache = ReturnType<typeof createCredentialCache>;
