/**
 * A listing walked by the provider adapters and nothing else: no Temporal, no database. The bare
 * listing process (bench/bare-listing.ts) walks every connection with it, and the floor worker's
 * `walkListing` activity (bench/floor-activities.ts) walks one connection with it inside a Temporal
 * run shaped as a refresh, so the two floors differ only by Temporal.
 */
import { createOutbound } from '../activities/outbound.ts';
import { createProviderFactory } from '../activities/providers/index.ts';
import type { ProviderTarget } from '../activities/providers/port.ts';
import { createLimiter, type Limiter } from '../lib/limiter.ts';

export interface BareListingRequest {
  targets: ProviderTarget[];
  github: { appId: string; privateKey: string };
  callsPerConnection: number;
  callsPerWorker: number;
}

export interface WalkCounts {
  pages: number;
  repositories: number;
}

type ListPage = (cursor?: string) => Promise<{ repositories: unknown[]; nextCursor?: string; fanOut?: string[] }>;

/** The adapters of a request's connections and the worker-wide limit they share, built once and reused warm. */
export function listingWalker(request: BareListingRequest) {
  // The bench's fakes listen on loopback.
  const providers = createProviderFactory({ github: request.github, outbound: createOutbound({ allowHttpHosts: ['127.0.0.1'], allowPrivateNetworks: ['127.0.0.1'] }) });
  const limiter = createLimiter(request.callsPerWorker);
  return (target: ProviderTarget, onPage: (counts: WalkCounts) => void = () => {}) => {
    const adapter = providers(target);
    return walk((cursor) => adapter.listRepositoriesPage(cursor === undefined ? {} : { cursor }), request.callsPerConnection, limiter, onPage);
  };
}

/** Walks one listing breadth-first (first page, then each page's fan-out and next cursor, each once), `slots` calls at a time. */
function walk(list: ListPage, slots: number, limiter: Limiter, onPage: (counts: WalkCounts) => void): Promise<WalkCounts> {
  return new Promise((resolve, reject) => {
    const queue: (string | undefined)[] = [undefined];
    const seen = new Set(queue);
    let inFlight = 0;
    const counts: WalkCounts = { pages: 0, repositories: 0 };
    const pump = () => {
      while (inFlight < slots && queue.length > 0) {
        const cursor = queue.shift();
        inFlight++;
        limiter.run(() => list(cursor)).then((page) => {
          counts.pages++;
          counts.repositories += page.repositories.length;
          onPage(counts);
          for (const next of [...(page.fanOut ?? []), ...(page.nextCursor ? [page.nextCursor] : [])]) {
            if (seen.has(next)) continue;
            seen.add(next);
            queue.push(next);
          }
          inFlight--;
          pump();
        }, reject);
      }
      if (inFlight === 0 && queue.length === 0) resolve(counts);
    };
    pump();
  });
}
