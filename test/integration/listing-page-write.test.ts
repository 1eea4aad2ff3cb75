import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb, type Db } from '../../lib/db/index.ts';
import { upsertRepositories, writeListingPage } from '../../lib/db/repositories/repository-cache.ts';

/**
 * The statements a listing writes its pages with (written out once, lib/db/repositories/repository-cache.ts):
 * each column of each repository and of the page's memory lands where it belongs, a listing's row
 * clears what it no longer carries, an event's (partial) row leaves it as it was.
 */
describe('listing page writes', () => {
  let db: Db;
  beforeAll(() => {
    db = createDb(inject('databaseUrl'), { max: 2 });
  });
  afterAll(async () => {
    await db?.destroy();
  });

  async function scope() {
    const slug = `page-${randomBytes(4).toString('hex')}`;
    const org = await db.insertInto('organizations').values({ slug, name: slug }).returning('id').executeTakeFirstOrThrow();
    const connection = await db
      .insertInto('connections')
      .values({ organization_id: org.id, provider: 'bitbucket', base_url: 'https://bitbucket.example', external_key: slug, account: 'pages', status: 'active' })
      .returning('id')
      .executeTakeFirstOrThrow();
    return { organizationId: org.id, connectionId: connection.id, provider: 'bitbucket' as const };
  }
  const rows = (connectionId: string) =>
    db
      .selectFrom('repositories')
      .select(['organization_id', 'connection_id', 'provider', 'external_id', 'full_name', 'project', 'default_branch', 'web_url', 'vanished_at'])
      .where('connection_id', '=', connectionId)
      .orderBy('external_id')
      .execute();

  it('writes each column of the repositories and of the page', async () => {
    const s = await scope();
    const repositories = [
      { externalId: '1', fullName: 'CI/one', project: 'CI', defaultBranch: 'main', webUrl: 'https://bitbucket.example/one' },
      { externalId: '2', fullName: 'CI/two', project: 'CI', defaultBranch: 'trunk', webUrl: 'https://bitbucket.example/two' },
      // The same id twice in a page: the last one is written.
      { externalId: '1', fullName: 'CI/one-renamed', project: 'OPS', defaultBranch: 'develop', webUrl: 'https://bitbucket.example/one-renamed' },
    ];
    const page = { etag: '"e1"', externalIds: ['1', '2'], nextCursor: 'next-2', fanOut: ['fan-a', 'fan-b'], contentHash: 'digest-1' };
    expect(await writeListingPage(db, s, 'first', repositories, page)).toBe(2);
    const base = { organization_id: s.organizationId, connection_id: s.connectionId, provider: 'bitbucket', vanished_at: null };
    expect(await rows(s.connectionId)).toEqual([
      { ...base, external_id: '1', full_name: 'CI/one-renamed', project: 'OPS', default_branch: 'develop', web_url: 'https://bitbucket.example/one-renamed' },
      { ...base, external_id: '2', full_name: 'CI/two', project: 'CI', default_branch: 'trunk', web_url: 'https://bitbucket.example/two' },
    ]);
    const stored = () =>
      db
        .selectFrom('repository_listing_pages')
        .select(['page_key', 'etag', 'external_ids', 'next_cursor', 'fan_out', 'content_hash'])
        .where('connection_id', '=', s.connectionId)
        .orderBy('page_key')
        .execute();
    expect(await stored()).toEqual([{ page_key: 'first', etag: '"e1"', external_ids: ['1', '2'], next_cursor: 'next-2', fan_out: ['fan-a', 'fan-b'], content_hash: 'digest-1' }]);

    // The page's memory alone (its repositories as stored), and a second page with no links.
    expect(await writeListingPage(db, s, 'first', undefined, { ...page, etag: '"e2"', contentHash: 'digest-2' })).toBe(0);
    expect(await writeListingPage(db, s, 'next-2', [], { externalIds: [] })).toBe(0);
    expect(await stored()).toEqual([
      { page_key: 'first', etag: '"e2"', external_ids: ['1', '2'], next_cursor: 'next-2', fan_out: ['fan-a', 'fan-b'], content_hash: 'digest-2' },
      { page_key: 'next-2', etag: null, external_ids: [], next_cursor: null, fan_out: [], content_hash: null },
    ]);
  });

  it("a listing's row clears what it no longer carries; an event's leaves it; unchanged rows are not written", async () => {
    const s = await scope();
    await upsertRepositories(db, s, [{ externalId: '1', fullName: 'CI/one', project: 'CI', defaultBranch: 'main', webUrl: 'https://bitbucket.example/one' }]);
    expect(await upsertRepositories(db, s, [{ externalId: '1', fullName: 'CI/one', project: 'CI', defaultBranch: 'main', webUrl: 'https://bitbucket.example/one' }])).toBe(0);
    expect(await upsertRepositories(db, s, [{ externalId: '1', fullName: 'CI/moved' }], { partial: true })).toBe(1);
    expect(await rows(s.connectionId)).toMatchObject([{ full_name: 'CI/moved', project: 'CI', default_branch: 'main', web_url: 'https://bitbucket.example/one' }]);
    expect(await upsertRepositories(db, s, [{ externalId: '1', fullName: 'CI/moved', project: 'OPS' }])).toBe(1);
    expect(await rows(s.connectionId)).toMatchObject([{ full_name: 'CI/moved', project: 'OPS', default_branch: null, web_url: null }]);
  });

  it("a listing's page stores names as given (quotes, backslashes, braces, commas) and clears what a row no longer carries", async () => {
    const s = await scope();
    const odd = { externalId: '7', fullName: 'CI/q"uote\\back\\slash ünï ✓ \u2028', project: 'C\tI', defaultBranch: 'ma{i}n,', webUrl: 'https://bitbucket.example/"7"' };
    const page = (contentHash: string) => ({ externalIds: ['7'], contentHash });
    expect(await writeListingPage(db, s, 'first', [odd], page('d1'))).toBe(1);
    expect(await rows(s.connectionId)).toMatchObject([{ external_id: '7', full_name: odd.fullName, project: odd.project, default_branch: odd.defaultBranch, web_url: odd.webUrl }]);
    // Rows alone (the page's memory as stored): a row without project, branch or URL clears them.
    expect(await writeListingPage(db, s, 'first', [{ externalId: '7', fullName: odd.fullName }], undefined)).toBe(1);
    expect(await rows(s.connectionId)).toMatchObject([{ full_name: odd.fullName, project: null, default_branch: null, web_url: null }]);
    expect(await writeListingPage(db, s, 'first', [{ externalId: '7', fullName: odd.fullName }], undefined)).toBe(0);
  });

  it('a listing into an empty cache inserts its rows, and upserts from the first page whose rows are there already', async () => {
    const s = await scope();
    const newRows = { likely: true };
    const repo = (id: string, name = `CI/${id}`) => ({ externalId: id, fullName: name, project: 'CI', defaultBranch: 'main', webUrl: `https://bitbucket.example/${id}` });
    expect(await writeListingPage(db, s, 'first', [repo('1'), repo('2')], { externalIds: ['1', '2'], nextCursor: 'p2' }, { newRows })).toBe(2);
    expect(newRows.likely).toBe(true);
    // Page 2 lists 2 again (renamed) beside a new one: the insert fails whole, the upsert writes both.
    expect(await writeListingPage(db, s, 'p2', [repo('2', 'CI/two-renamed'), repo('3')], { externalIds: ['2', '3'] }, { newRows })).toBe(2);
    expect(newRows.likely).toBe(false);
    expect((await rows(s.connectionId)).map((r) => [r.external_id, r.full_name])).toEqual([
      ['1', 'CI/1'],
      ['2', 'CI/two-renamed'],
      ['3', 'CI/3'],
    ]);
    const pages = await db.selectFrom('repository_listing_pages').select(['page_key', 'external_ids']).where('connection_id', '=', s.connectionId).orderBy('page_key').execute();
    expect(pages).toEqual([
      { page_key: 'first', external_ids: ['1', '2'] },
      { page_key: 'p2', external_ids: ['2', '3'] },
    ]);
    // Another error is not taken for a conflict: a row of another organization's connection still fails its key.
    const other = await scope();
    // (The fallback upsert would fail with the same 23503: that the plain insert's flag still stands tells the two apart.)
    const otherNewRows = { likely: true };
    await expect(writeListingPage(db, { ...other, organizationId: s.organizationId }, 'first', [repo('9')], { externalIds: ['9'] }, { newRows: otherNewRows })).rejects.toMatchObject({ code: '23503' });
    expect(otherNewRows.likely).toBe(true);
  });
});
