import type { Db } from '../lib/db/index.ts';
import { deleteDeliveriesReceivedBefore } from '../lib/db/repositories/deliveries.ts';
import type { Logger } from '../lib/logger.ts';

const DAY_MS = 24 * 60 * 60 * 1000;
const BATCH = 1000;

/** Removes stored deliveries received more than `retentionDays` before `now`, in short batches; returns how many. */
export async function pruneDeliveries(db: Db, retentionDays: number, now = new Date()): Promise<number> {
  const cutoff = new Date(now.getTime() - retentionDays * DAY_MS);
  let removed = 0;
  let batch: number;
  do {
    batch = await deleteDeliveriesReceivedBefore(db, cutoff, BATCH);
    removed += batch;
  } while (batch === BATCH);
  return removed;
}

/**
 * The intake table's retention job: prunes at start, then every `intervalMs`. Each worker runs it;
 * deleting what another worker already deleted is harmless.
 */
export function startDeliveryRetention(deps: { db: Db; logger: Logger }, settings: { retentionDays: number; intervalMs?: number }): { stop(): void } {
  const run = () =>
    pruneDeliveries(deps.db, settings.retentionDays).then(
      (removed) => removed > 0 && deps.logger.info({ removed, retentionDays: settings.retentionDays }, 'stored webhook deliveries past their retention removed'),
      (error: unknown) => deps.logger.warn({ err: error }, 'could not remove stored webhook deliveries past their retention; trying again later'),
    );
  void run();
  const timer = setInterval(run, settings.intervalMs ?? 60 * 60 * 1000);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
