import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import type { Dispatch, RecordedDelivery } from '../activities/events.ts';
import type { DispatchOutcome, FirstAttempt } from '../activities/dispatch.ts';
import { type EventInput, LISTING_HEARTBEAT_MS } from '../workflows/contract.ts';
import type { ProviderTarget } from '../activities/providers/port.ts';
import type { BareListingRequest, listingWalker, WalkCounts } from './listing-walk.ts';

/** What a walkListing activity walks: connection `index` of the request the bench wrote to `requestFile`, within run `runKey`'s limits. */
export interface FloorListingInput {
  requestFile: string;
  runKey: string;
  index: number;
}

/** The floor workflows' activities: results the size and shape of the real ones, and no work. */
export function createFloorActivities() {
  // One walker per floor run (as the bare listing builds one per walk): its connections share one worker-wide limit.
  const walkers = new Map<string, Promise<{ walker: ReturnType<typeof listingWalker>; targets: ProviderTarget[] }>>();
  return {
    async recordNothing(_input: EventInput): Promise<Extract<RecordedDelivery, { dispatches: unknown }>> {
      return { recorded: 1, dispatches: [{ eventId: randomUUID(), subscriberId: randomUUID() }], deliveryDeadlineSeconds: 86_400 };
    },
    /**
     * `calls` GETs to `url`, one after another, each answer read in full: a provider step of the
     * attach floor (bench/floor-attach-workflow.ts) with the provider's latency and nothing else (no
     * database, no adapter, no address checks). The fake answers a path it does not know with a 404
     * after its latency, like any call.
     */
    async callFake({ url, calls }: { url: string; calls: number }): Promise<number> {
      for (let i = 0; i < calls; i++) await (await fetch(url)).arrayBuffer();
      return calls;
    },
    async recordAndDispatchNothing(_input: EventInput): Promise<Extract<RecordedDelivery, { dispatches: unknown }> & { firstAttempts: FirstAttempt[] }> {
      return { recorded: 1, dispatches: [{ eventId: randomUUID(), subscriberId: randomUUID() }], deliveryDeadlineSeconds: 86_400, firstAttempts: [{ delivered: true, statusCode: 204 }] };
    },
    async dispatchNothing(_dispatch: Dispatch): Promise<DispatchOutcome> {
      return { delivered: true, statusCode: 204 };
    },
    /** The refresh's listConnectionsToRefresh without the database: the indices of the connections to walk. */
    async listNothing(connections: number): Promise<number[]> {
      return Array.from({ length: connections }, (_, i) => i);
    },
    /**
     * One connection's listing walked by the adapters alone, heartbeating as the refresh's listing
     * does (at most every LISTING_HEARTBEAT_MS while pages come, and as it ends). The request (with the fakes' credentials) is read from a file, so no
     * credential goes through the run's history. The walk's module is imported here, not at the top:
     * the ingest benchmark's floor worker, which never lists, keeps the footprint it had.
     */
    async walkListing({ requestFile, runKey, index }: FloorListingInput): Promise<WalkCounts> {
      let entry = walkers.get(runKey);
      if (!entry) {
        entry = import('./listing-walk.ts').then(({ listingWalker }) => {
          const request = JSON.parse(readFileSync(requestFile, 'utf8')) as BareListingRequest;
          return { walker: listingWalker(request), targets: request.targets };
        });
        walkers.set(runKey, entry);
      }
      const { walker, targets } = await entry;
      const ctx = Context.current();
      let beatAt = -Infinity;
      const counts = await walker(targets[index]!, (counts) => {
        if (Date.now() - beatAt < LISTING_HEARTBEAT_MS) return;
        beatAt = Date.now();
        ctx.heartbeat(counts);
      });
      ctx.heartbeat(counts);
      return counts;
    },
  };
}

export type FloorActivities = ReturnType<typeof createFloorActivities>;
