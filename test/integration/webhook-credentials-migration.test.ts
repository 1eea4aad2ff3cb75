import { randomBytes, randomUUID } from 'node:crypto';
import { Kysely, Migrator, sql, type Migration } from 'kysely';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { seal, type EncryptionKeys } from '../../lib/crypto.ts';
import { createDb } from '../../lib/db/index.ts';
import { migrations } from '../../lib/db/migrations/index.ts';
import type { Database } from '../../lib/db/schema.ts';
import { findAttachedRepositories } from '../../lib/db/repositories/events.ts';
import { addWebhookCredential, dropWebhookCredentialsBefore, ensureWebhookCredential, webhookCredentialsOf } from '../../lib/db/repositories/webhook-credentials.ts';

const MIGRATION = '2026-12-06T1105-webhook-credentials';
/** The migration before per-connection webhook credentials: the schema a running deployment has. */
const PREVIOUS = Object.keys(migrations).sort()[Object.keys(migrations).sort().indexOf(MIGRATION) - 1]!;
const keys: EncryptionKeys = { current: { id: 'test', key: randomBytes(32) } };

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * Starts from the schema before per-connection credentials, with the rows a deployment of it holds
 * (two organizations whose attachments share one GitLab hook carrying the global secret), migrates
 * to the latest schema and checks what became of them.
 */
describe('migration to per-connection webhook credentials (real PostgreSQL)', () => {
  const database = `forgelink_migration_${randomUUID().replaceAll('-', '')}`;
  let admin: Kysely<any>;
  let db: Kysely<Database>;
  let migrator: Migrator;
  const ids = { orgA: randomUUID(), orgB: randomUUID(), connA: randomUUID(), connB: randomUUID(), github: randomUUID(), repoA: randomUUID(), repoB: randomUUID(), attA: randomUUID(), attB: randomUUID() };

  beforeAll(async () => {
    admin = createDb(inject('databaseUrl'), { max: 1 }) as unknown as Kysely<any>;
    await sql`create database ${sql.id(database)}`.execute(admin);
    db = createDb(withDatabase(inject('databaseUrl'), database), { max: 2 });
    migrator = new Migrator({ db, provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations } });
    const previous = await migrator.migrateTo(PREVIOUS);
    expect(previous.error).toBeUndefined();

    // What the previous schema holds: raw inserts, since today's types describe the new schema.
    const old = db as unknown as Kysely<any>;
    await old.insertInto('organizations').values([{ id: ids.orgA, slug: `a-${ids.orgA}`, name: 'A' }, { id: ids.orgB, slug: `b-${ids.orgB}`, name: 'B' }]).execute();
    await old
      .insertInto('connections')
      .values([
        { id: ids.connA, organization_id: ids.orgA, provider: 'gitlab', base_url: 'https://gitlab.example.com', credential: seal(keys, 'glpat-a', ids.connA), status: 'active' },
        { id: ids.connB, organization_id: ids.orgB, provider: 'gitlab', base_url: 'https://gitlab.example.com', credential: seal(keys, 'glpat-b', ids.connB), status: 'active' },
        { id: ids.github, organization_id: ids.orgA, provider: 'github', base_url: 'https://api.github.com', external_key: '7', status: 'active' },
      ])
      .execute();
    await old
      .insertInto('repositories')
      .values([
        { id: ids.repoA, organization_id: ids.orgA, connection_id: ids.connA, provider: 'gitlab', external_id: '42', full_name: 'team/app' },
        { id: ids.repoB, organization_id: ids.orgB, connection_id: ids.connB, provider: 'gitlab', external_id: '42', full_name: 'team/app' },
      ])
      .execute();
    await old
      .insertInto('attachments')
      .values([
        { id: ids.attA, organization_id: ids.orgA, repository_id: ids.repoA, status: 'attached' },
        { id: ids.attB, organization_id: ids.orgB, repository_id: ids.repoB, status: 'attached' },
      ])
      .execute();
    // The one shared hook, recorded on both attachments (the second attach adopted the first's).
    await old
      .insertInto('hooks')
      .values([ids.attA, ids.attB].map((attachment_id) => ({ attachment_id, provider_hook_id: '900', events: JSON.stringify(['push_events']) })))
      .execute();

    const latest = await migrator.migrateToLatest();
    expect(latest.error).toBeUndefined();
    expect(latest.results?.map((r) => r.migrationName)).toContain(MIGRATION);
  });

  afterAll(async () => {
    await db?.destroy();
    await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    await admin?.destroy();
  });

  it('keeps every hook recorded before, marked legacy (it carries the global secret)', async () => {
    const hooks = await db.selectFrom('hooks').select(['attachment_id', 'provider_hook_id', 'credential_version']).orderBy('attachment_id').execute();
    expect(hooks).toHaveLength(2);
    for (const hook of hooks) expect(hook).toMatchObject({ provider_hook_id: '900', credential_version: null });
    expect(new Set(hooks.map((h) => h.attachment_id))).toEqual(new Set([ids.attA, ids.attB]));
    // Deliveries verified with the global secret still reach both (the receiver's and the event run's lookup).
    const legacy = await findAttachedRepositories(db, 'gitlab', ['42'], { legacyHooks: true });
    expect(legacy.map((r) => r.repositoryId).sort()).toEqual([ids.repoA, ids.repoB].sort());
    expect(await findAttachedRepositories(db, 'gitlab', ['42'], { connectionId: ids.connA })).toHaveLength(1);
  });

  it('gives a connection made before its own credential when first needed, sealed, and each connection a different one', async () => {
    expect(await db.selectFrom('webhook_credentials').selectAll().execute()).toEqual([]);
    const a = await ensureWebhookCredential(db, keys, { id: ids.connA, provider: 'gitlab' });
    const b = await ensureWebhookCredential(db, keys, { id: ids.connB, provider: 'gitlab' });
    expect(a.version).toBe(1);
    expect(Buffer.from(a.secret, 'base64url').length).toBeGreaterThanOrEqual(32);
    expect(a.secret).not.toBe(b.secret);
    // Repeating it (a retried activity, a second attach) keeps the same one.
    expect(await ensureWebhookCredential(db, keys, { id: ids.connA, provider: 'gitlab' })).toEqual(a);
    const stored = await db.selectFrom('webhook_credentials').select(['connection_id', 'secret']).execute();
    expect(stored).toHaveLength(2);
    for (const row of stored) expect(row.secret).not.toContain(row.connection_id === ids.connA ? a.secret : b.secret);
  });

  it('holds a current and a previous credential during a rotation, both accepted until the older is dropped', async () => {
    const first = await ensureWebhookCredential(db, keys, { id: ids.connA, provider: 'gitlab' });
    const second = await addWebhookCredential(db, keys, { id: ids.connA, provider: 'gitlab' });
    expect(second.version).toBe(first.version + 1);
    expect((await webhookCredentialsOf(db, keys, ids.connA)).map((c) => c.version)).toEqual([second.version, first.version]);
    await dropWebhookCredentialsBefore(db, ids.connA, second.version);
    expect(await webhookCredentialsOf(db, keys, ids.connA)).toEqual([second]);
  });

  it('makes an Azure DevOps credential a Basic user and password of the connection', async () => {
    const conn = randomUUID();
    await db.insertInto('connections').values({ id: conn, organization_id: ids.orgA, provider: 'azure-devops', base_url: 'https://dev.azure.com/x', status: 'active' }).execute();
    const credential = await ensureWebhookCredential(db, keys, { id: conn, provider: 'azure-devops' });
    expect(credential.basicAuthUser).toMatch(/^forgelink-/);
    expect(credential.secret.length).toBeGreaterThanOrEqual(43);
  });

  it('migrates down and up again', async () => {
    const down = await migrator.migrateTo(PREVIOUS);
    expect(down.error).toBeUndefined();
    expect((await db.selectFrom('hooks').select('provider_hook_id').execute()).length).toBe(2);
    expect((await migrator.migrateToLatest()).error).toBeUndefined();
  });
});
