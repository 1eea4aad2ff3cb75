import { loadConfig } from '../config.ts';
import { createDb } from './index.ts';
import { migrateToLatest } from './migrate.ts';

const config = loadConfig();
if (!config.database.url) {
  console.error('database.url is required to migrate (npm start migrates its embedded database itself)');
  process.exit(1);
}
// Without the API's deadlines (database.*TimeoutSeconds): a migration or `create index
// concurrently` (lib/db/concurrent-indexes.ts) may wait for locks and run for minutes.
const db = createDb(config.database.url, { max: 1 });
try {
  const applied = await migrateToLatest(db);
  console.log(applied.length ? `applied: ${applied.join(', ')}` : 'database is up to date');
} finally {
  await db.destroy();
}
