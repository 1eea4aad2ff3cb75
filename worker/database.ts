import { createDb, type Db, WORKER_CLIENT_DEADLINES } from '../lib/db/index.ts';
import type { Logger } from '../lib/logger.ts';

/**
 * The worker's pool (worker/main.ts). Without the API's deadlines (database.*TimeoutSeconds):
 * activities have timeouts of their own and are retried, and some statements (a purge, a listing's
 * writes) may take longer than a request's. Only the client's bounds (WORKER_CLIENT_DEADLINES: a
 * connect, TCP keepalive, and a read deadline past every activity's own): an answer that never
 * comes no longer holds a connection and an activity's slot for ever.
 */
export function createWorkerDb(databaseUrl: string, logger: Logger): Db {
  return createDb(databaseUrl, { logger, clientDeadlines: WORKER_CLIENT_DEADLINES });
}
