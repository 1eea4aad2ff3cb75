import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findOrganizationAndRepository, setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';
import { startHarness, type Harness } from '../support/harness.ts';

/**
 * The attach route's one lookup (an organization by slug or by id, the id winning, with its
 * repository and the repository's connection) and the attachment's status write, as compiled once
 * (lib/db/prepared.ts): one statement a shape, the same answers as the query builder gave.
 */
describe('attach lookups', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  async function organizationWithRepository(slug = `org-${randomUUID().slice(0, 8)}`) {
    const org = await h.db.insertInto('organizations').values({ slug, name: slug }).returning(['id', 'slug', 'name', 'created_at']).executeTakeFirstOrThrow();
    const connection = await h.db
      .insertInto('connections')
      .values({ organization_id: org.id, provider: 'gitlab', base_url: 'https://gitlab.example', credential: 'sealed', status: 'active' } as never)
      .returning('id')
      .executeTakeFirstOrThrow();
    const repository = await h.db
      .insertInto('repositories')
      .values({ organization_id: org.id, connection_id: connection.id, provider: 'gitlab', external_id: randomUUID(), full_name: `g/${slug}` } as never)
      .returning('id')
      .executeTakeFirstOrThrow();
    return { org, connectionId: connection.id, repositoryId: repository.id };
  }

  it('finds an organization by slug or by id (the id winning over a slug that spells it) and only its own repository', async () => {
    const a = await organizationWithRepository();
    // Another organization whose slug is the first one's id.
    const b = await organizationWithRepository(a.org.id);
    const ofA = { organization: a.org, repository: { id: a.repositoryId, organization_id: a.org.id, provider: 'gitlab', full_name: `g/${a.org.slug}`, connection_id: a.connectionId, vanished_at: null, connection_status: 'active', disconnect_requested_at: null } };
    expect(await findOrganizationAndRepository(h.db, a.org.slug, a.repositoryId)).toEqual(ofA);
    expect(await findOrganizationAndRepository(h.db, a.org.id, a.repositoryId)).toEqual(ofA);
    // b's own id finds b; a's id (b's slug) finds a, whose repository b's is not.
    expect(await findOrganizationAndRepository(h.db, b.org.id, b.repositoryId)).toMatchObject({ organization: b.org, repository: { id: b.repositoryId } });
    expect(await findOrganizationAndRepository(h.db, b.org.slug, b.repositoryId)).toEqual({ organization: a.org });
    // Another organization's repository is never joined; an unknown organization is none.
    expect(await findOrganizationAndRepository(h.db, a.org.slug, b.repositoryId)).toEqual({ organization: a.org });
    expect(await findOrganizationAndRepository(h.db, `org-${randomUUID().slice(0, 8)}`, a.repositoryId)).toBeUndefined();
    expect(await findOrganizationAndRepository(h.db, randomUUID(), a.repositoryId)).toBeUndefined();
  });

  it('sets the status, keeping an attached repository attached only when asked, and stamps each write', async () => {
    const a = await organizationWithRepository();
    const key = { organizationId: a.org.id, repositoryId: a.repositoryId };
    const row = () => h.db.selectFrom('attachments').select(['id', 'status', 'reason', 'updated_at']).where('repository_id', '=', a.repositoryId).executeTakeFirstOrThrow();
    // Each write stamps the time of that call (not of the statement's first compile).
    const write = async (values: Omit<Parameters<typeof setAttachmentStatus>[1], 'organizationId' | 'repositoryId'>) => {
      const before = Date.now();
      const id = await setAttachmentStatus(h.db, { ...key, ...values });
      const written = await row();
      expect(written.id).toBe(id);
      expect(written.updated_at.getTime()).toBeGreaterThanOrEqual(before);
      return written;
    };
    const first = await write({ status: 'attaching', keepAttached: true });
    expect(first).toMatchObject({ status: 'attaching', reason: null });
    expect(await write({ status: 'attached' })).toMatchObject({ id: first.id, status: 'attached' });
    expect(await write({ status: 'attaching', keepAttached: true })).toMatchObject({ id: first.id, status: 'attached' });
    expect(await write({ status: 'failed', reason: 'gitlab answered 403', keepAttached: true })).toMatchObject({ status: 'attached', reason: 'gitlab answered 403' });
    expect(await write({ status: 'detaching' })).toMatchObject({ status: 'detaching', reason: null });
    expect(await write({ status: 'failed', reason: 'gone', keepAttached: true })).toMatchObject({ status: 'failed', reason: 'gone' });
  });
});
