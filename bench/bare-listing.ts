/**
 * The floor of a refresh on this machine: the same listings walked by the same provider adapters
 * and client libraries, with the same concurrency limits, in a process of their own, but with no
 * Temporal and no database. The refresh benchmark starts it as a child process (IPC), sends it the
 * connections, and gets back how long each walk took and the CPU it used. Walks repeat in the same
 * process, so the later ones run warm, as a long-lived worker does. What a refresh takes
 * beyond this is forgelink's own cost (workflows, activities, heartbeats, upserts).
 */
import { type BareListingRequest, listingWalker } from './listing-walk.ts';

export type { BareListingRequest } from './listing-walk.ts';

export interface BareListingResult {
  wallMs: number;
  cpuMs: number;
  pages: number;
  repositories: number;
}

process.on('message', async (request: BareListingRequest) => {
  const walkListing = listingWalker(request);
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const walks = await Promise.all(request.targets.map((target) => walkListing(target)));
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
