export interface AttachedTarget {
  organizationId: string;
  /** Slug and full name name the run in the Temporal UI (workflows/run-labels.ts). */
  organizationSlug: string;
  repositoryId: string;
  fullName: string;
  connectionId: string;
  externalId: string;
  /** The connection's base URL: the instance the repository lives on. */
  baseUrl: string;
  /** What the connection is bound to: for GitHub, the App installation id. */
  connectionKey: string | null;
}

/**
 * Which organizations have a repository attached, remembered for a short while so the receiver's
 * hot path (a delivery for an attached repository: nearly all of them, since hooks exist only
 * there) skips the database. Only positive answers are kept: a repository not found is looked up
 * again on the next delivery, so an attach takes effect at once. A detach may go unnoticed here
 * for up to `ttlMs`; the delivery then starts an event workflow that records nothing, because the
 * workflow reads the attachments itself. The cache never decides what is recorded, only whether a
 * workflow starts.
 */
export function createAttachedCache({ ttlMs = 30_000, maxEntries = 100_000, now = () => Date.now() } = {}) {
  const entries = new Map<string, { targets: AttachedTarget[]; expiresAt: number }>();
  // `scope` names whose attachments a delivery may reach (a connection, legacy hooks of a provider, a GitHub App).
  const key = (scope: string, externalId: string) => `${scope}\u0000${externalId}`;
  return {
    /** The cached targets of every id, or undefined when any of them is not (or no longer) cached. */
    get(scope: string, externalIds: readonly string[]): AttachedTarget[] | undefined {
      const found: AttachedTarget[] = [];
      for (const externalId of new Set(externalIds)) {
        const entry = entries.get(key(scope, externalId));
        if (!entry || entry.expiresAt <= now()) return undefined;
        found.push(...entry.targets);
      }
      return found;
    },
    /** Remembers the attached targets found for one repository id; an empty list is not kept. */
    set(scope: string, externalId: string, targets: AttachedTarget[]): void {
      const k = key(scope, externalId);
      entries.delete(k);
      if (targets.length === 0 || ttlMs === 0) return;
      // Insertion order is age order: past the bound, the oldest goes first.
      if (entries.size >= maxEntries) entries.delete(entries.keys().next().value!);
      entries.set(k, { targets, expiresAt: now() + ttlMs });
    },
    get size() {
      return entries.size;
    },
  };
}

export type AttachedCache = ReturnType<typeof createAttachedCache>;
