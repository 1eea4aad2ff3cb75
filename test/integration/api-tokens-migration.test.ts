import { randomUUID } from 'node:crypto';
import { Kysely, Migrator, sql, type Migration } from 'kysely';
import { afterAll, expect, inject, it } from 'vitest';
import { generateApiToken, hashApiToken } from '../../lib/crypto.ts';
import { createDb } from '../../lib/db/index.ts';
import { migrations } from '../../lib/db/migrations/index.ts';
import { listApiTokens, useApiToken } from '../../lib/db/repositories/api-tokens.ts';

const MIGRATION = '2026-12-06T1058-api-token-life-cycle';
const names = Object.keys(migrations).sort();
/** The schema a deployment from before token names, expiry and last use has. */
const PREVIOUS = names[names.indexOf(MIGRATION) - 1]!;

const database = `forgelink_tokens_migration_${randomUUID().replaceAll('-', '')}`;
const admin = createDb(inject('databaseUrl'), { max: 1 }) as unknown as Kysely<any>;
afterAll(async () => {
  await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
  await admin.destroy();
});

it('keeps tokens issued before the token life cycle working, named after their id, never expiring', async () => {
  await sql`create database ${sql.id(database)}`.execute(admin);
  const url = new URL(inject('databaseUrl'));
  url.pathname = `/${database}`;
  const db = createDb(url.toString(), { max: 2 });
  try {
    const migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
    expect((await migrator.migrateTo(PREVIOUS)).error).toBeUndefined();
    const old = db as unknown as Kysely<any>;
    const organizationId = randomUUID();
    const tokenId = randomUUID();
    const token = generateApiToken();
    await old.insertInto('organizations').values({ id: organizationId, slug: 'before', name: 'Before' }).execute();
    await old.insertInto('api_tokens').values({ id: tokenId, organization_id: organizationId, token_hash: hashApiToken(token) }).execute();

    expect((await migrator.migrateToLatest()).error).toBeUndefined();
    expect(await useApiToken(db, hashApiToken(token))).toEqual({ organizationId });
    expect(await listApiTokens(db, organizationId)).toEqual([
      { id: tokenId, name: `token-${tokenId.slice(0, 8)}`, createdAt: expect.any(Date), lastUsedAt: expect.any(Date), expiresAt: null },
    ]);
  } finally {
    await db.destroy();
  }
});
