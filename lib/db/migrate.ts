import { type Kysely, type Migration, Migrator } from 'kysely';
import { ensureConcurrentIndexes } from './concurrent-indexes.ts';
import { migrations } from './migrations/index.ts';

/**
 * Runs every pending migration, then builds the indexes kept out of them (lib/db/concurrent-indexes.ts);
 * throws with the failing migration's name. Returns the migrations applied.
 */
export async function migrateToLatest(db: Kysely<any>): Promise<string[]> {
  const migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error) {
    throw new Error(`migration ${failed?.migrationName ?? '(unknown)'} failed: ${(error as Error).message ?? String(error)}`);
  }
  await ensureConcurrentIndexes(db);
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}
