import { isIPv6 } from 'node:net';

/**
 * A bound on bytes held in memory, in all and per key: `reserve` takes bytes for a key (false, nothing
 * taken, when the total or the key's share would be exceeded), `release` gives them back. Two Map
 * operations a call. The receivers hold two: bodies not verified yet, keyed by sender address
 * (unverifiedBudgetSizes), and verified deliveries in flight, keyed by connection (heldBudgetSizes).
 */
export function createByteBudget({ totalBytes, perKeyBytes }: { totalBytes: number; perKeyBytes: number }) {
  let held = 0;
  const byKey = new Map<string, number>();
  return {
    /** Takes `bytes` for `key`; false (nothing taken) when the budget or the key's share would be exceeded. */
    reserve(key: string, bytes: number): boolean {
      const own = byKey.get(key) ?? 0;
      if (held + bytes > totalBytes || own + bytes > perKeyBytes) return false;
      held += bytes;
      byKey.set(key, own + bytes);
      return true;
    },
    release(key: string, bytes: number): void {
      if (bytes <= 0) return;
      held -= bytes;
      const own = (byKey.get(key) ?? 0) - bytes;
      if (own > 0) byKey.set(key, own);
      else byKey.delete(key);
    },
    /** Bytes held now (all keys). */
    held: () => held,
  };
}

export type ByteBudget = ReturnType<typeof createByteBudget>;

/**
 * The budget of webhook bodies not yet verified (webhooks.unverifiedBodyBytes): how many bytes of
 * them may be held in memory at once. GitHub's and Bitbucket's signatures are HMACs over the whole
 * body, and the body is parsed once it is verified, so it has to be buffered before anybody knows
 * who sent it; without a bound, unsigned posts of `webhooks.maxBodyBytes` each cost that much
 * memory apiece. A body reserves its declared length (or, chunked, each chunk as it arrives) before
 * it is read and gives it back once verified or refused; one that does not fit is answered 503 with
 * Retry-After, unread.
 *
 * Fairness: its keys are sources (sourceOf: a client address; an IPv6 one by its /64), and one
 * source holds at most `perKeyBytes`, so a single sender cannot take the whole budget from the
 * providers' own senders. The defaults: 64 MiB, or two bodies of the limit when that is more; a
 * source may hold a quarter of it, and always one body of the limit.
 */
export function unverifiedBudgetSizes(maxBodyBytes: number, totalBytes?: number): { totalBytes: number; perKeyBytes: number } {
  const total = totalBytes ?? Math.max(64 * 1024 * 1024, 2 * maxBodyBytes);
  return { totalBytes: total, perKeyBytes: Math.min(total, Math.max(maxBodyBytes, Math.floor(total / 4))) };
}

/**
 * What a verified delivery may count at most: its body (`maxBodyBytes`) and its events' JSON (up to
 * twice `maxBodyBytes` in UTF-8, counted twice: the string, and pg's copy of it while the INSERT is
 * sent). A connection's share is never less, so any delivery the limits admit fits once its
 * connection holds nothing else.
 */
export const heldDeliveryMaxBytes = (maxBodyBytes: number) => 5 * maxBodyBytes;

/**
 * The defaults of the budget of verified deliveries in flight (webhooks.verifiedDeliveryBytes): 256 MiB,
 * or two deliveries of the most a delivery counts when that is more (10 times maxBodyBytes); a key (a
 * connection, GitHub's App, a provider's legacy hooks) may hold a quarter of it, and always one
 * delivery of the most. At 25 MiB: 256 MiB in all, 125 MiB a connection.
 */
export function heldBudgetSizes(maxBodyBytes: number, totalBytes?: number): { totalBytes: number; perKeyBytes: number } {
  const one = heldDeliveryMaxBytes(maxBodyBytes);
  const total = totalBytes ?? Math.max(256 * 1024 * 1024, 2 * one);
  return { totalBytes: total, perKeyBytes: Math.min(total, Math.max(one, Math.floor(total / 4))) };
}

/** A client address as a budget source: IPv4 as is (also when IPv4-mapped), IPv6 by its /64 (one host has a whole /64). */
export function sourceOf(address: string | undefined): string {
  if (!address) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const [head = '', tail] = address.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}
