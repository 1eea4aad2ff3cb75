import { inject } from 'vitest';
import { createDatabaseOn, type OwnDatabase } from './database-on.ts';

export type { OwnDatabase };

/**
 * A database of the test file's own on the integration tests' server, for a test that counts or
 * plans what the shared database's other users would disturb (statistics, sequential scans), or
 * that migrates down. `migrate` (default true) brings it to the latest schema.
 */
export function createOwnDatabase(prefix: string, options: { max?: number; migrate?: boolean } = {}): Promise<OwnDatabase> {
  return createDatabaseOn(inject('databaseUrl'), prefix, options);
}
