import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RefreshResult } from '../../workflows/contract.ts';
import { lastListing, purgeVanishedRepositories } from '../../lib/db/repositories/repository-cache.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { seedConnection } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { refreshOrganization } from '../support/listing.ts';

/**
 * Nothing deleted repository rows, and a connection whose cache holds more than twice
 * repositoryCache.maxRepositoriesPerConnection rows (vanished ones included) is not listed again: an
 * organization creating and deleting repositories got there and stayed. Now a complete listing
 * deletes the connection's rows vanished for longer than repositoryCache.vanishedRetentionDays
 * (default 7) that no attachment or event refers to. Caps here are 250 repositories / 120 pages, so
 * the refusal bound is 500 rows.
 */
const MAX_REPOSITORIES = 250;

describe('repositories vanished past the retention are deleted after a complete listing', () => {
  let h: Harness;
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    h = await startHarness({ settings: { listingMaxRepositories: MAX_REPOSITORIES, listingMaxPages: 120 } });
  });
  afterAll(async () => {
    await h?.close();
    for (const close of closers) await close();
  });

  const refresh = (org: { slug: string; token: string }) => refreshOrganization(h, org);
  async function bitbucketConnection(repositories = 3) {
    const bitbucket: FakeBitbucket = await startFakeBitbucket({ maxPageSize: 100 });
    closers.push(() => bitbucket.close());
    const { org, token } = await createOrgWithToken(h);
    const secret = `bb-${randomUUID()}`;
    bitbucket.addToken({ token: secret, username: 'lister' });
    bitbucket.addProject({ key: 'P', name: 'P' });
    const repos = Array.from({ length: repositories }, (_, i) => bitbucket.addRepository({ projectKey: 'P', slug: `r-${i}` }));
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'bitbucket', baseUrl: bitbucket.url, secret });
    return { bitbucket, org: { ...org, token }, repos, connectionId };
  }
  /** `count` rows of the connection, vanished `daysAgo` days ago, external ids `${prefix}-0`…; returns their ids. */
  async function seedVanished(org: { id: string }, connectionId: string, prefix: string, count: number, daysAgo: number): Promise<string[]> {
    const { rows } = await sql<{ id: string }>`
      insert into repositories (organization_id, connection_id, provider, external_id, full_name, vanished_at)
      select ${org.id}::uuid, ${connectionId}::uuid, 'bitbucket', ${prefix} || '-' || i, 'P/' || ${prefix} || '-' || i, now() - make_interval(days => ${daysAgo})
      from generate_series(0, ${count - 1}) as i
      returning id
    `.execute(h.db);
    return rows.map((r) => r.id);
  }
  const present = async (ids: string[]) =>
    ids.length === 0 ? 0 : Number((await h.db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('id', 'in', ids).executeTakeFirstOrThrow()).n);
  const rowCount = async (connectionId: string) =>
    Number((await h.db.selectFrom('repositories').select((eb) => eb.fn.countAll<string>().as('n')).where('connection_id', '=', connectionId).executeTakeFirstOrThrow()).n);

  it('deletes the unreferenced rows vanished past the retention; keeps recent ones, attached ones, ones with events, other connections\' and ones the listing sees again', async () => {
    const { org, repos, connectionId } = await bitbucketConnection();
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    const old = await seedVanished(org, connectionId, 'old', 300, 8);
    const recent = await seedVanished(org, connectionId, 'recent', 5, 6);
    // An attachment in every status holds its repository (deleting it would cascade to the attachment and its hooks).
    const statuses = ['attached', 'detached', 'failed', 'attaching', 'detaching'] as const;
    const attached = await seedVanished(org, connectionId, 'attached', statuses.length, 30);
    await h.db
      .insertInto('attachments')
      .values(attached.map((id, i) => ({ organization_id: org.id, repository_id: id, status: statuses[i]!, repository_vanished: true })))
      .execute();
    // An event names its repository: deleting the row would set the event's repository_id null.
    const [withEvent] = await seedVanished(org, connectionId, 'evented', 1, 30);
    const event = await h.db
      .insertInto('events')
      .values({ organization_id: org.id, repository_id: withEvent!, provider: 'bitbucket', delivery_id: `d-${randomUUID()}`, sequence: 0, kind: 'push', event: JSON.stringify({ kind: 'push' }) })
      .returning('id')
      .executeTakeFirstOrThrow();
    // A repository the provider still lists, marked vanished long ago (an access event): the listing brings it back first.
    await h.db.updateTable('repositories').set({ vanished_at: sql<Date>`now() - interval '9 days'` }).where('connection_id', '=', connectionId).where('external_id', '=', String(repos[0]!.id)).execute();
    // Another organization's connection, not listed here: untouched.
    const other = await bitbucketConnection(0);
    const otherOld = await seedVanished(other.org, other.connectionId, 'old', 20, 8);

    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });

    expect(await present(old)).toBe(0);
    expect(await present(recent)).toBe(recent.length);
    expect(await present(attached)).toBe(attached.length);
    expect((await h.db.selectFrom('attachments').select('status').where('repository_id', 'in', attached).execute()).map((a) => a.status).sort()).toEqual([...statuses].sort());
    expect(await present([withEvent!])).toBe(1);
    expect((await h.db.selectFrom('events').select('repository_id').where('id', '=', event.id).executeTakeFirstOrThrow()).repository_id).toBe(withEvent);
    expect(await present(otherOld)).toBe(otherOld.length);
    const visible = await h.db.selectFrom('repositories').select('external_id').where('connection_id', '=', connectionId).where('vanished_at', 'is', null).execute();
    expect(visible.map((r) => r.external_id).sort()).toEqual(repos.map((r) => String(r.id)).sort());
    expect(await rowCount(connectionId)).toBe(3 + recent.length + attached.length + 1);
    expect(await lastListing(h.db, connectionId)).toMatchObject({ listed: 3, vanished: 0 });
  });

  it('a capped listing deletes nothing; the next complete one does', async () => {
    const { bitbucket, org, connectionId } = await bitbucketConnection();
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    const old = await seedVanished(org, connectionId, 'old', 100, 8);
    bitbucket.listEndlessly('listRepos', 'onward');
    const capped = await refresh(org);
    expect(capped).toMatchObject({ refreshed: 0, failedCount: 1 });
    expect(capped.failed[0]!.reason).toMatch(/^ProviderListingTooLong: bitbucket listed more than 250 repositories/);
    expect(await present(old)).toBe(old.length);

    bitbucket.listEndlessly(null);
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    expect(await present(old)).toBe(0);
  });

  it('a connection over the refusal bound by churn is refused while its vanished rows are recent, and lists again once they are past the retention', async () => {
    const { org, connectionId } = await bitbucketConnection();
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    // 603 rows, more than twice the 250 cap: what a churning organization leaves within a week still counts.
    const churned = await seedVanished(org, connectionId, 'churned', 600, 2);
    const refused = await refresh(org);
    expect(refused).toMatchObject({ refreshed: 0, failedCount: 1 });
    expect(refused.failed[0]!.reason).toContain(`the repository cache of connection ${connectionId} already holds 603 repositories (vanished ones included)`);
    expect(await rowCount(connectionId)).toBe(603);

    // A week later for 400 of them: they are deleted before the bound is checked, and the connection is listed.
    await h.db.updateTable('repositories').set({ vanished_at: sql<Date>`now() - interval '8 days'` }).where('id', 'in', churned.slice(0, 400)).execute();
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    expect(await present(churned.slice(0, 400))).toBe(0);
    expect(await rowCount(connectionId)).toBe(203);
  });

  it('deletes in bounded batches, at most maxBatches of them, and leaves rows another transaction holds', async () => {
    const { org, connectionId } = await bitbucketConnection(0);
    const old = await seedVanished(org, connectionId, 'old', 250, 8);
    expect(await purgeVanishedRepositories(h.db, connectionId, 7, { batchRows: 100, maxBatches: 2 })).toBe(200);
    expect(await present(old)).toBe(50);

    // A row locked by another transaction (an upsert, an attach) is skipped, not waited for.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    const holder = h.db.transaction().execute(async (trx) => {
      await sql`select id from repositories where id = ${old[old.length - 1]!} for key share`.execute(trx);
      locked();
      await held;
    });
    await isLocked;
    expect(await purgeVanishedRepositories(h.db, connectionId, 7, { batchRows: 100 })).toBe(49);
    release();
    await holder;
    expect(await purgeVanishedRepositories(h.db, connectionId, 7)).toBe(1);
    // The retention is the connection's own: rows vanished 8 days ago stay under a 30-day one.
    await seedVanished(org, connectionId, 'more', 10, 8);
    expect(await purgeVanishedRepositories(h.db, connectionId, 30)).toBe(0);
    expect(await purgeVanishedRepositories(h.db, connectionId, 7)).toBe(10);
  });
});
