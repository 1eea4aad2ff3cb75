import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { createDb } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { readDevServerSettings, startDevServer } from '../../lib/temporal/dev-server.ts';
import { bundleWorkflows } from '../../worker/create-worker.ts';
import { testPostgres } from './postgres.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
    temporalAddress: string;
    workflowBundlePath: string;
  }
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * One Temporal dev server (random port, in memory) and one fresh database per test run (on the
 * server testPostgres finds or starts); every test file then uses its own task queue. The workflow
 * bundle is built once here instead of per worker.
 */
export default async function setup(project: TestProject) {
  const server = await testPostgres((l) => console.log(l));
  console.log(`integration tests: PostgreSQL from ${server.origin}`);
  const ADMIN_URL = server.adminUrl;
  const admin = createDb(ADMIN_URL, { max: 1 });
  try {
    await sql`select 1`.execute(admin);
  } catch (error) {
    await admin.destroy();
    await server.stop();
    throw new Error(`the integration tests need PostgreSQL at ${ADMIN_URL} (TEST_DATABASE_URL; unset, an embedded one is started when nothing answers on 127.0.0.1:5432): ${(error as Error).message}`);
  }
  const database = `forgelink_test_${process.pid}_${Date.now()}`;
  await sql`create database ${sql.id(database)}`.execute(admin);
  const databaseUrl = withDatabase(ADMIN_URL, database);
  const db = createDb(databaseUrl, { max: 1 });
  await migrateToLatest(db);
  await db.destroy();

  const settings = readDevServerSettings();
  const temporal = await startDevServer({ ...settings, port: undefined, uiPort: undefined, dbFilename: undefined }, (l) => console.log(l));

  const { code } = await bundleWorkflows();
  const bundleDir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-bundle-'));
  const workflowBundlePath = path.join(bundleDir, 'workflows.js');
  writeFileSync(workflowBundlePath, code);

  project.provide('databaseUrl', databaseUrl);
  project.provide('temporalAddress', temporal.address);
  project.provide('workflowBundlePath', workflowBundlePath);

  return async () => {
    await temporal.stop();
    await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    await admin.destroy();
    await server.stop();
    rmSync(bundleDir, { recursive: true, force: true });
  };
}
