import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/logger.ts';
import { runWorker } from '../../worker/main.ts';
import { attachHeldAtCreate, attachmentOf, gitlabWorld, type HookWorld, type Org } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { startWorkerProcess } from '../support/worker-process.ts';

/**
 * A worker that dies in the middle of a provider call (SIGKILL: nothing reported to Temporal) is
 * noticed within seconds, not after the step's start-to-close timeout: the hook's creation runs
 * inside the run's workflow task, whose 10 s timeout hands the task to another worker, which runs
 * the task's steps again (ensureHook lists first and adopts the hook the killed worker made).
 */
describe('a worker killed during a provider call', () => {
  let h: Harness;
  let org: Org;
  let world: HookWorld;

  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    const created = await createOrgWithToken(h);
    org = { ...created.org, token: created.token };
    world = await gitlabWorld(h, org);
  });
  afterAll(async () => {
    await world?.close();
    await h?.close();
  });

  it('the attach completes within 20 s of the kill, with one hook', async () => {
    const worker = await startWorkerProcess(h);
    const from = world.server.calls.length;
    // The provider creates the hook; its answer is held while the worker process is killed.
    const { repository, hold, workflowId } = await attachHeldAtCreate({ h, org, world });

    worker.kill('SIGKILL');
    await once(worker, 'exit');
    const killedAt = performance.now();
    hold.release('drop');
    await h.restartWorker();

    await resultOf(h, workflowId);
    expect(performance.now() - killedAt).toBeLessThan(20_000);
    expect(await attachmentOf(h, org, repository.repositoryId)).toMatchObject({ status: 'attached' });
    // The retried step adopted the hook the killed one had created: never created a second (the
    // prune would remove a copy, so the hooks left alone do not prove it).
    expect(world.server.calls.slice(from).filter((c) => c.operation === world.ops.create)).toHaveLength(1);
    expect(repository.hooks()).toHaveLength(1);
  });
});

describe('a worker started while Temporal is unreachable', () => {
  it('retries its first connection with backoff and runs once Temporal answers', async () => {
    // A port with nothing behind it yet; later a plain TCP relay to the run's Temporal opens on it.
    const reserved = createServer();
    await new Promise<void>((resolve) => reserved.listen(0, '127.0.0.1', resolve));
    const { port } = reserved.address() as AddressInfo;
    await new Promise<void>((resolve) => reserved.close(() => resolve()));

    let failures = 0;
    let firstFailure!: () => void;
    const failed = new Promise<void>((resolve) => (firstFailure = resolve));
    const logger = createLogger('worker', 'info', new Writable({
      write(chunk, _encoding, done) {
        if (String(chunk).includes('cannot reach Temporal')) {
          failures++;
          firstFailure();
        }
        done();
      },
    }));
    const config = parseConfig({
      publicUrl: 'https://forgelink.test',
      auth: { adminToken: randomBytes(24).toString('hex') },
      encryption: { key: randomBytes(32).toString('base64') },
      temporal: { taskQueue: `test-${randomUUID()}` },
    });
    const starting = runWorker(config, { address: `127.0.0.1:${port}`, databaseUrl: inject('databaseUrl'), logger });
    await failed;

    const [host, temporalPort] = inject('temporalAddress').split(':');
    const sockets = new Set<Socket>();
    const relay = createServer((client) => {
      const upstream = connect(Number(temporalPort), host);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('error', () => socket.destroy());
        socket.on('close', () => sockets.delete(socket));
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => relay.listen(port, '127.0.0.1', resolve));
    try {
      const worker = await starting;
      expect(failures).toBeGreaterThanOrEqual(1);
      await worker.shutdown();
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
    }
  });
});
