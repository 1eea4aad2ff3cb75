import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { open } from '../lib/crypto.ts';
import { loadConnectionSecrets } from '../lib/db/repositories/connections.ts';
import {
  activeConnectionIds,
  listingPage,
  markVanishedExcept,
  recordRefreshOutcome,
  saveListingPage,
  seenInListing,
  upsertRepositories,
} from '../lib/db/repositories/repository-cache.ts';
import type { ActivityDeps } from './index.ts';
import { classified } from './errors.ts';
import type { ListingProgress } from '../workflows/contract.ts';


export interface ListingChunkResult {
  progress: ListingProgress;
  done: boolean;
}

const FIRST_PAGE = 'first';

export function createRepositoryCacheActivities({ db, keys, providers, logger }: ActivityDeps) {
  return {
    async listConnectionsToRefresh({ organizationId }: { organizationId?: string }) {
      return activeConnectionIds(db, organizationId);
    },

    /**
     * Lists up to `maxPages` pages of one connection's repositories and upserts them, heartbeating
     * the cursor after each page: a retry (after a crash or a throttled call) resumes from the last
     * page it recorded instead of the first. GitHub pages are fetched conditionally with the ETag
     * stored for them; a 304 costs no rate limit and still counts the page's repositories as seen.
     */
    async listRepositoriesChunk({ connectionId, progress, maxPages }: { connectionId: string; progress: ListingProgress; maxPages: number }): Promise<ListingChunkResult> {
      const ctx = Context.current();
      const resumed = ctx.info.heartbeatDetails as ListingProgress | undefined;
      const state: ListingProgress = resumed && resumed.pages >= progress.pages ? structuredClone(resumed) : structuredClone(progress);
      const row = await loadConnectionSecrets(db, connectionId);
      if (!row || row.status !== 'active') {
        throw ApplicationFailure.create({ type: 'ConnectionNotActive', message: `connection ${connectionId} is ${row?.status ?? 'gone'}`, nonRetryable: true });
      }
      const adapter = providers({
        connectionId,
        provider: row.provider,
        baseUrl: row.base_url,
        externalKey: row.external_key,
        secret: row.credential ? open(keys, row.credential, row.id) : undefined,
      });
      const scope = { organizationId: row.organization_id, connectionId, provider: row.provider };
      for (let fetched = 0; fetched < maxPages; fetched++) {
        const pageKey = state.cursor ?? FIRST_PAGE;
        const stored = await listingPage(db, connectionId, pageKey);
        const page = await classified(() => adapter.listRepositoriesPage({ cursor: state.cursor, etag: stored?.etag ?? undefined }));
        state.apiCalls += page.apiCalls ?? 1;
        if (page.notModified && stored) {
          state.notModifiedPages++;
        } else {
          state.rowsWritten += await upsertRepositories(db, scope, page.repositories);
          await saveListingPage(db, connectionId, pageKey, page.etag, page.repositories.map((r) => r.externalId));
        }
        state.pages++;
        state.visitedPageKeys.push(pageKey);
        state.cursor = page.nextCursor;
        ctx.heartbeat(state);
        if (!page.nextCursor) return { progress: state, done: true };
      }
      return { progress: state, done: false };
    },

    /** Ends a complete listing: what no visited page holds any more is marked vanished. */
    async finishListing({ connectionId, visitedPageKeys }: { connectionId: string; visitedPageKeys: string[] }): Promise<{ vanished: number }> {
      const seen = await seenInListing(db, connectionId, visitedPageKeys);
      const vanished = await markVanishedExcept(db, connectionId, seen);
      await recordRefreshOutcome(db, connectionId, null);
      logger.info({ connectionId, seen: seen.size, vanished }, 'repository listing finished');
      return { vanished };
    },

    async recordRefreshFailure({ connectionId, reason }: { connectionId: string; reason: string }): Promise<void> {
      await recordRefreshOutcome(db, connectionId, reason);
      logger.warn({ connectionId, reason }, 'repository refresh failed for a connection');
    },
  };
}
