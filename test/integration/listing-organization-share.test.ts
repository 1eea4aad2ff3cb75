import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { createRepositoryCacheActivities } from '../../activities/repository-cache.ts';
import { createKeyedLimiter, type KeyedLimiter } from '../../lib/limiter.ts';
import { createLogger } from '../../lib/logger.ts';
import { newListingProgress } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * The worker's listing calls share one limiter (repositoryCache.callsPerWorker), whichever
 * organization's listings make them; the workflows bound an organization's listings (its lanes,
 * its share of the activity slots: 5 by default, each making up to callsPerConnection = 4 calls at
 * once), not its share of those calls. In arrival order, one organization listing more
 * connections at once than the limiter has places kept calls queued ahead of any other
 * organization's, and its tenant's server answers as slowly as it likes (30 s a page). A freed
 * place now goes to the organization with the fewest calls going.
 *
 * Here the worker has 2 places. Organization A lists 3 connections at a GitLab that holds every
 * call: 2 take the places, the third waits. Organization B then lists one connection at a GitLab
 * that answers. One of A's calls is answered: B's call goes out next, and A's third after it. In
 * arrival order A's third took the place and B's listing waited for A's server.
 */
describe("a worker's listing calls: one organization's queued calls do not go before another's", () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  /** A's server: every listing call held until the test answers it. */
  let slow: FlakyProxy;
  /** B's: every call answered at once. */
  let fast: FlakyProxy;
  let orgA: { id: string };
  let orgB: { id: string };
  const token = `glpat-${randomUUID()}`;
  const released: (() => void)[] = [];
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    gitlab = await startFakeGitlab();
    slow = await startFlakyProxy(gitlab.url);
    fast = await startFlakyProxy(gitlab.url);
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    for (let i = 0; i < 3; i++) gitlab.addProject({ pathWithNamespace: `share/p-${i}` });
    ({ org: orgA } = await createOrgWithToken(h));
    ({ org: orgB } = await createOrgWithToken(h));
  }, 60_000);
  afterAll(async () => {
    for (const release of released) release();
    await slow?.close();
    await fast?.close();
    await gitlab?.close();
    await h?.close();
  });

  it("another organization's listing takes the first place one of A's calls frees, before A's own queued call", async () => {
    /** What the test waits on, checked whenever a call reaches a server or asks the limiter for a place. */
    const waiters: { condition: () => boolean; resolve: () => void }[] = [];
    const when = (condition: () => boolean) => new Promise<void>((resolve) => (condition() ? resolve() : waiters.push({ condition, resolve })));
    const changed = () => {
      for (const waiter of waiters.filter((w) => w.condition())) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    };
    const limiter = createKeyedLimiter(2);
    /** Calls that asked the worker's limiter for a place (the limiter itself decides). */
    let asked = 0;
    const observed: KeyedLimiter = {
      limit: limiter.limit,
      run: (key, task) => {
        const running = limiter.run(key, task);
        asked++;
        changed();
        return running;
      },
    };
    const activities = createRepositoryCacheActivities(
      { db: h.db, keys: h.keys, providers: createProviderFactory({ outbound: testOutbound }), outbound: testOutbound, logger: createLogger('test', 'error'), settings: { publicUrl: TEST_PUBLIC_URL } },
      { callsPerConnection: 4, limiter: observed },
    );
    const list = (connectionId: string) =>
      new MockActivityEnvironment({ workflowExecution: { workflowId: `refresh:${randomUUID()}`, runId: randomUUID() } }).run(activities.listRepositoriesChunk, {
        connectionId,
        progress: newListingProgress(),
        maxPages: 50,
        leaseHolder: `refresh:${connectionId}`,
      });
    const listingCall = (request: { method: string; url: string }) => request.method === 'GET' && request.url.startsWith('/api/v4/projects?');
    /** The listing calls that reached a server, by organization, in order. */
    const calls: string[] = [];
    const held: (() => void)[] = [];
    slow.fault = (request) => {
      if (!listingCall(request)) return undefined;
      let answer!: () => void;
      const release = new Promise<void>((resolve) => (answer = resolve));
      released.push(answer);
      return { kind: 'hold-request', release, onHeld: () => (held.push(answer), calls.push('A'), changed()), onReleased: () => undefined };
    };
    fast.fault = (request) => {
      if (listingCall(request)) (calls.push('B'), changed());
      return undefined;
    };

    const connectionsOfA = [];
    for (let i = 0; i < 3; i++) connectionsOfA.push(await seedConnection(h, { organizationId: orgA.id, provider: 'gitlab', baseUrl: slow.url, secret: token }));
    const listingsOfA = connectionsOfA.map((id) => list(id));
    // A's first two calls hold both places at its server; its third waits for a place.
    await when(() => held.length === 2 && asked === 3);
    const connectionOfB = await seedConnection(h, { organizationId: orgB.id, provider: 'gitlab', baseUrl: fast.url, secret: token });
    const listingOfB = list(connectionOfB);
    await when(() => asked === 4);
    expect(calls).toEqual(['A', 'A']);

    // One of A's calls is answered: the place it frees goes to B's call, not to A's third.
    held[0]!();
    await when(() => calls.length === 3);
    expect(calls).toEqual(['A', 'A', 'B']);
    // Then A's third, once B's call ended.
    await when(() => held.length === 3);
    // A's server answers from now on: every listing ends (each lists its one page, then the empty one after it).
    slow.fault = () => undefined;
    for (const answer of held) answer();
    for (const result of await Promise.all([listingOfB, ...listingsOfA])) expect(result).toMatchObject({ done: true, progress: { listed: 3 } });
  });
});
