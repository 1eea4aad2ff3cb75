import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { open } from '../lib/crypto.ts';
import { loadConnectionSecrets } from '../lib/db/repositories/connections.ts';
import {
  activeConnectionIds,
  activeConnectionsInRounds,
  cachedRepositoryCount,
  listingPages,
  finishListingInDb,
  purgeVanishedRepositories,
  makeListingDurable,
  recordRefreshOutcome,
  repositoriesDigest,
  takeListingLease,
  writeListingPage,
  LISTING_LEASE_SECONDS,
} from '../lib/db/repositories/repository-cache.ts';
import { admitActivity, holdingAdmission } from './activity-admission.ts';
import type { ActivityDeps } from './index.ts';
import { classified, curableBudgetRefusal, toActivityFailure } from './errors.ts';
import { cancellableSleep, heartbeatProgress } from './outbound.ts';
import { ListingTooLongError, type RepositoryPage } from './providers/port.ts';
import { holdingAnswers } from './providers/answer-budget.ts';
import { LISTING_CAPS_DEFAULTS, VANISHED_RETENTION_DAYS_DEFAULT } from '../lib/config.ts';
import { FIRST_LISTING_PAGE, LISTING_HEARTBEAT_MS, type ListingProgress } from '../workflows/contract.ts';
import type { InlineAdmission } from './inline-admission.ts';
import type { KeyedLimiter } from '../lib/limiter.ts';
import type { Provider, RoundPlace } from '../lib/domain.ts';

export interface ListingChunkResult {
  /** Where the listing stands; once done, its counts only (no page keys: the listing is over). */
  progress: ListingProgress;
  done: boolean;
  /** Repositories marked vanished when the listing completed (0 until then). */
  vanished: number;
  /** Another refresh holds the connection's listing lease: nothing was listed (only with `leaseHolder`). */
  alreadyRunning?: boolean;
}

/** How many listing calls run at once: per connection, and for the whole worker (shared between organizations); and where one listing stops. */
export interface ListingConcurrency {
  callsPerConnection: number;
  /** The worker's, keyed by organization: a freed place goes to the organization with the fewest calls going. */
  limiter: KeyedLimiter;
  /** repositoryCache.maxRepositoriesPerConnection / maxPagesPerConnection (each defaults to LISTING_CAPS_DEFAULTS'). */
  caps?: Partial<ListingCaps>;
  /** repositoryCache.vanishedRetentionDays (default VANISHED_RETENTION_DAYS_DEFAULT): vanished rows older than this are purged. */
  vanishedRetentionDays?: number;
  /** How a chunk waits for room in the worker's answer budget (default LISTING_BUDGET_WAIT_DEFAULTS). */
  budgetWait?: Partial<ListingBudgetWait>;
}

/** How a listing chunk waits for room in the worker's answer budget (listRepositoriesChunk). */
export interface ListingBudgetWait {
  /** The first wait after a refusal, doubling while refused (each spread over its upper half)… */
  firstMs: number;
  /** …up to this. */
  maxMs: number;
  /** Waits past this end the chunk early, its pages left pending for the next chunk. */
  perChunkMs: number;
}
export const LISTING_BUDGET_WAIT_DEFAULTS: ListingBudgetWait = { firstMs: 1000, maxMs: 30_000, perChunkMs: 5 * 60_000 };
/** A wait for the budget heartbeats at least this often (the listing's heartbeat timeout is 30 s). */
const BUDGET_WAIT_BEAT_MS = 5000;

export interface ListingCaps {
  /** Repositories one listing's answers may hold; the page that would pass it is not written. */
  maxRepositories: number;
  /** Pages one listing may fetch (or know it has to). */
  maxPages: number;
}

export function createRepositoryCacheActivities(
  { db, keys, providers, logger, metrics, activitySlots }: ActivityDeps & {
    /** Admission of tenant-facing activities into activity slots (activities/activity-admission.ts), one per worker. */
    activitySlots?: InlineAdmission;
  },
  concurrency: ListingConcurrency,
) {
  const caps: ListingCaps = {
    maxRepositories: concurrency.caps?.maxRepositories ?? LISTING_CAPS_DEFAULTS.maxRepositoriesPerConnection,
    maxPages: concurrency.caps?.maxPages ?? LISTING_CAPS_DEFAULTS.maxPagesPerConnection,
  };
  const retentionDays = concurrency.vanishedRetentionDays ?? VANISHED_RETENTION_DAYS_DEFAULT;
  const budgetWait: ListingBudgetWait = { ...LISTING_BUDGET_WAIT_DEFAULTS, ...concurrency.budgetWait };
  return holdingAdmission({
    /**
     * The active connections to refresh: all (runs started before batching), one batch after `after`
     * in id order, or, `inRounds` (every organization's), one batch after `afterInRounds` in rounds.
     */
    async listConnectionsToRefresh({
      organizationId,
      after,
      limit,
      inRounds,
      afterInRounds,
    }: {
      organizationId?: string;
      after?: string;
      limit?: number;
      inRounds?: boolean;
      afterInRounds?: RoundPlace;
    }): Promise<{ id: string; organizationId: string; organizationSlug: string; provider: Provider; round?: number }[]> {
      if (inRounds && limit !== undefined) return activeConnectionsInRounds(db, { after: afterInRounds, limit });
      return activeConnectionIds(db, organizationId, { after, limit });
    },

    /**
     * Lists up to `maxPages` pages of one connection's repositories and upserts them. Pages whose
     * cursors are known fetch in parallel (at most `callsPerConnection` for this connection and the
     * worker-wide limit for all); the frontier of pending cursors is heartbeated as pages are
     * written (at most every LISTING_HEARTBEAT_MS, and as the chunk stops), so a retry (after a
     * crash or a throttled call) resumes there instead of at the first page. GitHub
     * pages are fetched conditionally with the ETag stored for them: a 304 costs no rate limit and
     * the stored page (its repositories and the pages it led to) stands. When nothing is pending,
     * the listing is complete: what no visited page holds is marked vanished. A page the worker's
     * answer budget refuses waits for room inside the chunk; the chunk ends early (not done) once it
     * has waited `budgetWait.perChunkMs`.
     *
     * The provider is the tenant's (its base URL), which may answer as slowly as it likes: run by a
     * refresh that can take a refusal (`askAdmission`), the listing asks the worker's admission into
     * activity slots for the connection's organization (read with the connection, so no round trip
     * of its own) before its first call; refused, it calls nothing and fails ActivityNotAdmitted,
     * and the run lists the connection again after a timer, in the same lane.
     */
    async listRepositoriesChunk({
      connectionId,
      progress,
      maxPages,
      leaseHolder,
      askAdmission,
    }: {
      connectionId: string;
      progress: ListingProgress;
      maxPages: number;
      /**
       * The refresh run listing the connection: the listing takes (or renews) the connection's lease
       * for it first, and does nothing if another refresh holds it. Absent for the runs of a child
       * workflow per connection started before the lease, whose workflow id is their exclusion.
       */
      leaseHolder?: string;
      askAdmission?: boolean;
    }): Promise<ListingChunkResult> {
      const ctx = Context.current();
      const resumed = ctx.info.heartbeatDetails as ListingProgress | undefined;
      const state: ListingProgress = resumed && resumed.pages >= progress.pages ? structuredClone(resumed) : structuredClone(progress);
      const starting = state.pages === 0;
      // The lease and the page memory are read alongside the connection: no round trip before the first call.
      const [granted, row, stored, counted] = await Promise.all([
        leaseHolder === undefined ? true : takeListingLease(db, connectionId, leaseHolder),
        loadConnectionSecrets(db, connectionId),
        listingPages(db, connectionId),
        // Once a listing, as it starts (an index-only count).
        starting ? cachedRepositoryCount(db, connectionId) : 0,
      ]);
      // A connection gone or no longer active fails its listing (the refresh records it and gives a lease taken here back).
      if (!row || row.status !== 'active') {
        throw ApplicationFailure.create({ type: 'ConnectionNotActive', message: `connection ${connectionId} is ${row?.status ?? 'gone'}`, nonRetryable: true });
      }
      if (!granted) {
        logger.info({ connectionId }, 'repository listing skipped: another refresh is listing this connection');
        return { progress: state, done: false, vanished: 0, alreadyRunning: true };
      }
      /*
       * What listings failed at the caps leave behind (their rows, their pages' memory) is kept, and
       * only a complete listing marks rows vanished or forgets pages; so a server listing different
       * repositories each time could still grow the cache by a cap per listing. A connection whose
       * cache already holds twice the caps is not listed again. Rows vanished past the retention
       * (and unreferenced) are deleted after each complete listing; one over the bound has them
       * deleted here first, so a connection that got there by churn lists again once they age out,
       * while what remains (live rows, recently vanished ones) still counts.
       */
      const tooLong = (message: string) => toActivityFailure(new ListingTooLongError(message));
      let cachedRows = counted;
      if (cachedRows > 2 * caps.maxRepositories) {
        const purged = await purgeVanishedRepositories(db, connectionId, retentionDays, { maxBatches: Infinity, between: () => heartbeatProgress(structuredClone(state)) });
        if (purged > 0) {
          logger.info({ connectionId, purged }, 'repositories vanished past their retention deleted before listing');
          cachedRows = await cachedRepositoryCount(db, connectionId);
        }
      }
      if (cachedRows > 2 * caps.maxRepositories || stored.size > 2 * caps.maxPages) {
        throw tooLong(
          `the repository cache of connection ${connectionId} already holds ${cachedRows.toLocaleString('en-US')} repositories (vanished ones included) and ` +
            `${stored.size.toLocaleString('en-US')} listing pages, more than twice repositoryCache.maxRepositoriesPerConnection (${caps.maxRepositories.toLocaleString('en-US')}) or ` +
            `maxPagesPerConnection (${caps.maxPages.toLocaleString('en-US')}): it is not listed again`,
        );
      }
      // Refused, the lease taken here stays the run's: it lists the connection when admitted, or the lease runs out.
      admitActivity(activitySlots, { organizationId: row.organization_id, askAdmission });
      const adapter = providers({
        connectionId,
        organizationId: row.organization_id,
        provider: row.provider,
        baseUrl: row.base_url,
        externalKey: row.external_key,
        secret: row.credential ? open(keys, row.credential, row.id) : undefined,
      });
      const scope = { organizationId: row.organization_id, connectionId, provider: row.provider };
      // A listing that starts with an empty cache inserts its pages' rows without the upsert's
      // checks until one turns out to be there already (writeListingPage, NewRows).
      const newRows = { likely: starting && counted === 0 };
      const queue = [...state.pending];
      const known = new Set([...state.visitedPageKeys, ...queue]);
      const inFlight = new Set<string>();
      const enqueue = (cursor: string) => {
        if (known.has(cursor)) return;
        known.add(cursor);
        queue.push(cursor);
      };
      /*
       * Pages commit without waiting for the disk (writeListingPage); what is heartbeated (and what
       * a chunk returns) must not name a page a database crash could still lose, or the retry or
       * next chunk would skip it and the listing's end mark its repositories vanished. So a
       * heartbeat waits for makeListingDurable (one durable commit, which flushes every write
       * before it, and renews the lease) when pages were written since the last one. A heartbeat
       * whose flush failed is not sent: the retry resumes from the one before. A listing longer
       * than a third of its lease renews it that way too, pages written or not (304s).
       */
      let beatAt = -Infinity;
      let beating: Promise<void> = Promise.resolve();
      let unflushed = false;
      let leaseRenewedAt = Date.now();
      /** Heartbeats where the listing stands: at most every LISTING_HEARTBEAT_MS while pages come, and always as the chunk stops (`last`). */
      const beat = (last: boolean) => {
        const now = Date.now();
        if (!last && now - beatAt < LISTING_HEARTBEAT_MS) return;
        beatAt = now;
        state.pending = [...inFlight, ...queue];
        const progress = structuredClone(state);
        const flush = unflushed || (leaseHolder !== undefined && now - leaseRenewedAt > (LISTING_LEASE_SECONDS * 1000) / 3);
        unflushed = false;
        if (flush) leaseRenewedAt = now;
        beating = beating.then(async () => {
          if (flush) {
            try {
              const renewed = await makeListingDurable(db, connectionId, leaseHolder);
              if (leaseHolder !== undefined && !renewed) logger.warn({ connectionId }, 'listing lease not renewed: another refresh holds it');
            } catch (error) {
              unflushed = true;
              logger.warn({ connectionId, err: error }, 'listing writes not made durable: progress not heartbeated');
              return;
            }
          }
          heartbeatProgress(progress);
        });
      };

      /**
       * One page: the call (within both limits, the worker's taken as its organization's turn comes),
       * then its cursors join the queue at once so the next calls start while this page is written;
       * the page counts as visited once it is written. Its answers' reservations in the worker's
       * answer budget (activities/providers/answer-budget.ts) are held until then, not until the
       * chunk ends: a chunk lists up to `maxPages` pages.
       */
      let fetching = 0;
      /** Rows of pages past the cap check whose write has not ended: not yet in `state.listed`. */
      let unwritten = 0;
      let pump = () => {};
      const fetchPage = (pageKey: string) => holdingAnswers(() => fetchAndRecord(pageKey));
      const fetchAndRecord = async (pageKey: string) => {
        const previous = stored.get(pageKey);
        const cursor = pageKey === FIRST_LISTING_PAGE ? undefined : pageKey;
        let page: RepositoryPage;
        try {
          page = await concurrency.limiter.run(row.organization_id, () => classified(() => adapter.listRepositoriesPage({ cursor, etag: previous?.etag ?? undefined })));
        } finally {
          fetching--;
        }
        state.apiCalls += page.apiCalls ?? 1;
        if (page.unstorable) {
          logger.warn({ connectionId, provider: row.provider, pageKey, unstorable: page.unstorable }, 'repositories left out of the listing: their ids hold a NUL or a lone UTF-16 surrogate, which PostgreSQL cannot store');
        }
        // Checked before the write: the page that would pass the cap is not written (pages run
        // concurrently, this part synchronously, so pages being written hold their rows in `unwritten`).
        // Counted in `listed` only once written: a page whose write fails stays pending, and the
        // retry that writes it must not count its rows twice (the heartbeat carries `listed`).
        const count = page.repositories.length;
        if ((state.listed ?? 0) + unwritten + count > caps.maxRepositories) {
          throw tooLong(ListingTooLongError.over(row.provider, caps.maxRepositories, 'repositories for one connection (repositoryCache.maxRepositoriesPerConnection)').message);
        }
        unwritten += count;
        try {
          await recordPage(pageKey, page, previous);
        } finally {
          unwritten -= count;
        }
        state.listed = (state.listed ?? 0) + count;
        state.pages++;
        state.visitedPageKeys.push(pageKey);
      };

      /** Writes a fetched page (its repositories and the page's memory) and queues the pages it leads to. */
      const recordPage = async (pageKey: string, page: RepositoryPage, previous: ReturnType<typeof stored.get>) => {
        let links = { nextCursor: page.nextCursor, fanOut: page.fanOut ?? [] };
        if (page.notModified) {
          if (!previous) throw new Error(`page ${pageKey} answered 304 to a request that sent no ETag`);
          state.notModifiedPages++;
          links = { nextCursor: previous.nextCursor ?? undefined, fanOut: previous.fanOut };
        }
        for (const next of links.fanOut) enqueue(next);
        if (links.nextCursor) enqueue(links.nextCursor);
        pump();
        if (!page.notModified) {
          // The same repositories as stored: no upsert (it would lock every row it met). The page row
          // is written only if where it led or its ETag changed.
          const contentHash = repositoriesDigest(page.repositories);
          const unchanged = previous?.contentHash === contentHash;
          const sameLinks =
            previous !== undefined &&
            previous.etag === (page.etag ?? null) &&
            previous.nextCursor === (links.nextCursor ?? null) &&
            JSON.stringify(previous.fanOut) === JSON.stringify(links.fanOut);
          // One statement: a stored digest vouches only for rows committed with it, so a retry after
          // a failed write writes them again.
          // (Read the count after the await: pages run concurrently, `state.rowsWritten += await …` would lose some.)
          const written = await writeListingPage(
            db,
            scope,
            pageKey,
            unchanged ? undefined : page.repositories,
            unchanged && sameLinks ? undefined : { etag: page.etag, externalIds: page.repositories.map((r) => r.externalId), ...links, contentHash },
            { newRows },
          );
          unflushed = true;
          state.rowsWritten += written;
          // Progress heartbeated by a worker from before this count existed lacks it.
          if (unchanged) state.unchangedPages = (state.unchangedPages ?? 0) + 1;
          metrics?.listingPage(row.provider, { apiCalls: page.apiCalls ?? 1, notModified: false, unchanged, rowsWritten: written });
        } else {
          metrics?.listingPage(row.provider, { apiCalls: page.apiCalls ?? 1, notModified: true, unchanged: false, rowsWritten: 0 });
        }
      };

      // Pages fetched but not yet written, at most: bounds the memory a slow database can hold up.
      const maxUnwritten = concurrency.callsPerConnection * 2;
      let started = 0;
      /*
       * A page whose answer the worker's answer budget refused while full of others' answers (or of
       * this listing's own pages in flight) goes back to the queue, and the chunk starts no page
       * for a jittered wait (budgetWait: 1 s doubling to 30 s), heartbeating, while its pages in
       * flight are written and give their part back; then it asks again. A failure instead
       * (WorkerBusy) spent one of the listing's 10 attempts on the worker's load: a budget full for
       * ~8 minutes failed the listing. Past `perChunkMs` of waits the chunk ends early with what it
       * wrote and its pages pending, like a chunk at `maxPages`: no attempt spent, nothing listed
       * again, and the activity slot is given back between chunks (the next one asks admission
       * again). The wait holds the slot this listing already holds, within its organization's
       * share, and none of the budget.
       */
      let waitingForBudget = false;
      let budgetWaitedMs = 0;
      let budgetRefusals = 0;
      let outOfBudgetWait = false;
      const waitHeartbeating = async (ms: number) => {
        for (const until = Date.now() + ms; Date.now() < until; ) {
          await cancellableSleep(Math.min(until - Date.now(), BUDGET_WAIT_BEAT_MS));
          beat(false);
        }
      };
      const listed = new Promise<void>((resolve, reject) => {
        let failure: { error: unknown } | undefined;
        const refusedByBudget = () => {
          if (waitingForBudget || outOfBudgetWait) return;
          const left = budgetWait.perChunkMs - budgetWaitedMs;
          if (left <= 0) {
            outOfBudgetWait = true;
            logger.info({ connectionId, waitedMs: budgetWaitedMs, pages: state.pages }, "repository listing chunk ends early: the worker's answer budget stayed full; the next chunk goes on from its pending pages");
            return;
          }
          const ceiling = Math.min(budgetWait.firstMs * 2 ** budgetRefusals++, budgetWait.maxMs);
          const wait = Math.min(left, Math.round(ceiling / 2 + (ceiling / 2) * Math.random()));
          waitingForBudget = true;
          waitHeartbeating(wait)
            .catch((error: unknown) => {
              failure ??= { error };
            })
            .finally(() => {
              budgetWaitedMs += wait;
              waitingForBudget = false;
              pump();
            });
        };
        pump = () => {
          // Pages done, being fetched and known to follow: past the cap the listing fails now, before
          // fetching them (a GitHub Link header may name a last page far beyond it).
          if (!failure && state.pages + inFlight.size + queue.length > caps.maxPages) {
            failure = { error: tooLong(ListingTooLongError.over(row.provider, caps.maxPages, 'pages of repositories for one connection (repositoryCache.maxPagesPerConnection)').message) };
          }
          while (!failure && !waitingForBudget && !outOfBudgetWait && fetching < concurrency.callsPerConnection && inFlight.size < maxUnwritten && queue.length > 0 && started < maxPages) {
            const pageKey = queue.shift()!;
            started++;
            fetching++;
            inFlight.add(pageKey);
            fetchPage(pageKey)
              .then(
                () => {
                  budgetRefusals = 0;
                },
                (error: unknown) => {
                  // Still pending: the heartbeat keeps it for the retry, or the next chunk (a budget refusal) lists it.
                  queue.unshift(pageKey);
                  if (!failure && curableBudgetRefusal(error) !== undefined) {
                    // Not one of this chunk's pages: it is fetched again.
                    started--;
                    refusedByBudget();
                  } else failure ??= { error };
                },
              )
              .finally(() => {
                inFlight.delete(pageKey);
                // With no page left in flight the chunk may be ending (done, failed: its retry resumes from this, or waiting).
                beat(inFlight.size === 0);
                pump();
              });
          }
          // Pages already in flight finish (and are recorded) before the chunk ends or fails; a wait for the budget ends first.
          if (inFlight.size === 0 && !waitingForBudget) (failure ? reject(failure.error) : resolve());
        };
        pump();
      });
      // The last heartbeat (made durable first) is sent before the chunk ends or fails.
      await listed.finally(() => beating);
      // Its flush failed (a database that just crashed loses the pages' commits and fails the flush,
      // while Temporal is still there to take a result): the result would name pages no durable
      // commit covered, and the next chunk would skip them. Flushed here, or the chunk fails and its
      // retry resumes from the last heartbeat that was sent.
      if (unflushed) await makeListingDurable(db, connectionId, leaseHolder);
      state.pending = queue;
      if (queue.length > 0) return { progress: state, done: false, vanished: 0 };

      // Also records the refresh as succeeded, the listing's counts as the connection's last, and gives the lease back.
      const { visitedPageKeys, pending: _pending, ...counts } = state;
      const { vanished, expired } = await finishListingInDb(db, connectionId, visitedPageKeys, { holder: leaseHolder, counts, retentionDays });
      // Then the rows vanished past the retention that nothing refers to go, when the finish found
      // any (most listings have none, and skip the purge's transaction). Housekeeping: a failure is
      // logged, not the listing's (its outcome is recorded); the next complete listing deletes them.
      let purged = 0;
      try {
        if (expired) purged = await purgeVanishedRepositories(db, connectionId, retentionDays, { between: () => heartbeatProgress(structuredClone(state)) });
      } catch (error) {
        logger.warn({ connectionId, err: error }, 'repositories vanished past their retention not deleted');
      }
      logger.info({ connectionId, pages: state.pages, apiCalls: state.apiCalls, rowsWritten: state.rowsWritten, vanished, purged }, 'repository listing finished');
      // The page keys stay out of the result (and so out of the run's history): no one reads them once the listing is done.
      return { progress: { ...counts, pending: [], visitedPageKeys: [] }, done: true, vanished };
    },

    /** Records a failed refresh on the connection and gives `leaseHolder`'s lease back. */
    async recordRefreshFailure({ connectionId, reason, leaseHolder }: { connectionId: string; reason: string; leaseHolder?: string }): Promise<void> {
      await recordRefreshOutcome(db, connectionId, reason, leaseHolder);
      logger.warn({ connectionId, reason }, 'repository refresh failed for a connection');
    },
    // A page the answer budget refused while full of others' answers waits inside the chunk (above),
    // and the chunk ends early with its progress past its waits: never an admission refusal, which
    // would list the chunk again from its start (one connection's pages in flight, up to 8 of an
    // Azure DevOps project's 21-29 MiB, can hold its organization's share alone). A refusal no wait
    // cures (a page alone past the share) stays WorkerBusy, retried from the last heartbeat.
  }, { budgetRefusals: 'retried' });
}
