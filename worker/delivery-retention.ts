import type { Db } from '../lib/db/index.ts';
import { deleteDeliveriesPastRetention } from '../lib/db/repositories/deliveries.ts';
import type { Logger } from '../lib/logger.ts';

const BATCH = 1000;

/**
 * Removes stored deliveries started more than `retentionDays` ago (by the database's clock; see
 * deleteDeliveriesPastRetention), in short batches; returns how many.
 */
export async function pruneDeliveries(db: Db, retentionDays: number): Promise<number> {
  let removed = 0;
  let batch: number;
  do {
    batch = await deleteDeliveriesPastRetention(db, retentionDays, BATCH);
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
