import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb, type Db } from '../../lib/db/index.ts';
import { upsertRepositories, writeListingPage } from '../../lib/db/repositories/repository-cache.ts';

/**
 * A cached repository's connection and organization are one foreign key (connection_id,
 * organization_id) → connections: one check per row written (a listing writes thousands), and a
 * repository can only belong to its connection's organization. Deleting a connection or an
 * organization removes its repositories and their attachments.
 */
describe('repository keys', () => {
  let db: Db;
  beforeAll(() => {
    db = createDb(inject('databaseUrl'), { max: 2 });
  });
  afterAll(async () => {
    await db?.destroy();
  });

  async function organizationWithConnection() {
    const slug = `keys-${randomBytes(4).toString('hex')}`;
    const org = await db.insertInto('organizations').values({ slug, name: slug }).returning('id').executeTakeFirstOrThrow();
    const connection = await db
      .insertInto('connections')
      .values({ organization_id: org.id, provider: 'gitlab', base_url: 'https://gitlab.example', external_key: slug, account: 'keys', status: 'active' })
      .returning('id')
      .executeTakeFirstOrThrow();
    return { organizationId: org.id, connectionId: connection.id, provider: 'gitlab' as const };
  }
  const repositoriesOf = async (connectionId: string) => (await db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).execute()).length;

  it("refuses a repository whose organization is not its connection's", async () => {
    const a = await organizationWithConnection();
    const b = await organizationWithConnection();
    const crossed = { ...a, organizationId: b.organizationId };
    await expect(upsertRepositories(db, crossed, [{ externalId: '1', fullName: 'g/one' }])).rejects.toMatchObject({ code: '23503' });
    await expect(
      writeListingPage(db, crossed, 'first', [{ externalId: '2', fullName: 'g/two' }], { externalIds: ['2'], contentHash: 'h' }),
    ).rejects.toMatchObject({ code: '23503' });
    expect(await repositoriesOf(a.connectionId)).toBe(0);
    // The connection's own organization writes them.
    expect(await upsertRepositories(db, a, [{ externalId: '1', fullName: 'g/one' }])).toBe(1);
  });

  it('removes the repositories and attachments of a deleted connection, and of a deleted organization', async () => {
    const a = await organizationWithConnection();
    const b = await organizationWithConnection();
    for (const scope of [a, b]) await upsertRepositories(db, scope, [{ externalId: '1', fullName: 'g/one' }, { externalId: '2', fullName: 'g/two' }]);
    const [attached] = await db.selectFrom('repositories').select('id').where('connection_id', '=', b.connectionId).execute();
    await db.insertInto('attachments').values({ organization_id: b.organizationId, repository_id: attached!.id, status: 'attached' }).execute();

    await db.deleteFrom('connections').where('id', '=', a.connectionId).execute();
    expect(await repositoriesOf(a.connectionId)).toBe(0);

    await db.deleteFrom('organizations').where('id', '=', b.organizationId).execute();
    expect(await repositoriesOf(b.connectionId)).toBe(0);
    expect(await db.selectFrom('attachments').select('id').where('repository_id', '=', attached!.id).execute()).toEqual([]);
  });
});
