import { type ChildProcess, spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { freeLoopbackPort } from '../../lib/net.ts';
import { findOrBuildTemporalCli } from '../../lib/temporal/cli.ts';
import { readDevServerSettings } from '../../lib/temporal/dev-server.ts';

/**
 * A TCP proxy in front of the Temporal frontend that the test can stall: from then on nothing is
 * forwarded either way and new connections are held open unanswered, which is what a client sees
 * of a server that hangs. `stalledRequest` resolves once bytes arrive while stalled.
 * `loseAnswers` forwards the client's bytes but drops the server's (a call that reaches Temporal
 * and whose answer never comes back); `heal` ends that, closing the connections it broke.
 */
export async function stallingProxy(upstream: string) {
  const [host, port] = upstream.split(':') as [string, string];
  const sockets = new Set<Socket>();
  let stalled = false;
  let answersLost = false;
  let closesLost = false;
  let onRequest: () => void;
  const stalledRequest = new Promise<void>((resolve) => (onRequest = resolve));
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on('error', () => {});
    client.on('close', () => sockets.delete(client));
    if (stalled) return void client.on('data', () => onRequest());
    const target = connect(Number(port), host);
    sockets.add(target);
    target.on('error', () => {});
    // A server that closes (stopped, or refusing) closes its client's connection too; a hanging one does not.
    target.on('close', () => (sockets.delete(target), stalled || client.destroy()));
    client.on('close', () => closesLost || target.destroy());
    client.on('data', (chunk) => (stalled ? onRequest() : target.write(chunk)));
    target.on('data', (chunk) => stalled || answersLost || client.write(chunk));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    stalledRequest,
    stall() {
      stalled = true;
    },
    loseAnswers() {
      answersLost = true;
    },
    /** A path that drops everything from now on: stalled, and a client's close never reaches the server either. */
    partition() {
      stalled = true;
      closesLost = true;
    },
    heal() {
      answersLost = false;
      // Their streams miss the bytes dropped: the client connects again.
      for (const socket of sockets) socket.destroy();
    },
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), sockets.forEach((s) => s.destroy()))),
  };
}

/**
 * `temporal server start-dev` on a fixed port and a store file, as a process of the test's own: the
 * SDK's launcher gives a server 5 s to answer, which a loaded machine misses; this one waits for it
 * as long as it takes, and stops it with SIGTERM (SIGKILL 10 s on), as a restart or an upgrade would.
 */
export async function ownTemporalServer(dir: string) {
  const cli = findOrBuildTemporalCli();
  if (!cli) throw new Error('this test needs the Temporal CLI (npm run temporal:ensure)');
  const settings = readDevServerSettings();
  const port = await freeLoopbackPort();
  const address = `127.0.0.1:${port}`;
  const args = [
    ...['server', 'start-dev', '--headless', '--ip', '127.0.0.1', '--port', String(port), '--namespace', 'default', '--log-level', 'error'],
    ...['--db-filename', path.join(dir, 'temporal.db')],
    ...Object.entries(settings.searchAttributes).flatMap(([name, type]) => ['--search-attribute', `${name}=${type}`]),
    ...Object.entries(settings.dynamicConfig).flatMap(([key, value]) => ['--dynamic-config-value', `${key}=${JSON.stringify(value)}`]),
  ];
  let child: ChildProcess | undefined;
  return {
    address,
    async start() {
      child = spawn(cli, args, { stdio: 'ignore' });
      const deadline = Date.now() + 120_000;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`the Temporal dev server exited with ${child.exitCode}`);
        try {
          const connection = await Connection.connect({ address, connectTimeout: 5000 });
          await connection.workflowService.describeNamespace({ namespace: 'default' });
          await connection.close();
          return;
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      }
    },
    async stop() {
      const running = child;
      if (!running || running.exitCode !== null) return;
      const exited = new Promise((resolve) => running.once('exit', resolve));
      running.kill('SIGTERM');
      const kill = setTimeout(() => running.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(kill);
    },
  };
}
