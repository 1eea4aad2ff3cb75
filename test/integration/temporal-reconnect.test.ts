import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../lib/config.ts';
import { clientConnectOptions } from '../../lib/temporal/connection.ts';

/**
 * The API's Temporal client reconnects soon after an outage however long it lasted. A TCP proxy in
 * front of the run's dev server stands for the frontend: while "down" it closes every connection
 * it accepts (and records when each attempt came), then forwards again. grpc-js by default waits
 * 1 s, 1.6 s, 2.6 s, 4.1 s, 6.6 s … up to 120 s between attempts, so a client that lived through a
 * long outage kept failing for up to two minutes against a server that was back (seen on the
 * cluster suite's Temporal restart; 88 s after a 90 s outage). With the API's connection options
 * the gaps stay at 2 s (±20 % jitter), and the first call once the server is back succeeds.
 */
const ATTEMPTS = 7;
/** CLIENT_CHANNEL_ARGS' 2 s, its jitter and a loaded machine's slack; grpc-js's default fifth gap is 5.2 s at the least. */
const MAX_GAP_MS = 4500;

describe("the API's Temporal client after an outage", () => {
  let proxy: Server;
  let address: string;
  let down = false;
  const attempts: number[] = [];
  const sockets = new Set<Socket>();

  beforeAll(async () => {
    const [host, port] = inject('temporalAddress').split(':') as [string, string];
    proxy = createServer((client) => {
      sockets.add(client);
      client.on('close', () => sockets.delete(client));
      client.on('error', () => {});
      if (down) {
        attempts.push(performance.now());
        return void client.destroy();
      }
      const upstream = connect(Number(port), host);
      sockets.add(upstream);
      upstream.on('close', () => sockets.delete(upstream));
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    address = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => proxy.close(() => resolve()));
  });

  it('tries again every few seconds however long the server is away, and its first call after succeeds', { timeout: 120_000 }, async () => {
    const config = parseConfig({ publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: Buffer.alloc(32, 7).toString('base64') } });
    const connection = await Connection.connect(clientConnectOptions(config.temporal, address));
    const call = () => connection.withDeadline(Date.now() + 1000, () => connection.workflowService.getSystemInfo({}));
    try {
      await call();
      // The frontend goes away: the open connection drops, every new one is refused.
      down = true;
      for (const socket of sockets) socket.destroy();
      // Calls keep coming, as the intake relay's rounds do; each fails while the server is away.
      while (attempts.length < ATTEMPTS) {
        await expect(call()).rejects.toThrow();
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      const gaps = attempts.slice(1).map((at, i) => Math.round(at - attempts[i]!));
      expect(Math.max(...gaps), `gaps between connection attempts (ms): ${gaps.join(', ')}`).toBeLessThanOrEqual(MAX_GAP_MS);

      down = false;
      const back = performance.now();
      // Back: the next attempt comes within the capped backoff, and a call made then gets through.
      await expect
        .poll(
          async () =>
            call().then(
              () => true,
              () => false,
            ),
          { timeout: MAX_GAP_MS + 2000, interval: 200 },
        )
        .toBe(true);
      expect(performance.now() - back).toBeLessThanOrEqual(MAX_GAP_MS + 2000);
    } finally {
      await connection.close();
    }
  });
});
