import { isIPv6 } from 'node:net';

/**
 * How many bytes of webhook bodies not yet verified may be held in memory at once. GitHub's and
 * Bitbucket's signatures are HMACs over the whole body, and the body is parsed once it is verified,
 * so it has to be buffered before anybody knows who sent it; without a bound, unsigned posts of
 * `webhooks.maxBodyBytes` each cost that much memory apiece. A body reserves its declared length
 * (or, chunked, each chunk as it arrives) before it is read and gives it back once verified or
 * refused; one that does not fit is answered 503 with Retry-After, unread.
 *
 * Fairness: one source (a client address; an IPv6 one by its /64) holds at most `perSourceBytes`,
 * so a single sender cannot take the whole budget from the providers' own senders.
 */
export function createUnverifiedBudget({ totalBytes, perSourceBytes }: { totalBytes: number; perSourceBytes: number }) {
  let held = 0;
  const bySource = new Map<string, number>();
  return {
    /** Takes `bytes` for `source`; false (nothing taken) when the budget or the source's share would be exceeded. */
    reserve(source: string, bytes: number): boolean {
      const own = bySource.get(source) ?? 0;
      if (held + bytes > totalBytes || own + bytes > perSourceBytes) return false;
      held += bytes;
      bySource.set(source, own + bytes);
      return true;
    },
    release(source: string, bytes: number): void {
      if (bytes <= 0) return;
      held -= bytes;
      const own = (bySource.get(source) ?? 0) - bytes;
      if (own > 0) bySource.set(source, own);
      else bySource.delete(source);
    },
    /** Bytes held now (all sources). */
    held: () => held,
  };
}

export type UnverifiedBudget = ReturnType<typeof createUnverifiedBudget>;

/**
 * The budget's defaults: 64 MiB, or two bodies of the limit when that is more; a source may hold a
 * quarter of it, and always one body of the limit.
 */
export function unverifiedBudgetSizes(maxBodyBytes: number, totalBytes?: number): { totalBytes: number; perSourceBytes: number } {
  const total = totalBytes ?? Math.max(64 * 1024 * 1024, 2 * maxBodyBytes);
  return { totalBytes: total, perSourceBytes: Math.min(total, Math.max(maxBodyBytes, Math.floor(total / 4))) };
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
