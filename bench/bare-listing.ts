/**
 * The floor of a refresh on this machine: the same listings walked by the same provider adapters
 * and client libraries, with the same concurrency limits, in a process of their own, but with no
 * Temporal and no database. The refresh benchmark starts it as a child process (IPC), sends it the
 * connections, and gets back how long each walk took and the CPU it used. Walks repeat in the same
 * process, so the later ones run warm, as a long-lived worker does. What a refresh takes
 * beyond this is forgelink's own cost (workflows, activities, heartbeats, upserts).
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

export interface BareListingResult {
  wallMs: number;
  cpuMs: number;
  pages: number;
  repositories: number;
}

type ListPage = (cursor?: string) => Promise<{ repositories: unknown[]; nextCursor?: string; fanOut?: string[] }>;

/** Walks one listing breadth-first (first page, then each page's fan-out and next cursor, each once), `slots` calls at a time. */
function walk(list: ListPage, slots: number, limiter: Limiter): Promise<{ pages: number; repositories: number }> {
  return new Promise((resolve, reject) => {
    const queue: (string | undefined)[] = [undefined];
    const seen = new Set(queue);
    let inFlight = 0;
    let pages = 0;
    let repositories = 0;
    const pump = () => {
      while (inFlight < slots && queue.length > 0) {
        const cursor = queue.shift();
        inFlight++;
        limiter.run(() => list(cursor)).then((page) => {
          pages++;
          repositories += page.repositories.length;
          for (const next of [...(page.fanOut ?? []), ...(page.nextCursor ? [page.nextCursor] : [])]) {
            if (seen.has(next)) continue;
            seen.add(next);
            queue.push(next);
          }
          inFlight--;
          pump();
        }, reject);
      }
      if (inFlight === 0 && queue.length === 0) resolve({ pages, repositories });
    };
    pump();
  });
}

process.on('message', async (request: BareListingRequest) => {
  // The bench's fakes listen on loopback.
  const providers = createProviderFactory({ github: request.github, outbound: createOutbound({ allowHttpHosts: ['127.0.0.1'], allowPrivateNetworks: ['127.0.0.1'] }) });
  const limiter = createLimiter(request.callsPerWorker);
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const walks = await Promise.all(
    request.targets.map((target) => {
      const adapter = providers(target);
      return walk((cursor) => adapter.listRepositoriesPage(cursor === undefined ? {} : { cursor }), request.callsPerConnection, limiter);
    }),
  );
  const cpu = process.cpuUsage(cpuBefore);
  const result: BareListingResult = {
    wallMs: Math.round(performance.now() - started),
    cpuMs: Math.round((cpu.user + cpu.system) / 1000),
    pages: walks.reduce((n, w) => n + w.pages, 0),
    repositories: walks.reduce((n, w) => n + w.repositories, 0),
  };
  process.send!(result);
});
// The benchmark closes the channel when done; exiting (not being killed) lets --cpu-prof write its profile.
process.on('disconnect', () => process.exit(0));
process.send!('ready');
