import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createCredentialCache } from '../../api/webhooks/connection-credentials.ts';
import { addWebhookCredential, ensureWebhookCredential, receivingConnection } from '../../lib/db/repositories/webhook-credentials.ts';
import { seedConnection } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

/**
 * The receivers' cache of connections' webhook credentials against a caller who names connections
 * at will (`?c=` is not a secret): made-up ids do not evict real connections, and a connection's
 * reloads (a delivery that matches no credential it knows) are spaced, yet never miss a credential
 * made before the delivery came. Real PostgreSQL; the cache's reads counted.
 */
describe('connection credential cache (real PostgreSQL)', () => {
  let h: Harness;
  let organizationId: string;

  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true, withoutIntakeRelay: true });
    ({ org: { id: organizationId } } = await createOrgWithToken(h));
  });
  afterAll(async () => {
    await h?.close();
  });

  async function connection(): Promise<string> {
    const id = await seedConnection(h, { organizationId, provider: 'gitlab', baseUrl: 'https://gitlab.test' });
    await ensureWebhookCredential(h.db, h.keys, { id, provider: 'gitlab' });
    return id;
  }

  /** A cache whose database reads are counted per connection (once answered); `gate`, when set, holds a read's answer until it resolves. */
  function countingCache(options: { maxEntries?: number; maxMissing?: number; minReloadMs?: number } = {}) {
    const reads = new Map<string, number>();
    let gate: Promise<void> | undefined;
    const cache = createCredentialCache({
      db: h.db,
      keys: h.keys,
      ...options,
      read: async (id) => {
        const value = await receivingConnection(h.db, h.keys, id);
        // Counted once the database has answered.
        reads.set(id, (reads.get(id) ?? 0) + 1);
        await gate;
        return value;
      },
    });
    return { cache, readsOf: (id: string) => reads.get(id) ?? 0, hold: (until: Promise<void>) => (gate = until) };
  }

  it('remembers connections that do not exist apart: a flood of made-up ids evicts none of the real ones', async () => {
    const real = await connection();
    const { cache, readsOf } = countingCache({ maxEntries: 2, maxMissing: 10 });
    expect((await cache.get(real)).connection?.provider).toBe('gitlab');
    for (let i = 0; i < 100; i++) expect((await cache.get(randomUUID())).connection).toBeUndefined();
    // Still remembered: no read.
    expect(await cache.get(real)).toMatchObject({ fresh: false, connection: { provider: 'gitlab' } });
    expect(readsOf(real)).toBe(1);
    expect(cache.size()).toEqual({ known: 1, missing: 10 });
  });

  it("reads a connection at most once per minReloadMs however many deliveries miss its credentials, and the read sees a credential made before they came", async () => {
    const id = await connection();
    const { cache, readsOf } = countingCache({ minReloadMs: 300 });
    const first = (await cache.get(id)).connection!;
    expect(first.credentials).toHaveLength(1);
    // A rotation makes a credential; then deliveries (one carrying it, many forged) miss the remembered ones at once.
    const added = await addWebhookCredential(h.db, h.keys, { id, provider: 'gitlab' });
    const reloads = await Promise.all(Array.from({ length: 50 }, () => cache.reload(id)));
    expect(readsOf(id)).toBe(2);
    for (const reloaded of reloads) expect(reloaded?.credentials.map((c) => c.version)).toEqual([added.version, 1]);
    // And the next ones again share one read.
    await Promise.all(Array.from({ length: 50 }, () => cache.reload(id)));
    expect(readsOf(id)).toBe(3);
  });

  it('does not hand a reload the answer of a read that started before it was asked for', async () => {
    const id = await connection();
    const { cache, readsOf, hold } = countingCache({ minReloadMs: 0 });
    let open!: () => void;
    hold(new Promise<void>((resolve) => (open = resolve)));
    // A read in flight (an expired entry, a first delivery) has read the one credential there was...
    const inFlight = cache.get(id);
    await vi.waitFor(() => expect(readsOf(id)).toBe(1), { timeout: 10_000, interval: 5 });
    const added = await addWebhookCredential(h.db, h.keys, { id, provider: 'gitlab' });
    // ... when a delivery carrying the credential just made asks for a reload.
    const reload = cache.reload(id);
    hold(Promise.resolve());
    open();
    expect((await inFlight).connection?.credentials.map((c) => c.version)).toEqual([1]);
    expect((await reload)?.credentials.map((c) => c.version)).toEqual([added.version, 1]);
    expect(readsOf(id)).toBe(2);
  });
});
