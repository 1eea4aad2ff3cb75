import type { EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import type { Logger } from '../lib/logger.ts';
import { createConnectionActivities } from './connections.ts';
import type { ProviderFactory } from './providers/port.ts';

export interface ActivityDeps {
  db: Db;
  keys: EncryptionKeys;
  providers: ProviderFactory;
  logger: Logger;
}

/** Every activity the worker registers; workflows import only this function's type. */
export function createActivities(deps: ActivityDeps) {
  return {
    ...createConnectionActivities(deps),
  };
}

export type Activities = ReturnType<typeof createActivities>;
