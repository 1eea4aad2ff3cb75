import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { createAnswerBudget, type AnswerBudget } from '../../activities/providers/answer-budget.ts';
import { createRepositoryCacheActivities, type ListingBudgetWait, type ListingChunkResult } from '../../activities/repository-cache.ts';
import { createKeyedLimiter } from '../../lib/limiter.ts';
import { createLogger } from '../../lib/logger.ts';
import { newListingProgress, type ListingProgress } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * A listing heartbeats where it stands at most once a second while its pages come (each heartbeat
 * costs the worker CPU; the SDK sends the server one per 24 s at most), and always as its chunk
 * stops, so a failed attempt's retry resumes from every page written before it failed.
 */
describe('repository listing heartbeats', () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  let proxy: FlakyProxy;
  let org: { id: string };
  const token = `glpat-${randomUUID()}`;
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    gitlab = await startFakeGitlab();
    proxy = await startFlakyProxy(gitlab.url);
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    for (let i = 0; i < 1000; i++) gitlab.addProject({ pathWithNamespace: `beats/p-${String(i).padStart(4, '0')}` });
    ({ org } = await createOrgWithToken(h));
  }, 60_000);
  afterAll(async () => {
    await proxy?.close();
    await gitlab?.close();
    await h?.close();
  });

  const activities = (db = h.db, { answerBudget, callsPerConnection = 4, budgetWait }: { answerBudget?: AnswerBudget; callsPerConnection?: number; budgetWait?: Partial<ListingBudgetWait> } = {}) =>
    createRepositoryCacheActivities(
      { db, keys: h.keys, providers: createProviderFactory({ outbound: testOutbound, ...(answerBudget ? { answerBudget } : {}) }), outbound: testOutbound, logger: createLogger('test', 'error'), settings: { publicUrl: TEST_PUBLIC_URL } },
      { callsPerConnection, limiter: createKeyedLimiter(8), ...(budgetWait ? { budgetWait } : {}) },
    );
  /** Lists a new connection's repositories in one activity attempt, keeping every heartbeat it sent. */
  async function list(db = h.db, onHeartbeat?: (details: ListingProgress) => void, options?: Parameters<typeof activities>[1]) {
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });
    const env = new MockActivityEnvironment({ workflowExecution: { workflowId: `refresh:${randomUUID()}`, runId: randomUUID() } });
    const heartbeats: ListingProgress[] = [];
    env.on('heartbeat', (details: ListingProgress) => {
      heartbeats.push(details);
      onHeartbeat?.(details);
    });
    const outcome = await env
      .run(activities(db, options).listRepositoriesChunk, { connectionId, progress: newListingProgress(), maxPages: 50, leaseHolder: `refresh:${connectionId}` })
      .then((result: unknown) => ({ result, error: undefined as unknown }), (error: unknown) => ({ result: undefined as unknown, error }));
    const written = (await h.db.selectFrom('repository_listing_pages').select('page_key').where('connection_id', '=', connectionId).execute()).map((r) => r.page_key);
    return { ...outcome, heartbeats, written };
  }

  it('a listing of many pages heartbeats fewer times than it has pages', async () => {
    proxy.fault = () => undefined;
    const { result, heartbeats, written } = await list();
    expect(result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
    expect(written.length).toBeGreaterThan(10);
    expect(heartbeats.length).toBeLessThan(written.length);
    // The last one, as the chunk stopped, holds every page.
    expect(heartbeats.at(-1)!.visitedPageKeys.sort()).toEqual([...written].sort());
  });

  /**
   * A listing chunk is one activity of up to `maxPages` pages: each page's answer is held in the
   * worker's answer budget (activities/providers/answer-budget.ts) until the page is written, not
   * until the chunk ends, so a long listing does not take an organization's share page after page.
   */
  it("holds each page's answer in the worker's answer budget until the page is written: a listing needs its pages in flight, not all of them", async () => {
    proxy.fault = () => undefined;
    // The budget, counting what it is given: the most held at once, and every page's answer together.
    const inner = createAnswerBudget({ limit: 1024 * 1024 * 1024, perOrganization: 1024 * 1024 * 1024 });
    let total = 0;
    let peak = 0;
    const counting: AnswerBudget = {
      ...inner,
      held: inner.held,
      tryReserve(organizationId, cost) {
        const release = inner.tryReserve(organizationId, cost);
        if (release) total += cost;
        peak = Math.max(peak, inner.held());
        return release;
      },
    };
    const first = await list(h.db, undefined, { answerBudget: counting, callsPerConnection: 2 });
    expect(first.result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
    expect(first.written.length).toBeGreaterThan(10);
    expect(inner.held()).toBe(0);
    expect(peak).toBeLessThan(total / 2);
    // An organization share of three quarters of the listing's answers together lists it all the same.
    const share = createAnswerBudget({ limit: 1024 * 1024 * 1024, perOrganization: Math.ceil(0.75 * total) });
    const second = await list(h.db, undefined, { answerBudget: share, callsPerConnection: 2 });
    expect(second.error).toBeUndefined();
    expect(second.result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
    expect(share.held()).toBe(0);
  });

  /*
   * A page whose answer the worker's answer budget refuses while it is full of others' answers
   * waits inside its chunk for room (heartbeating), then is fetched again; the chunk's other pages
   * are not listed again. Failing instead (WorkerBusy), it spent one of the listing's 10 attempts
   * on the worker's load each time, and a budget full for ~8 minutes failed the listing.
   */
  describe("under a full answer budget", () => {
    const MiB = 1024 * 1024;
    /**
     * A budget that others' answers fill from the `fillAfter`th answer reserved on, until `free`:
     * it refuses every answer meanwhile (what the listing's own pages give back does not make room),
     * counting its refusals.
     */
    function fullingBudget(fillAfter: number) {
      const inner = createAnswerBudget({ limit: 256 * MiB, perOrganization: 64 * MiB });
      let reserved = 0;
      let freed = false;
      const refusals: number[] = [];
      const budget: AnswerBudget = {
        limit: inner.limit,
        perOrganization: inner.perOrganization,
        held: (organizationId) => inner.held(organizationId),
        tryReserve(organizationId, cost) {
          if (!freed && reserved++ >= fillAfter) {
            refusals.push(Date.now());
            return undefined;
          }
          return inner.tryReserve(organizationId, cost);
        },
      };
      return {
        budget,
        inner,
        refusals,
        free: () => {
          freed = true;
        },
      };
    }
    /** Runs one chunk of `connectionId`'s listing from `progress`, keeping its heartbeats and the listing requests it made. */
    async function chunk(connectionId: string, progress: ListingProgress, options: Parameters<typeof activities>[1]) {
      const env = new MockActivityEnvironment({ workflowExecution: { workflowId: `refresh:${randomUUID()}`, runId: randomUUID() } });
      const heartbeats: number[] = [];
      env.on('heartbeat', () => heartbeats.push(Date.now()));
      const before = proxy.requests.length;
      const outcome = await env
        .run(activities(h.db, options).listRepositoriesChunk, { connectionId, progress, maxPages: 50, leaseHolder: `refresh:${connectionId}` })
        .then((result: unknown) => ({ result: result as ListingChunkResult, error: undefined as unknown }), (error: unknown) => ({ result: undefined, error }));
      const requests = proxy.requests.slice(before).filter((r) => r.url.includes('/projects?')).map((r) => r.url);
      return { ...outcome, heartbeats, requests };
    }
    const writtenPages = async (connectionId: string) => (await h.db.selectFrom('repository_listing_pages').select('page_key').where('connection_id', '=', connectionId).execute()).map((r) => r.page_key);

    it('a refused page waits in its chunk, heartbeating, and is fetched again once the budget frees: the listing completes at its first attempt, no page listed twice', async () => {
      proxy.fault = () => undefined;
      const { budget, inner, refusals, free } = fullingBudget(3);
      const FULL_FOR_MS = 2500;
      const freeing = setInterval(() => {
        if (refusals.length > 0 && Date.now() - refusals[0]! >= FULL_FOR_MS) free();
      }, 50);
      try {
        const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });
        const { result, error, heartbeats, requests } = await chunk(connectionId, newListingProgress(), { answerBudget: budget, callsPerConnection: 2, budgetWait: { firstMs: 200, maxMs: 800, perChunkMs: 60_000 } });
        expect(error).toBeUndefined();
        expect(result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
        expect(refusals.length).toBeGreaterThan(1);
        expect(refusals.at(-1)! - refusals[0]!).toBeGreaterThanOrEqual(FULL_FOR_MS - 1000);
        // Heartbeats went on while it waited.
        expect(heartbeats.filter((t) => t > refusals[0]! && t < refusals.at(-1)!).length).toBeGreaterThan(0);
        // Every page fetched once, and once more for each refusal of it: nothing listed again.
        const written = await writtenPages(connectionId);
        expect(requests.length).toBe(written.length + refusals.length);
        expect(new Set(requests).size).toBe(written.length);
        expect(inner.held()).toBe(0);
      } finally {
        clearInterval(freeing);
        free();
      }
    });

    it('a budget full past the waits a chunk allows ends the chunk early with its progress, not a failure; the next chunk goes on from it', async () => {
      proxy.fault = () => undefined;
      const { budget, inner, refusals, free } = fullingBudget(3);
      const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });
      const options = { answerBudget: budget, callsPerConnection: 2, budgetWait: { firstMs: 200, maxMs: 400, perChunkMs: 1500 } };
      const first = await chunk(connectionId, newListingProgress(), options);
      expect(first.error).toBeUndefined();
      expect(first.result).toMatchObject({ done: false });
      const progress = first.result!.progress;
      expect(progress.pages).toBeGreaterThanOrEqual(2);
      expect(progress.pending.length).toBeGreaterThan(0);
      expect(refusals.length).toBeGreaterThan(1);
      const writtenFirst = await writtenPages(connectionId);
      expect([...progress.visitedPageKeys].sort()).toEqual([...writtenFirst].sort());

      free();
      const second = await chunk(connectionId, progress, options);
      expect(second.error).toBeUndefined();
      expect(second.result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
      // The second chunk fetched only the pages the first had not written, each once.
      const written = await writtenPages(connectionId);
      expect(second.requests.length).toBe(written.length - writtenFirst.length);
      expect(new Set([...first.requests, ...second.requests]).size).toBe(written.length);
      expect(inner.held()).toBe(0);
    });
  });

  it("a failed attempt's last heartbeat holds every page it wrote and the one that failed, still pending", async () => {
    let listings = 0;
    proxy.fault = (request) => (request.url.includes('/projects?') && ++listings === 5 ? { kind: 'lose-answer' } : undefined);
    const { error, heartbeats, written } = await list();
    expect(error).toBeDefined();
    expect(written.length).toBeGreaterThan(1);
    const last = heartbeats.at(-1)!;
    expect(last.visitedPageKeys.sort()).toEqual([...written].sort());
    expect(last.pending.length).toBeGreaterThan(0);
    expect(last.pending.filter((key) => written.includes(key))).toEqual([]);
  });

  /*
   * A page's write commits without waiting for the disk; a heartbeat must name only pages a
   * durable commit has flushed since (makeListingDurable), or after a database crash the retry
   * would skip a page whose write was lost. The activity's statements are logged as they complete
   * (the same database, through a pool of its own): before each heartbeat, a durable commit must
   * have completed after at least as many page writes as the heartbeat names.
   */
  it('names in a heartbeat only pages a durable commit flushed before it (and inserts a first listing\'s rows)', async () => {
    proxy.fault = () => undefined;
    const log: ('page' | 'durable')[] = [];
    let insertedPages = 0;
    const logged = new Kysely<any>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: inject('databaseUrl'), max: 5 }) }),
      log: (event) => {
        if (event.level !== 'query') return;
        if (event.query.sql.includes('insert into repository_listing_pages')) log.push('page');
        // A first listing into an empty cache inserts its rows without the upsert (INSERT_AND_SAVE_PAGE).
        if (event.query.sql.includes('insert into repository_listing_pages') && !event.query.sql.includes('on conflict (connection_id, external_id)')) insertedPages++;
        else if (event.query.sql.includes('insert into repository_listings as l (connection_id) values')) log.push('durable');
      },
    });
    const flushedBefore: { named: number; flushed: number }[] = [];
    try {
      const { result, heartbeats } = await list(logged as typeof h.db, (details) => {
        const lastDurable = log.lastIndexOf('durable');
        flushedBefore.push({ named: details.visitedPageKeys.length, flushed: log.slice(0, Math.max(lastDurable, 0)).filter((e) => e === 'page').length });
      });
      expect(result).toMatchObject({ done: true, progress: { rowsWritten: 1000 } });
      expect(heartbeats.length).toBeGreaterThan(1);
      for (const { named, flushed } of flushedBefore) expect(named).toBeLessThanOrEqual(flushed);
      expect(insertedPages).toBe(log.filter((e) => e === 'page').length);
    } finally {
      await logged.destroy();
    }
  });

  /*
   * The same for what a chunk returns: a chunk that stops with pages left (the next chunk skips the
   * pages it names) after every durable commit failed, as they do when the database has just
   * crashed and lost the pages' commits, must fail (its retry resumes from the last heartbeat
   * sent), not return the pages as written. The pool's connections refuse the durable commit alone.
   */
  it('a chunk whose durable commits failed fails instead of returning pages no durable commit covered', async () => {
    proxy.fault = () => undefined;
    const pool = new pg.Pool({ connectionString: inject('databaseUrl'), max: 5 });
    let durableAttempts = 0;
    pool.on('connect', (client) => {
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      client.query = ((text: unknown, ...rest: unknown[]) => {
        const sql = typeof text === 'string' ? text : (text as { text?: string } | undefined)?.text;
        if (sql?.includes('insert into repository_listings as l (connection_id) values')) {
          durableAttempts++;
          return Promise.reject(new Error('Connection terminated unexpectedly (a crashed database)'));
        }
        return query(text, ...rest);
      }) as typeof client.query;
    });
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    try {
      const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });
      const env = new MockActivityEnvironment({ workflowExecution: { workflowId: `refresh:${randomUUID()}`, runId: randomUUID() } });
      const heartbeats: ListingProgress[] = [];
      env.on('heartbeat', (details: ListingProgress) => heartbeats.push(details));
      const outcome = await env
        .run(activities(db as typeof h.db).listRepositoriesChunk, { connectionId, progress: newListingProgress(), maxPages: 2, leaseHolder: `refresh:${connectionId}` })
        .then((result: unknown) => ({ result }), (error: unknown) => ({ error }));
      expect(durableAttempts).toBeGreaterThan(0);
      expect(heartbeats).toEqual([]);
      expect(outcome).toMatchObject({ error: { message: expect.stringContaining('a crashed database') } });
    } finally {
      await db.destroy();
    }
  });
});
