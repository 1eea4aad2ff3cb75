import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { markConnectionDisconnected } from '../../lib/db/repositories/connections.ts';
import { purgeDisconnectedCache, writeListingPage } from '../../lib/db/repositories/repository-cache.ts';
import type { RefreshResult } from '../../workflows/contract.ts';
import { expectExactHookSet, gitlabWorld, outcomeOf, requestAttachment, seedConnection, type HookWorld, type Org, type WorldRepository } from '../support/attachments.ts';
import { manualHold } from '../support/flaky-proxy.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { refreshOrganization } from '../support/listing.ts';

/**
 * A disconnected connection's repository cache stayed for good: a tenant connecting a provider it
 * controls, letting the cache fill and disconnecting, again and again, left up to a listing's cap of
 * rows each time, and a former tenant's repository names stayed. Now the disconnect's last step
 * deletes the rows nothing else needs (no attachment, no event refers to them) and the listing
 * pages; a listing or an event racing the disconnect writes nothing after it.
 */
describe('a disconnect deletes the connection\'s repository cache', () => {
  let h: Harness;
  const worlds: HookWorld[] = [];

  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    for (const world of worlds) await world.close();
    await h?.close();
  });

  async function newOrg(): Promise<Org> {
    const created = await createOrgWithToken(h);
    return { id: created.org.id, slug: created.org.slug, token: created.token };
  }
  /** A GitLab connection of `org` whose provider holds `count` projects, each cached. */
  async function world(org: Org, count: number): Promise<{ world: HookWorld; repos: WorldRepository[] }> {
    const made = await gitlabWorld(h, org);
    worlds.push(made);
    const repos: WorldRepository[] = [];
    for (let i = 0; i < count; i++) repos.push(await made.newRepository());
    return { world: made, repos };
  }
  async function disconnect(org: Org, connectionId: string): Promise<unknown> {
    const res = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${connectionId}`, { token: org.token });
    expect(res.status, await res.clone().text()).toBe(202);
    return resultOf(h, ((await res.json()) as { workflowId: string }).workflowId);
  }
  async function attach(org: Org, made: HookWorld, repo: WorldRepository): Promise<void> {
    expect((await outcomeOf(h, await requestAttachment(h, org, repo.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expectExactHookSet(made, repo);
  }
  /** Every repository row and listing page a connection has, as ids / page keys, sorted. */
  async function cacheOf(connectionId: string): Promise<{ rows: string[]; pages: string[] }> {
    const rows = await h.db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).orderBy('id').execute();
    const pages = await h.db.selectFrom('repository_listing_pages').select('page_key').where('connection_id', '=', connectionId).orderBy('page_key').execute();
    return { rows: rows.map((r) => r.id), pages: pages.map((p) => p.page_key) };
  }
  const orgRowCount = async (organizationId: string) =>
    Number((await h.db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('organization_id', '=', organizationId).executeTakeFirstOrThrow()).n);

  it('deletes the rows nothing refers to and the listing pages; attached and evented rows stay; a second cycle leaves nothing more; other connections and organizations keep theirs', async () => {
    const org = await newOrg();
    const { world: target, repos } = await world(org, 130);
    const { world: sibling } = await world(org, 4);
    const elsewhere = await newOrg();
    const { world: foreign } = await world(elsewhere, 4);
    expect(await refreshOrganization(h, org)).toMatchObject({ refreshed: 2, failedCount: 0 });
    expect(await refreshOrganization(h, elsewhere)).toMatchObject({ refreshed: 1, failedCount: 0 });
    const before = await cacheOf(target.connectionId);
    expect(before.rows).toHaveLength(130);
    expect(before.pages.length).toBeGreaterThan(1);
    const siblingBefore = await cacheOf(sibling.connectionId);
    const foreignBefore = await cacheOf(foreign.connectionId);
    expect(siblingBefore.pages.length).toBeGreaterThan(0);
    expect(foreignBefore.pages.length).toBeGreaterThan(0);

    // Two attached (the disconnect detaches them: their attachments stay, so do their rows), one named by an event.
    const [first, second, evented] = [repos[0]!, repos[1]!, repos[2]!];
    await attach(org, target, first);
    await attach(org, target, second);
    const event = await h.db
      .insertInto('events')
      .values({ organization_id: org.id, repository_id: evented.repositoryId, provider: 'gitlab', delivery_id: `d-${randomUUID()}`, sequence: 0, kind: 'push', event: JSON.stringify({ kind: 'push' }) })
      .returning('id')
      .executeTakeFirstOrThrow();

    expect(await disconnect(org, target.connectionId)).toEqual({ status: 'disconnected', detachedRepositories: 2 });

    const kept = [first.repositoryId, second.repositoryId, evented.repositoryId].sort();
    expect(await cacheOf(target.connectionId)).toEqual({ rows: kept, pages: [] });
    expect(await h.db.selectFrom('attachments').select('status').where('repository_id', 'in', [first.repositoryId, second.repositoryId]).execute()).toEqual([
      { status: 'detached' },
      { status: 'detached' },
    ]);
    expect((await h.db.selectFrom('events').select('repository_id').where('id', '=', event.id).executeTakeFirstOrThrow()).repository_id).toBe(evented.repositoryId);
    expect(await cacheOf(sibling.connectionId)).toEqual(siblingBefore);
    expect(await cacheOf(foreign.connectionId)).toEqual(foreignBefore);
    const afterFirstCycle = await orgRowCount(org.id);
    expect(afterFirstCycle).toBe(kept.length + siblingBefore.rows.length);

    // The same provider connected again: its listing caches all 130 again, and its disconnect leaves nothing.
    const again = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: target.proxy.url, secret: target.credential });
    expect(await refreshOrganization(h, org)).toMatchObject({ refreshed: 2, failedCount: 0 });
    expect((await cacheOf(again)).rows).toHaveLength(130);
    expect(await disconnect(org, again)).toEqual({ status: 'disconnected', detachedRepositories: 0 });
    expect(await cacheOf(again)).toEqual({ rows: [], pages: [] });
    expect(await orgRowCount(org.id)).toBe(afterFirstCycle);
    expect(await cacheOf(target.connectionId)).toEqual({ rows: kept, pages: [] });
    expect(await cacheOf(foreign.connectionId)).toEqual(foreignBefore);

    // Repeated (a retried step, a replayed worker), the purge finds nothing and fails on nothing.
    expect(await purgeDisconnectedCache(h.db, target.connectionId)).toEqual({ repositories: 0, listingPages: 0, done: true });
  });

  it('a listing in flight when the disconnect ends writes nothing after it', async () => {
    const org = await newOrg();
    const { world: target } = await world(org, 250);
    // The first listing call answers; every later one waits until the disconnect is over.
    const hold = manualHold();
    let calls = 0;
    target.proxy.fault = (request) => (request.method === 'GET' && request.url.startsWith('/api/v4/projects?') && calls++ > 0 ? hold.fault : undefined);
    const started = await h.request('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, { token: org.token });
    expect(started.status).toBe(202);
    const refresh = resultOf<RefreshResult>(h, ((await started.json()) as { workflowId: string }).workflowId);
    await hold.held;

    expect(await disconnect(org, target.connectionId)).toEqual({ status: 'disconnected', detachedRepositories: 0 });
    expect(await cacheOf(target.connectionId)).toEqual({ rows: [], pages: [] });

    hold.release('answer');
    await refresh;
    expect(calls).toBeGreaterThan(1);
    expect(await cacheOf(target.connectionId)).toEqual({ rows: [], pages: [] });
  });

  it('a write that passed the gate is committed before the connection is marked disconnected, so the purge after finds it', async () => {
    const org = await newOrg();
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: 'https://gitlab.test', secret: 'glpat-unused' });
    const scope = { organizationId: org.id, connectionId, provider: 'gitlab' as const };
    const repositories = Array.from({ length: 5 }, (_, i) => ({ externalId: `racing-${i}`, fullName: `platform/racing-${i}` }));
    let commit!: () => void;
    const committed = new Promise<void>((resolve) => (commit = resolve));
    let written!: () => void;
    const wasWritten = new Promise<void>((resolve) => (written = resolve));
    // A page write (or an event's upsert) inside a transaction that has not committed yet.
    const writer = h.db.transaction().execute(async (trx) => {
      expect(await writeListingPage(trx, scope, 'first', repositories, { externalIds: repositories.map((r) => r.externalId) })).toBe(5);
      written();
      await committed;
    });
    await wasWritten;

    let finished = false;
    const disconnected = (async () => {
      await markConnectionDisconnected(h.db, connectionId);
      finished = true;
      return purgeDisconnectedCache(h.db, connectionId, { batchRows: 2 });
    })();
    // The status update waits for the write's lock on the connection row.
    const database = (await sql<{ name: string }>`select current_database() as name`.execute(h.db)).rows[0]!.name;
    const waiting = async () => {
      for (;;) {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from pg_stat_activity
          where datname = ${database} and wait_event_type = 'Lock' and query like 'update "connections" set "credential"%'
        `.execute(h.db);
        if (rows[0]!.n > 0 || finished) return;
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await waiting();
    expect(finished).toBe(false);
    commit();
    await writer;
    expect(await disconnected).toEqual({ repositories: 5, listingPages: 1, done: true });
    expect(await cacheOf(connectionId)).toEqual({ rows: [], pages: [] });
    // And after it, a write finds the connection disconnected and writes nothing.
    expect(await writeListingPage(h.db, scope, 'first', repositories, { externalIds: repositories.map((r) => r.externalId) })).toBe(0);
    expect(await cacheOf(connectionId)).toEqual({ rows: [], pages: [] });
  });

  it('deletes in batches, stops where told and goes on when run again; deletes nothing of a connection not disconnected', async () => {
    const org = await newOrg();
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: 'https://gitlab.test', secret: 'glpat-unused' });
    await sql`
      insert into repositories (organization_id, connection_id, provider, external_id, full_name)
      select ${org.id}::uuid, ${connectionId}::uuid, 'gitlab', 'bulk-' || i, 'platform/bulk-' || i from generate_series(0, 24) as i
    `.execute(h.db);
    expect(await purgeDisconnectedCache(h.db, connectionId)).toEqual({ repositories: 0, listingPages: 0, done: true });
    expect((await cacheOf(connectionId)).rows).toHaveLength(25);

    await markConnectionDisconnected(h.db, connectionId);
    expect(await purgeDisconnectedCache(h.db, connectionId, { batchRows: 10, maxBatches: 2 })).toEqual({ repositories: 20, listingPages: 0, done: false });
    expect(await purgeDisconnectedCache(h.db, connectionId, { batchRows: 10, stopAt: Date.now() - 1 })).toEqual({ repositories: 0, listingPages: 0, done: false });
    expect(await purgeDisconnectedCache(h.db, connectionId, { batchRows: 10 })).toEqual({ repositories: 5, listingPages: 0, done: true });
    expect(await cacheOf(connectionId)).toEqual({ rows: [], pages: [] });
  });
});
