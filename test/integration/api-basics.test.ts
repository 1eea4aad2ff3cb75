import { randomUUID } from 'node:crypto';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { Client, Connection } from '@temporalio/client';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb } from '../../lib/db/index.ts';
import { startHarness, type Harness } from '../support/harness.ts';

describe('organizations, tokens, health and OpenAPI', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('creates an organization once; a taken slug is a 409', async () => {
    const slug = `acme-${Date.now().toString(36)}`;
    const created = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'Acme' } });
    expect(created.status).toBe(201);
    const org = (await created.json()) as { id: string; slug: string; name: string };
    expect(org).toMatchObject({ slug, name: 'Acme' });
    const again = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'Other' } });
    expect(again.status).toBe(409);
    expect(((await again.json()) as { detail: string }).detail).toContain(slug);
    const invalid = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug: 'Not A Slug', name: '' } });
    expect(invalid.status).toBe(400);
    const problem = (await invalid.json()) as { detail: string };
    expect(problem.detail).toMatch(/slug/);
    expect(problem.detail).toMatch(/name/);
  });

  it("refuses a slug shaped like a UUID: it could be another organization's id, which paths accept too", async () => {
    const existing = (await (await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug: `first-${Date.now().toString(36)}`, name: 'First' } })).json()) as { id: string };
    for (const slug of [existing.id, '00000000-0000-4000-8000-000000000000']) {
      const res = await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'Impostor' } });
      expect(res.status, slug).toBe(400);
      expect(((await res.json()) as { detail: string }).detail).toMatch(/UUID/);
    }
    // A slug made before the rule, equal to another organization's id: the id names that organization.
    await h.db.insertInto('organizations').values({ slug: existing.id, name: 'Legacy impostor' }).execute();
    const named = await h.request('GET', `/api/v1/orgs/${existing.id}/connections`, { token: h.adminToken });
    expect(named.status).toBe(200);
    const tokens = await h.request('POST', `/api/v1/orgs/${existing.id}/tokens`, { token: h.adminToken });
    const issued = (await tokens.json()) as { id: string };
    const owner = await h.db.selectFrom('api_tokens').select('organization_id').where('id', '=', issued.id).executeTakeFirstOrThrow();
    expect(owner.organization_id).toBe(existing.id);
  });

  it('issues organization tokens shown once and stored only hashed; the org is reachable by slug or id', async () => {
    const slug = `tok-${Date.now().toString(36)}`;
    const org = (await (await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'T' } })).json()) as { id: string };
    const issued = await h.request('POST', `/api/v1/orgs/${org.id}/tokens`, { token: h.adminToken });
    expect(issued.status).toBe(201);
    const { token } = (await issued.json()) as { token: string };
    const stored = await h.db.selectFrom('api_tokens').select('token_hash').where('organization_id', '=', org.id).execute();
    expect(stored).toHaveLength(1);
    expect(stored[0]!.token_hash).not.toContain(token);
    expect((await h.request('GET', `/api/v1/orgs/${slug}/connections`, { token })).status).toBe(200);
    expect((await h.request('GET', `/api/v1/orgs/${org.id}/connections`, { token })).status).toBe(200);
    // Organization tokens cannot issue tokens; unknown organizations are 404 for the admin.
    expect((await h.request('POST', `/api/v1/orgs/${slug}/tokens`, { token })).status).toBe(403);
    expect((await h.request('POST', '/api/v1/orgs/no-such-org/tokens', { token: h.adminToken })).status).toBe(404);
  });

  it('answers liveness and readiness (database and Temporal reachable)', async () => {
    expect((await h.request('GET', '/healthz')).status).toBe(200);
    const ready = await h.request('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready', checks: { database: 'ok', temporal: 'ok' } });
  });

  it('answers readiness without the failing dependency\'s error text (logged instead)', async () => {
    const db = createDb('postgres://nobody@127.0.0.1:1/forgelink', { max: 1 });
    // A connection that is closed fails every call at once.
    const connection = await Connection.connect({ address: inject('temporalAddress') });
    await connection.close();
    const temporal = new Client({ connection });
    try {
      const res = await h.appWith({ db, temporal }).request('/readyz');
      expect(res.status).toBe(503);
      const text = await res.text();
      expect(JSON.parse(text)).toEqual({ status: 'not ready', checks: { database: 'unavailable', temporal: 'unavailable' } });
      expect(h.logs.join('\n')).toMatch(/readiness check failed.*ECONNREFUSED|ECONNREFUSED.*readiness check failed/);
      expect(text).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|nobody/);
      // The admin token shows why, and that the intake backlog could not be read.
      const admin = await h.appWith({ db, temporal }).request('/readyz', { headers: { authorization: `Bearer ${h.adminToken}` } });
      expect(admin.status).toBe(503);
      const { details } = (await admin.json()) as { details: { intake: unknown; errors: Record<string, string> } };
      expect(details.intake).toBe('unavailable');
      expect(details.errors.database).toMatch(/ECONNREFUSED/);
      expect(details.errors.temporal).toBeTruthy();
    } finally {
      await db.destroy();
    }
  });

  it('answers 503, not 500, when the database cannot be reached behind a request (a failing dependency, not a bug)', async () => {
    const unreachable = createDb('postgres://postgres@127.0.0.1:1/none', { max: 1 });
    try {
      const res = await h.appWith({ db: unreachable }).request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } });
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(((await res.json()) as { detail: string }).detail).toBe('the database is unavailable; try again');
    } finally {
      await unreachable.destroy();
    }
  });

  it('answers 503, not 500, when PostgreSQL refuses the connection (53300 too_many_connections)', async () => {
    // A role allowed no connection: PostgreSQL answers every connection attempt with 53300.
    const role = `no_conn_${randomUUID().replaceAll('-', '')}`;
    await sql`create role ${sql.id(role)} login connection limit 0`.execute(h.db);
    const url = new URL(inject('databaseUrl'));
    url.username = role;
    const refused = createDb(url.toString(), { max: 1 });
    try {
      const res = await h.appWith({ db: refused }).request('/api/v1/orgs/acme/connections', { headers: { authorization: `Bearer ${h.adminToken}` } });
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(((await res.json()) as { detail: string }).detail).toBe('the database is unavailable; try again');
    } finally {
      await refused.destroy();
      await sql`drop role ${sql.id(role)}`.execute(h.db);
    }
  });

  it('answers 503, not 500, when Temporal stops answering behind a request', async () => {
    // The API's client reaches Temporal through a TCP relay the test then shuts: Temporal is gone for it.
    const [host, port] = inject('temporalAddress').split(':') as [string, string];
    const sockets = new Set<Socket>();
    const relay = createServer((client) => {
      const upstream = createConnection({ host, port: Number(port) });
      for (const s of [client, upstream]) (sockets.add(s), s.on('error', () => s.destroy()), s.on('close', () => sockets.delete(s)));
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const connection = await Connection.connect({ address: `127.0.0.1:${(relay.address() as AddressInfo).port}` });
    const app = h.appWith({ temporal: new Client({ connection, namespace: 'default' }) });
    const admin = { headers: { authorization: `Bearer ${h.adminToken}` } };
    const path = '/api/v1/workflows/connect:00000000-0000-0000-0000-000000000000:x';
    try {
      expect((await app.request(path, admin)).status).toBe(404);
      await new Promise<void>((resolve) => (relay.close(() => resolve()), sockets.forEach((s) => s.destroy())));
      const res = await app.request(path, admin);
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
      expect(((await res.json()) as { detail: string }).detail).toBe('the workflow engine (Temporal) is unavailable; try again');
    } finally {
      relay.close();
      await connection.close();
    }
  });

  it('serves an OpenAPI document of the API', async () => {
    const res = await h.request('GET', '/openapi.json');
    expect(res.status).toBe(200);
    const doc = (await res.json()) as { openapi: string; paths: Record<string, unknown> };
    expect(doc.openapi).toMatch(/^3\./);
    for (const path of ['/api/v1/orgs', '/api/v1/orgs/{org}/tokens', '/api/v1/orgs/{org}/tokens/{id}', '/api/github/setup', '/api/v1/orgs/{org}/connections', '/api/v1/orgs/{org}/connections/{id}', '/api/v1/orgs/{org}/connections/{id}/webhook-credential/rotate', '/api/v1/workflows/{workflowId}']) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
  });

  it('answers 400, not a database error, to a NUL character (%00) in a path or query parameter', async () => {
    const slug = `nul-${Date.now().toString(36)}`;
    const org = (await (await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'N' } })).json()) as { id: string };
    const { token } = (await (await h.request('POST', `/api/v1/orgs/${org.id}/tokens`, { token: h.adminToken })).json()) as { token: string };
    for (const path of ['/api/v1/orgs/%00/repositories', `/api/v1/orgs/${slug}/repositories?q=a%00b`, `/api/v1/orgs/${slug}/events?repository=x%00`, '/api/v1/workflows/event:github:%00']) {
      const res = await h.request('GET', path, { token });
      expect(res.status, path).toBe(400);
      expect(res.headers.get('content-type')).toBe('application/problem+json');
    }
  });

  it('answers 400 naming the field, not a database error, to a JSON string or a cursor PostgreSQL cannot take; nothing is written', async () => {
    const slug = `text-${Date.now().toString(36)}`;
    const org = (await (await h.request('POST', '/api/v1/orgs', { token: h.adminToken, body: { slug, name: 'T' } })).json()) as { id: string };
    const { token } = (await (await h.request('POST', `/api/v1/orgs/${org.id}/tokens`, { token: h.adminToken })).json()) as { token: string };
    const cursor = (key: string[]) => Buffer.from(JSON.stringify(key)).toString('base64url');
    const id = '00000000-0000-4000-8000-000000000000';
    const cases: { label: string; method: string; path: string; token: string; body?: string; field: string }[] = [
      { label: 'organization name with NUL', method: 'POST', path: '/api/v1/orgs', token: h.adminToken, body: JSON.stringify({ slug: `${slug}-nul`, name: 'a\u0000b' }), field: 'name' },
      { label: 'token name with NUL', method: 'POST', path: `/api/v1/orgs/${slug}/tokens`, token: h.adminToken, body: JSON.stringify({ name: 'a\u0000b' }), field: 'name' },
      // The organization's own token may send these.
      { label: 'subscriber ref glob with NUL', method: 'POST', path: `/api/v1/orgs/${slug}/subscribers`, token, body: JSON.stringify({ url: 'https://example.com/hook', refGlobs: ['main\u0000'] }), field: 'refGlobs.0' },
      { label: 'subscriber ref glob with a lone surrogate (jsonb)', method: 'POST', path: `/api/v1/orgs/${slug}/subscribers`, token, body: '{"url":"https://example.com/hook","refGlobs":["x\\ud800"]}', field: 'refGlobs.0' },
      { label: 'events cursor with a year PostgreSQL has not', method: 'GET', path: `/api/v1/orgs/${slug}/events?cursor=${cursor(['-010000-01-01T00:00:00.000Z', id])}`, token, field: 'cursor' },
      { label: 'repositories cursor with NUL', method: 'GET', path: `/api/v1/orgs/${slug}/repositories?cursor=${cursor(['\u0000', 'x', id])}`, token, field: 'cursor' },
    ];
    for (const c of cases) {
      const res = await h.request(c.method, c.path, { token: c.token, ...(c.body === undefined ? {} : { body: c.body }) });
      expect(res.status, c.label).toBe(400);
      expect(res.headers.get('content-type'), c.label).toBe('application/problem+json');
      expect(((await res.json()) as { detail: string }).detail, c.label).toMatch(new RegExp(`^${c.field.replace('.', '\\.')}: `));
    }
    expect((await h.request('GET', `/api/v1/orgs/${slug}-nul/connections`, { token: h.adminToken })).status).toBe(404);
    expect(((await (await h.request('GET', `/api/v1/orgs/${slug}/subscribers`, { token })).json()) as { items: unknown[] }).items).toEqual([]);
    expect(((await (await h.request('GET', `/api/v1/orgs/${slug}/tokens`, { token })).json()) as { items: unknown[] }).items).toHaveLength(1);
    // What the API hands out still pages.
    expect((await h.request('GET', `/api/v1/orgs/${slug}/events?cursor=${cursor(['2026-01-01T00:00:00.000Z', id])}`, { token })).status).toBe(200);
  });

  it("titles Hono's own 4xx answers by their status: a body that is not JSON is 415 Unsupported Media Type", async () => {
    const create = (headers: Record<string, string>, body: string) => h.request('POST', '/api/v1/orgs', { token: h.adminToken, headers, body });
    const unsupported = await create({ 'content-type': 'text/plain' }, JSON.stringify({ slug: 'typed', name: 'T' }));
    expect(unsupported.status).toBe(415);
    expect(unsupported.headers.get('content-type')).toBe('application/problem+json');
    expect(await unsupported.json()).toMatchObject({ title: 'Unsupported Media Type', status: 415, detail: 'the body must be application/json, not text/plain' });
    const malformed = await create({ 'content-type': 'application/json' }, '{nope');
    expect(await malformed.json()).toMatchObject({ title: 'Bad Request', status: 400 });
  });

  it('answers unknown routes and unknown runs with problem+json 404', async () => {
    const res = await h.request('GET', '/api/v1/nothing-here', { token: h.adminToken });
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect((await h.request('GET', '/api/v1/workflows/connect:00000000-0000-0000-0000-000000000000:x', { token: h.adminToken })).status).toBe(404);
  });
});
