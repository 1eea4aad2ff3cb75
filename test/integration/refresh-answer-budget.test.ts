import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAnswerBudget, type AnswerBudget } from '../../activities/providers/answer-budget.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { lastListing } from '../../lib/db/repositories/repository-cache.ts';
import type { RefreshResult } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents } from '../support/histories.ts';
import { testOutbound } from '../support/outbound.ts';

const MiB = 1024 * 1024;

/**
 * A repository refresh whose listing meets a worker's answer budget full of others' answers
 * (activities/providers/answer-budget.ts): the refused page waits for room inside its chunk
 * (activities/repository-cache.ts), so the listing spends none of its 10 attempts on the worker's
 * load and lists no page twice. Failing as `WorkerBusy` instead, each refusal was a retry (2 s,
 * doubling to 2 min), and a budget full for ~8 minutes failed the listing.
 */
describe('a repository refresh under a full answer budget', () => {
  const inner = createAnswerBudget({ limit: 256 * MiB, perOrganization: 64 * MiB });
  let fullFrom: number | undefined;
  let full = false;
  const refusals: number[] = [];
  let reserved = 0;
  /** Others' answers fill it from the listing's 3rd answer on, while `full`. */
  const budget: AnswerBudget = {
    limit: inner.limit,
    perOrganization: inner.perOrganization,
    held: (organizationId) => inner.held(organizationId),
    tryReserve(organizationId, cost) {
      if (++reserved === 3 && fullFrom === undefined) {
        fullFrom = Date.now();
        full = true;
      }
      if (full) {
        refusals.push(Date.now());
        return undefined;
      }
      return inner.tryReserve(organizationId, cost);
    },
  };
  let h: Harness;
  let gitlab: FakeGitlab;
  let proxy: FlakyProxy;
  beforeAll(async () => {
    [h, gitlab] = await Promise.all([startHarness({ providers: createProviderFactory({ outbound: testOutbound, answerBudget: budget }) }), startFakeGitlab()]);
    proxy = await startFlakyProxy(gitlab.url);
  });
  afterAll(async () => {
    await proxy?.close();
    await gitlab?.close();
    await h?.close();
  });

  it('waits while the budget is full, every listing chunk at its first attempt, and lists each page once', { timeout: 90_000 }, async () => {
    const FULL_FOR_MS = 10_000;
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    for (let i = 0; i < 500; i++) gitlab.addProject({ pathWithNamespace: `budget/p-${String(i).padStart(4, '0')}` });
    const { org } = await createOrgWithToken(h);
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });
    const freeing = setInterval(() => {
      if (fullFrom !== undefined && Date.now() - fullFrom >= FULL_FOR_MS) full = false;
    }, 50);
    try {
      const workflowId = `refresh-budget-${randomUUID()}`;
      await h.client.workflow.start('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ organizationId: org.id }] });
      const result = await resultOf<RefreshResult>(h, workflowId);
      expect(result).toMatchObject({ connections: 1, refreshed: 1, failed: [] });
      expect(refusals.length).toBeGreaterThan(2);
      // Asked again after growing waits (1 s doubling), for as long as the budget stayed full.
      expect(refusals.at(-1)! - refusals[0]!).toBeGreaterThanOrEqual(3000);
      expect(await lastListing(h.db, connectionId)).toMatchObject({ rowsWritten: 500 });
      const events = await historyEvents(h.client, workflowId);
      // No listing attempt failed: every chunk ran at its first attempt.
      expect(events.filter((e) => e.activityTaskFailedEventAttributes)).toEqual([]);
      const attempts = events.flatMap((e) => (e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.attempt] : []));
      expect(new Set(attempts)).toEqual(new Set([1]));
      // Each page requested once, and once more for each refusal of it.
      const listings = proxy.requests.filter((r) => r.url.includes('/projects?'));
      const pages = await h.db.selectFrom('repository_listing_pages').select('page_key').where('connection_id', '=', connectionId).execute();
      expect(listings.length).toBe(pages.length + refusals.length);
      expect(inner.held()).toBe(0);
    } finally {
      clearInterval(freeing);
      full = false;
    }
  });
});
