import { describe, expect, it } from 'vitest';
import { AttachmentFailureTypes } from '../../workflows/contract.ts';
import { attachmentOf, outcomeOf, requestAttachment, seedRepository, useHookWorlds, type HookProvider, type HookWorld, type Org } from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { refreshOrganization } from '../support/listing.ts';
import { markRepositoriesVanished } from '../../lib/db/repositories/repository-cache.ts';

/**
 * A Bitbucket DC row whose name now answers another repository of the connection (from rev2's
 * reproduction): the row's repository was renamed (a refresh gives the row its new name) or deleted
 * (a refresh marks the row vanished, and its hooks went with it). Vanished, its detach deletes
 * nothing and succeeds; not vanished, it fails advising a refresh, never a deletion at the
 * provider (the hook there is the other repository's). The other repository's hook is never touched.
 */
describe('Bitbucket DC: detaching a row whose name another repository took', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  const vanishedAt = async (repositoryId: string) =>
    (await h.db.selectFrom('repositories').select('vanished_at').where('id', '=', repositoryId).executeTakeFirstOrThrow()).vanished_at;

  it('not vanished: fails advising a refresh (never a deletion at the provider); once refreshed (vanished), detaches deleting nothing', async () => {
    const world = worlds.bitbucket;
    const current = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    expect(hook).toBeDefined();
    const stale = await seedRepository(h, { organizationId: org.id, connectionId: world.connectionId, provider: 'bitbucket', externalId: '987654', fullName: current.fullName, project: 'CI' });

    const { failure } = await outcomeOf(h, await requestAttachment(h, org, stale, 'DELETE'));
    expect(failure).toMatchObject({ type: AttachmentFailureTypes.detachFailed, message: expect.stringContaining('HookPresenceUnknown') });
    expect(failure?.message).toContain('refresh the repository list (a renamed repository is picked up), then detach again');
    expect(failure?.message).not.toContain('delete the hook at the provider');
    expect((await attachmentOf(h, org, stale)).status).toBe('failed');
    expect(current.hooks()).toEqual([hook]);

    await refreshOrganization(h, org);
    expect(await vanishedAt(stale)).not.toBeNull();
    expect((await outcomeOf(h, await requestAttachment(h, org, stale, 'DELETE'))).result?.status).toBe('detached');
    expect((await attachmentOf(h, org, stale)).status).toBe('detached');
    expect(current.hooks()).toEqual([hook]);
    const other = await attachmentOf(h, org, current.repositoryId);
    expect(other.status).toBe('attached');
    expect(other.hooks.map((r) => r.providerHookId)).toEqual([hook!.id]);
  });

  it('vanished with a recorded hook (deleted at the provider with its repository): detaches, the hook recorded as gone, the name\'s new repository untouched', async () => {
    const world = worlds.bitbucket;
    const deleted = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, deleted.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect((await attachmentOf(h, org, deleted.repositoryId)).hooks).toHaveLength(1);
    world.removeAtProvider(deleted);
    const current = await world.newRepository({ slug: deleted.fullName.split('/')[1] });
    expect(current.fullName).toBe(deleted.fullName);
    expect(current.externalId).not.toBe(deleted.externalId);
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    expect(hook).toBeDefined();

    // Not vanished yet: the recorded hook's 404 proves nothing (the name is the other repository's).
    const { failure } = await outcomeOf(h, await requestAttachment(h, org, deleted.repositoryId, 'DELETE'));
    expect(failure?.message).toContain('refresh the repository list (a renamed repository is picked up), then detach again');
    expect(failure?.message).not.toContain('delete the hook at the provider');
    expect((await attachmentOf(h, org, deleted.repositoryId)).hooks).toHaveLength(1);

    await refreshOrganization(h, org);
    expect(await vanishedAt(deleted.repositoryId)).not.toBeNull();
    expect((await outcomeOf(h, await requestAttachment(h, org, deleted.repositoryId, 'DELETE'))).result?.status).toBe('detached');
    expect((await attachmentOf(h, org, deleted.repositoryId)).hooks).toEqual([]);
    expect(current.hooks()).toEqual([hook]);
    const other = await attachmentOf(h, org, current.repositoryId);
    expect(other.status).toBe('attached');
    expect(other.hooks.map((r) => r.providerHookId)).toEqual([hook!.id]);
  });

  it('vanished by a hook-health check or an event only (no complete listing since): still fails advising a refresh', async () => {
    const world = worlds.bitbucket;
    const current = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    const stale = await seedRepository(h, { organizationId: org.id, connectionId: world.connectionId, provider: 'bitbucket', externalId: '987655', fullName: current.fullName, project: 'CI' });
    // A renamed repository whose old name another took looks gone to a check by name: only a listing tells.
    expect(await markRepositoriesVanished(h.db, world.connectionId, ['987655'])).toBe(1);

    const { failure } = await outcomeOf(h, await requestAttachment(h, org, stale, 'DELETE'));
    expect(failure?.message).toContain('refresh the repository list (a renamed repository is picked up), then detach again');
    expect((await attachmentOf(h, org, stale)).status).toBe('failed');
    expect(current.hooks()).toEqual([hook]);
  });
});
