import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { seal } from '../../lib/crypto.ts';
import { gitlabWorld, requestAttachment, type HookWorld, type Org } from '../support/attachments.ts';
import { heldRequest } from '../support/flaky-proxy.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

/**
 * A read an attach step makes ahead for the next one (activities/hooks.ts readAhead) counts within
 * its organization's admission: 2 places inside workflow tasks and 5 activity slots by default, so
 * at most 7 of one organization's provider calls in flight on a worker, whatever it attaches. One
 * its step does not use is aborted at once, its socket closed.
 *
 * Made deterministic with the one path that drops a read made ahead whatever the timing: the
 * connection's token replaced between the lookup and the ensure. Two attaches' lookups, admitted
 * inside their workflow tasks, are held at GitLab while the token is replaced; released, each starts
 * the ensure's hook listing with the old token, and each ensure drops it and lists with the new one.
 * GitLab never answers a hook listing. Five more attaches then take the organization's 5 activity
 * slots, each with its ensure's listing held (their steps are refused inside the workflow task: the
 * two ensures hold both places). Before the fix, the two listings made ahead stayed open beside
 * those 7 (9 at once) until their 30 s timeout.
 */
describe("an attach's read made ahead counts within its organization's admission", () => {
  const sizing = { ...WORKER_SIZING_DEFAULTS };
  const bound = sizing.inlineCallsPerOrganization + activityCallsPerOrganization(sizing);
  let h: Harness;
  let org: Org;
  let world: HookWorld;
  let releaseAll!: () => void;
  const released = new Promise<void>((resolve) => (releaseAll = resolve));

  beforeAll(async () => {
    h = await startHarness({ sizing });
    const created = await createOrgWithToken(h);
    org = { id: created.org.id, slug: created.org.slug, token: created.token };
    world = await gitlabWorld(h, org);
  });
  afterAll(async () => {
    releaseAll();
    await h?.close();
    await world?.close();
  });

  /** Resolves once `condition` holds, checked whenever the proxy sees a listing arrive or close. */
  const waiters: { condition: () => boolean; resolve: () => void }[] = [];
  const when = (condition: () => boolean) => new Promise<void>((resolve) => (condition() ? resolve() : waiters.push({ condition, resolve })));
  const changed = () => {
    for (const waiter of waiters.filter((w) => w.condition())) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve();
    }
  };

  it('hook listings of one organization open at once stay within its bound; the listings made ahead and dropped are closed', async () => {
    expect(bound).toBe(7);
    const listings: { project: string; open: boolean }[] = [];
    let open = 0;
    let maxOpen = 0;
    const listingsOf = (project: string) => listings.filter((l) => l.project === project);
    const first = [await world.newRepository(), await world.newRepository()];
    const lookups = new Map(first.map((repository) => [repository.externalId, heldRequest()]));
    world.proxy.fault = (request) => {
      if (request.method !== 'GET') return undefined;
      const lookup = /^\/api\/v4\/projects\/(\d+)(\?|$)/.exec(request.url);
      if (lookup) return lookups.get(lookup[1]!)?.fault;
      const listing = /^\/api\/v4\/projects\/(\d+)\/hooks(\?|$)/.exec(request.url);
      if (!listing) return undefined;
      const entry = { project: listing[1]!, open: true };
      // GitLab never answers a hook listing: it stays open until the worker closes it.
      return {
        kind: 'hold-request',
        release: released,
        onHeld: () => {
          listings.push(entry);
          maxOpen = Math.max(maxOpen, ++open);
          changed();
        },
        onClientGone: () => {
          entry.open = false;
          open--;
          changed();
        },
        onReleased: () => undefined,
      };
    };

    // Both lookups run inside their workflow tasks (the organization's 2 places) and are held.
    for (const repository of first) await requestAttachment(h, org, repository.repositoryId, 'PUT');
    await Promise.all([...lookups.values()].map((lookup) => lookup.held));
    // The connection's token is replaced while they are held (sealed anew: the same token, another
    // sealed value, which the steps cannot tell from another token); released, each lookup reads ahead with the old one.
    await h.db.updateTable('connections').set({ credential: seal(h.keys, world.credential, world.connectionId) }).where('id', '=', world.connectionId).execute();
    for (const lookup of lookups.values()) void lookup.release();
    // Each ensure drops the listing made ahead with the old token and lists with the new one.
    await when(() => first.every((repository) => listingsOf(repository.externalId).length === 2));

    // Five more attaches: refused inside the workflow task (both places held), their steps take the 5 activity slots.
    const more: Awaited<ReturnType<HookWorld['newRepository']>>[] = [];
    for (let i = 0; i < activityCallsPerOrganization(sizing); i++) more.push(await world.newRepository());
    for (const repository of more) await requestAttachment(h, org, repository.repositoryId, 'PUT');
    await when(() => more.every((repository) => listingsOf(repository.externalId).length === 1));

    expect(maxOpen, `hook listings open at once: ${maxOpen}, the organization's bound ${bound}`).toBeLessThanOrEqual(bound);
    // The listings made ahead and dropped were closed by the worker (not left to their 30 s timeout).
    await when(() => first.every((repository) => listingsOf(repository.externalId)[0]!.open === false));
    expect(first.map((repository) => listingsOf(repository.externalId).map((l) => l.open))).toEqual([
      [false, true],
      [false, true],
    ]);
    expect(open).toBe(bound);
  }, 60_000);
});
