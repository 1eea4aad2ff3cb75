import { loadConfig } from '../config.ts';
import { startEmbeddedPostgres } from './embedded.ts';
import { createDb } from './index.ts';
import { migrateToLatest } from './migrate.ts';

const config = loadConfig();
const embedded = config.database.url ? undefined : await startEmbeddedPostgres();
const db = createDb(config.database.url ?? embedded!.url, { max: 1 });
try {
  const applied = await migrateToLatest(db);
  console.log(applied.length ? `applied: ${applied.join(', ')}` : 'database is up to date');
} finally {
  await db.destroy();
  await embedded?.stop();
}
