import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { isRunning } from '../../lib/db/embedded.ts';
import { freeLoopbackPort } from '../../lib/net.ts';
import { readDevServerSettings } from '../../lib/temporal/dev-server.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';

/**
 * `npm start` as a newcomer meets it, black-box: the dev stack (scripts/dev-stack.ts) in a process
 * of its own with its embedded PostgreSQL and Temporal dev server, driven over HTTP with concurrent
 * attaches, token checks and signed deliveries (what failed on the former single-session PGlite
 * with 401s, 500s and lost rows); then killed with SIGKILL and started again, which must stop the
 * servers the dead run left behind and keep the data; then stopped with SIGINT, leaving nothing.
 * Its state directory and dev-server settings are its own, so it runs beside a developer's stack.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const PROJECTS = 8;
const PUSHES_PER_PROJECT = 6;

interface Stack {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
  temporalAddress: string;
}

interface StackRecord {
  pid: number;
  servers: { name: string; pid: number }[];
}


describe('npm start: the embedded stack under concurrent load, a crash and a restart', () => {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-dev-stack-'));
  // Reachable by the user PostgreSQL runs as under root, as .forgelink in most checkouts is, so pgdata
  // stays inside (from a private directory it would live in the system's temporary directory,
  // which this test would leave behind); the binaries may still be out of its reach (a CI clone in mktemp -d).
  chmodSync(stateDir, 0o755);
  const settingsFile = path.join(stateDir, 'temporal-dev.yml');
  let port: number;
  let api: string;
  let gitlab: FakeGitlab;
  const stacks: Stack[] = [];

  function startStack(): Promise<Stack> {
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), FORGELINK_STATE_DIR: stateDir, FORGELINK_TEMPORAL_DEV_FILE: settingsFile };
    for (const key of ['FORGELINK_CONFIG', 'FORGELINK_DATABASE_URL', 'DATABASE_URL', 'FORGELINK_TEMPORAL_ADDRESS']) delete env[key];
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/dev-stack.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return new Promise((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString('utf8');
        const address = /Temporal\s+(127\.0\.0\.1:\d+) namespace/.exec(output)?.[1];
        if (output.includes('forgelink is up') && address) {
          const stack = { child, exited, output: () => output, temporalAddress: address };
          stacks.push(stack);
          resolve(stack);
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      void exited.then((code) => reject(new Error(`the dev stack exited (${code}) before it was up:\n${output}`)));
    });
  }

  const stackRecord = (): StackRecord => JSON.parse(readFileSync(path.join(stateDir, 'stack.json'), 'utf8')) as StackRecord;
  const adminToken = () => (JSON.parse(readFileSync(path.join(stateDir, 'dev-secrets.json'), 'utf8')) as { adminToken: string }).adminToken;

  async function call(method: string, route: string, token: string, body?: unknown): Promise<Response> {
    return fetch(`${api}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  beforeAll(async () => {
    // The project's dev-server settings, on ports of the server's choosing, in memory.
    const { port: _port, uiPort: _uiPort, dbFilename: _db, ...settings } = readDevServerSettings(path.join(ROOT, 'temporal-dev.yml'));
    writeFileSync(settingsFile, toYaml(settings));
    port = await freeLoopbackPort();
    api = `http://127.0.0.1:${port}`;
    gitlab = await startFakeGitlab();
  });

  afterAll(async () => {
    for (const stack of stacks) {
      if (stack.child.exitCode === null) stack.child.kill('SIGINT');
      await stack.exited;
    }
    await gitlab?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('serves concurrent attaches, token checks and deliveries without a 5xx, survives SIGKILL, and stops cleanly', { timeout: 300_000 }, async () => {
    let stack = await startStack();
    let temporal = new Client({ connection: await Connection.connect({ address: stack.temporalAddress }) });
    const resultOf = (workflowId: string) => temporal.workflow.getHandle(workflowId).result();
    const runOnceStarted = async (workflowId: string) => {
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          return await resultOf(workflowId);
        } catch (error) {
          if (!(error instanceof WorkflowNotFoundError) || Date.now() > deadline) throw error;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
    };

    const slug = `acme-${randomUUID().slice(0, 8)}`;
    expect((await call('POST', '/api/v1/orgs', adminToken(), { slug, name: 'Acme' })).status).toBe(201);
    const { token } = (await (await call('POST', `/api/v1/orgs/${slug}/tokens`, adminToken())).json()) as { token: string };
    const gitlabToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: gitlabToken, username: 'newcomer', scopes: ['api', 'read_user', 'read_repository'] });
    const projects = Array.from({ length: PROJECTS }, (_, i) => gitlab.addProject({ pathWithNamespace: `acme/app-${i}` }));

    const connected = (await (await call('POST', `/api/v1/orgs/${slug}/connections`, token, { provider: 'gitlab', baseUrl: gitlab.url, token: gitlabToken })).json()) as { workflowId: string };
    expect(await resultOf(connected.workflowId)).toMatchObject({ status: 'active' });
    const refresh = (await (await call('POST', `/api/v1/orgs/${slug}/repositories/refresh`, token)).json()) as { workflowId: string };
    await resultOf(refresh.workflowId);
    const { items } = (await (await call('GET', `/api/v1/orgs/${slug}/repositories?limit=100`, token)).json()) as { items: { id: string; externalId: string }[] };
    expect(items).toHaveLength(PROJECTS);

    // Every attach at once, each beside reads that check the organization's token.
    const statuses: number[] = [];
    const answered = async (response: Promise<Response>) => {
      const res = await response;
      statuses.push(res.status);
      return res;
    };
    const attaches = await Promise.all(
      items.map(async (repository) => {
        const [attach] = await Promise.all([
          answered(call('PUT', `/api/v1/orgs/${slug}/repositories/${repository.id}/attachment`, token)),
          answered(call('GET', `/api/v1/orgs/${slug}/connections`, token)),
          answered(call('GET', `/api/v1/orgs/${slug}/repositories?limit=5`, token)),
        ]);
        return ((await attach.json()) as { workflowId: string }).workflowId;
      }),
    );
    expect(statuses.filter((s) => s !== 200 && s !== 202)).toEqual([]);
    for (const result of await Promise.all(attaches.map(resultOf))) expect(result).toMatchObject({ status: 'attached' });

    // Every push of every project at once, each to the hook's URL with the hook's own credential.
    const payload = fixture(PUSH_FIXTURES.gitlab);
    const deliveries = projects.flatMap((project) => {
      const [hook] = gitlab.hooks(project.id);
      expect(hook?.token).toBeTruthy();
      return Array.from({ length: PUSHES_PER_PROJECT }, () => {
        // Each push its own body: the same body again for a connection is a replay, recorded once.
        const push = { ...withRepository('gitlab', payload, { externalId: String(project.id), fullName: project.pathWithNamespace, instanceUrl: gitlab.url }), test_push: randomUUID() };
        const sent = delivery('gitlab', push, { deliveryId: randomUUID(), secret: hook!.token });
        return { ...sent, url: hook!.url };
      });
    });
    const acknowledged = await Promise.all(deliveries.map((d) => fetch(d.url, { method: 'POST', headers: d.headers, body: d.body })));
    expect(acknowledged.map((r) => r.status)).toEqual(deliveries.map(() => 202));
    // 202 means stored: the stack's intake relay starts each run a moment later. Outside the
    // process there is no signal to wait on but the run itself, so wait for it to exist.
    await Promise.all(acknowledged.map(async (r) => runOnceStarted(((await r.json()) as { workflowId: string }).workflowId)));
    const events = (await (await call('GET', `/api/v1/orgs/${slug}/events?limit=200`, token)).json()) as { items: { deliveryId: string }[] };
    expect(new Set(events.items.map((e) => e.deliveryId))).toEqual(new Set(deliveries.map((d) => d.deliveryId)));

    // A crash: the dead stack's servers keep running until the next start stops them.
    const crashed = stackRecord();
    expect(crashed.servers.map((s) => s.name).sort()).toEqual(['postgres', 'temporal']);
    await temporal.connection.close();
    stack.child.kill('SIGKILL');
    await stack.exited;
    for (const server of crashed.servers) expect(isRunning(server.pid), `${server.name} left running`).toBe(true);

    stack = await startStack();
    for (const server of crashed.servers) {
      expect(stack.output()).toContain(`stopping the ${server.name} server (pid ${server.pid})`);
      expect(isRunning(server.pid), `${server.name} of the crashed run`).toBe(false);
    }
    // The embedded database kept what the first run wrote.
    const connections = (await (await call('GET', `/api/v1/orgs/${slug}/connections`, token)).json()) as { items: { status: string }[] };
    expect(connections.items.map((c) => c.status)).toEqual(['active']);

    // Ctrl-C: everything the stack started stops with it.
    const running = stackRecord();
    stack.child.kill('SIGINT');
    expect(await stack.exited).toBe(0);
    for (const server of running.servers) expect(isRunning(server.pid), `${server.name} after Ctrl-C`).toBe(false);
    expect(existsSync(path.join(stateDir, 'stack.json'))).toBe(false);
  });
});
