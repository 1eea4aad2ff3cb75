import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { createLogger } from '../../lib/logger.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

interface Listed {
  id: string;
  name: string;
  createdAt: string;
  lastUsedAt?: string;
  expiresAt?: string;
}

describe('organization tokens: names, expiry, last use, list and revoke', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  async function issue(slug: string, body?: Record<string, unknown>) {
    const res = await h.request('POST', `/api/v1/orgs/${slug}/tokens`, { token: h.adminToken, body });
    expect(res.status, await res.clone().text()).toBe(201);
    return (await res.json()) as { id: string; token: string; name: string; expiresAt?: string };
  }

  async function list(slug: string, token: string): Promise<{ status: number; text: string; items: Listed[] }> {
    const res = await h.request('GET', `/api/v1/orgs/${slug}/tokens`, { token });
    const text = await res.text();
    return { status: res.status, text, items: res.status === 200 ? (JSON.parse(text) as { items: Listed[] }).items : [] };
  }

  const connections = (slug: string, token: string) => h.request('GET', `/api/v1/orgs/${slug}/connections`, { token });

  it('issues named tokens with an optional expiry and lists them, with their last use, never the token', async () => {
    const { org, token: first } = await createOrgWithToken(h);
    const ci = await issue(org.slug, { name: 'ci', expiresInDays: 30 });
    expect(ci).toEqual({ id: expect.any(String), token: expect.stringMatching(/^fl_/), name: 'ci', expiresAt: expect.any(String) });
    const days = (Date.parse(ci.expiresAt!) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(29.9);
    expect(days).toBeLessThanOrEqual(30);

    expect((await connections(org.slug, ci.token)).status).toBe(200);
    const listed = await list(org.slug, first);
    expect(listed.status).toBe(200);
    expect(listed.items).toHaveLength(2);
    const [unnamed, named] = listed.items;
    expect(unnamed).toEqual({ id: expect.any(String), name: `token-${unnamed!.id.slice(0, 8)}`, createdAt: expect.any(String), lastUsedAt: expect.any(String) });
    expect(named).toEqual({ id: ci.id, name: 'ci', createdAt: expect.any(String), lastUsedAt: expect.any(String), expiresAt: ci.expiresAt });
    // Neither the tokens nor their hashes are in the list.
    const stored = await h.db.selectFrom('api_tokens').select('token_hash').where('organization_id', '=', org.id).execute();
    for (const secret of [first, ci.token, ...stored.map((s) => s.token_hash)]) expect(listed.text).not.toContain(secret);

    // Another organization sees none of them; the admin sees them all.
    const other = await createOrgWithToken(h);
    expect((await list(org.slug, other.token)).status).toBe(404);
    expect((await list(org.slug, h.adminToken)).items.map((t) => t.id)).toEqual(listed.items.map((t) => t.id));
    // Issuing stays with the admin; nonsense is a 400.
    expect((await h.request('POST', `/api/v1/orgs/${org.slug}/tokens`, { token: first, body: { name: 'mine' } })).status).toBe(403);
    expect((await h.request('POST', `/api/v1/orgs/${org.slug}/tokens`, { token: h.adminToken, body: { expiresInDays: 0 } })).status).toBe(400);
  });

  it('records the last use at most once a minute', async () => {
    const { org, token } = await createOrgWithToken(h);
    const lastUsed = async () => (await h.db.selectFrom('api_tokens').select('last_used_at').where('organization_id', '=', org.id).executeTakeFirstOrThrow()).last_used_at;
    expect(await lastUsed()).toBeNull();
    await connections(org.slug, token);
    const first = await lastUsed();
    expect(first).toBeInstanceOf(Date);
    await connections(org.slug, token);
    expect(await lastUsed()).toEqual(first);
    // A minute later the next request records it again.
    const minuteAgo = new Date(first!.getTime() - 61_000);
    await h.db.updateTable('api_tokens').set({ last_used_at: minuteAgo }).where('organization_id', '=', org.id).execute();
    await connections(org.slug, token);
    expect((await lastUsed())!.getTime()).toBeGreaterThan(minuteAgo.getTime());
  });

  it('refuses a revoked token at once (401); the organization may revoke its own, not another organization', async () => {
    const { org, token } = await createOrgWithToken(h);
    const doomed = await issue(org.slug, { name: 'doomed' });
    expect((await connections(org.slug, doomed.token)).status).toBe(200);
    const other = await createOrgWithToken(h);
    expect((await h.request('DELETE', `/api/v1/orgs/${org.slug}/tokens/${doomed.id}`, { token: other.token })).status).toBe(404);
    expect((await h.request('DELETE', `/api/v1/orgs/${other.org.slug}/tokens/${doomed.id}`, { token: other.token })).status).toBe(404);

    const revoked = await h.request('DELETE', `/api/v1/orgs/${org.slug}/tokens/${doomed.id}`, { token });
    expect(revoked.status).toBe(204);
    const refused = await connections(org.slug, doomed.token);
    expect(refused.status).toBe(401);
    expect(refused.headers.get('content-type')).toBe('application/problem+json');
    expect((await list(org.slug, token)).items.map((t) => t.name)).not.toContain('doomed');
    expect((await h.request('DELETE', `/api/v1/orgs/${org.slug}/tokens/${doomed.id}`, { token })).status).toBe(404);
    // The other token is untouched.
    expect((await connections(org.slug, token)).status).toBe(200);
  });

  it('refuses an expired token (401)', async () => {
    const { org } = await createOrgWithToken(h);
    const shortLived = await issue(org.slug, { name: 'short', expiresInDays: 1 });
    expect((await connections(org.slug, shortLived.token)).status).toBe(200);
    // A day passes.
    await h.db.updateTable('api_tokens').set({ expires_at: new Date(Date.now() - 1000) }).where('id', '=', shortLived.id).execute();
    const refused = await connections(org.slug, shortLived.token);
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as { detail: string }).detail).toMatch(/expired/);
  });

  it('answers 503, not 401, when the database cannot check a token', async () => {
    // A database of its own on the real server, which then stops accepting connections.
    const database = `forgelink_tokens_${randomUUID().replaceAll('-', '')}`;
    await sql`create database ${sql.id(database)}`.execute(h.db);
    const url = new URL(inject('databaseUrl'));
    url.pathname = `/${database}`;
    const db = createDb(url.toString(), { max: 2 });
    try {
      await migrateToLatest(db);
      const logs: string[] = [];
      const logger = createLogger('test', 'info', { write: (line: string) => logs.push(line) } as never);
      const app = h.appWith({ db, logger });
      const call = (method: string, path: string, token: string, body?: unknown) =>
        app.request(path, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
      expect((await call('POST', '/api/v1/orgs', h.adminToken, { slug: 'down', name: 'Down' })).status).toBe(201);
      const { token } = (await (await call('POST', '/api/v1/orgs/down/tokens', h.adminToken, {})).json()) as { token: string };
      expect((await call('GET', '/api/v1/orgs/down/connections', token)).status).toBe(200);

      await sql`alter database ${sql.id(database)} allow_connections false`.execute(h.db);
      await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${database}`.execute(h.db);
      const res = await call('GET', '/api/v1/orgs/down/connections', token);
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(await res.json()).toMatchObject({ status: 503, title: 'Service Unavailable' });
      expect(logs.join('')).toContain('could not check an organization token');
      expect(logs.join('')).not.toContain(token);
    } finally {
      await db.destroy().catch(() => {});
      await sql`drop database if exists ${sql.id(database)} with (force)`.execute(h.db);
    }
  });
});
