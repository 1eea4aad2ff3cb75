import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { send } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness, writeHarnessConfig } from '../support/harness.ts';
import { TEST_ADDRESS_POLICY } from '../support/outbound.ts';

/**
 * The worker as production starts it (`worker/main.ts`, its own process, config from a file, at
 * debug level) through connect, refresh, attach and a delivery dispatched to a subscriber that
 * fails once: everything it writes on stdout and stderr — its own lines, the Temporal SDK's and
 * core's, workflow `log.*` calls, activity lines — is one stream of JSON lines, activity lines say
 * which run and attempt they belong to, and no secret in play appears anywhere in it.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('the worker process writes one JSON log stream without secrets', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-logs-'));
  let h: Harness;
  let gitlab: FakeGitlab;
  let subscriber: FakeSubscriber;
  let worker: ChildProcess;
  let exited: Promise<number | null>;
  const stdout: string[] = [];
  const stderr: string[] = [];
  const secrets: Record<string, string> = {};

  beforeAll(async () => {
    [h, gitlab, subscriber] = await Promise.all([startHarness({ withoutWorker: true }), startFakeGitlab(), startFakeSubscriber()]);
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const privateKeyPem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
    Object.assign(secrets, {
      encryptionKey: h.keys.current.key.toString('base64'),
      githubPrivateKey: privateKeyPem.split('\n')[1]!,
      githubWebhookSecret: `gh-hook-${randomBytes(16).toString('hex')}`,
      adminToken: `admin-${randomBytes(16).toString('hex')}`,
    });
    const configFile = writeHarnessConfig(h, path.join(dir, 'forgelink.yml'), {
      auth: { adminToken: secrets.adminToken },
      encryption: { key: secrets.encryptionKey, keyId: h.keys.current.id },
      gitProviders: { github: { enabled: true, appId: '1', privateKey: privateKeyPem, webhookSecret: secrets.githubWebhookSecret }, gitlab: { enabled: true } },
      security: TEST_ADDRESS_POLICY,
      logging: { level: 'debug' },
    });
    worker = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'worker/main.ts')], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    exited = new Promise((resolve) => worker.once('exit', (code) => resolve(code)));
    worker.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk.toString('utf8')));
    await new Promise<void>((resolve, reject) => {
      worker.stdout!.on('data', (chunk: Buffer) => {
        stdout.push(chunk.toString('utf8'));
        if (stdout.join('').includes('"msg":"worker running"')) resolve();
      });
      void exited.then((code) => reject(new Error(`the worker exited (${code}) before it ran:\n${stdout.join('')}${stderr.join('')}`)));
    });
  }, 180_000);

  afterAll(async () => {
    if (worker?.exitCode === null) worker.kill('SIGKILL');
    await h?.close();
    await gitlab?.close();
    await subscriber?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs a scenario with every kind of secret in play, then stops on SIGTERM', { timeout: 120_000 }, async () => {
    const { org, token } = await createOrgWithToken(h);
    const call = async (method: string, route: string, body?: unknown) => {
      const res = await h.request(method, route, { token, body });
      expect(res.status, await res.clone().text()).toBeLessThan(300);
      return (await res.json()) as Record<string, any>;
    };

    // A token without the scopes connect needs.
    secrets.weakToken = `glpat-weak-${randomUUID()}`;
    gitlab.addToken({ token: secrets.weakToken, username: 'weak', scopes: ['read_repository'] });
    const weak = await call('POST', `/api/v1/orgs/${org.slug}/connections`, { provider: 'gitlab', baseUrl: gitlab.url, token: secrets.weakToken });
    expect(await resultOf(h, weak.workflowId)).toMatchObject({ status: 'failed' });

    secrets.gitlabToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: secrets.gitlabToken, username: 'platform', scopes: ['api', 'read_user', 'read_repository'] });
    const project = gitlab.addProject({ pathWithNamespace: `logs/${randomUUID().slice(0, 8)}` });
    const connected = await call('POST', `/api/v1/orgs/${org.slug}/connections`, { provider: 'gitlab', baseUrl: gitlab.url, token: secrets.gitlabToken });
    expect(await resultOf(h, connected.workflowId)).toMatchObject({ status: 'active' });
    await resultOf(h, (await call('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`)).workflowId);
    const { items } = await call('GET', `/api/v1/orgs/${org.slug}/repositories`);
    const attach = await call('PUT', `/api/v1/orgs/${org.slug}/repositories/${items[0].id}/attachment`);
    expect(await resultOf(h, attach.workflowId)).toMatchObject({ status: 'attached' });
    const [hook] = gitlab.hooks(project.id);
    secrets.hookToken = hook!.token!;

    const registered = await call('POST', `/api/v1/orgs/${org.slug}/subscribers`, { url: subscriber.url });
    secrets.subscriberSecret = registered.secret;
    subscriber.verifyWith(registered.secret);
    subscriber.server.failNext('deliver', 1, { status: 503, text: 'warming up' });
    const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), { externalId: String(project.id), fullName: project.pathWithNamespace, instanceUrl: gitlab.url });
    const sent = delivery('gitlab', payload, { deliveryId: randomUUID(), secret: hook!.token, url: hook!.url });
    const res = await send(h, sent);
    expect(res.status).toBe(202);
    expect(await resultOf(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ delivered: 1 });
    expect(subscriber.received).toHaveLength(1);

    // The token revoked at GitLab: the refresh of that connection fails, and its workflow logs why (log.warn, through the SDK's sink).
    gitlab.revokeToken(secrets.gitlabToken);
    await resultOf(h, (await call('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`)).workflowId);

    worker.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('wrote JSON lines only, the SDK, workflow and activity lines among them', () => {
    const text = stdout.join('') + stderr.join('');
    const lines = text.split('\n').filter((line) => line.trim() !== '');
    const parsed = lines.map((line) => {
      try {
        return JSON.parse(line) as Record<string, any>;
      } catch {
        throw new Error(`not a JSON line: ${line.slice(0, 300)}`);
      }
    });
    for (const line of parsed) expect(line).toMatchObject({ level: expect.any(Number), time: expect.any(Number), msg: expect.any(String) });
    // The SDK's own messages (worker life cycle).
    expect(parsed).toContainEqual(expect.objectContaining({ sdkComponent: 'worker', msg: expect.stringMatching(/state/i) }));
    // A workflow's log.warn, with its run.
    expect(parsed).toContainEqual(expect.objectContaining({ sdkComponent: 'workflow', msg: 'repository refresh failed', workflowType: 'refreshRepositoriesWorkflow', workflowId: expect.any(String), runId: expect.any(String) }));
    // Activity lines of our own logger carry the run, the activity and the attempt.
    const rejected = parsed.find((l) => l.msg === 'subscriber rejected the event');
    expect(rejected).toMatchObject({ workflowId: expect.stringMatching(/^event:/), runId: expect.any(String), activityType: expect.any(String), attempt: expect.any(Number) });
    expect(parsed.find((l) => l.msg === 'connection validated')).toMatchObject({ workflowId: expect.stringMatching(/^connect:/), activityType: 'validateConnection', attempt: 1 });
  });

  it('wrote no secret', () => {
    const text = stdout.join('') + stderr.join('');
    expect(Object.keys(secrets).length).toBeGreaterThanOrEqual(8);
    for (const [name, value] of Object.entries(secrets)) expect(text.includes(value), `${name} appears in the worker's output`).toBe(false);
  });
});
