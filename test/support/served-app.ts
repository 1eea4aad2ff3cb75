import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';

/** An app behind a real HTTP server on a free loopback port, as the API runs it: bodies are read from a socket, senders can stall. */
export async function serveApp(app: { fetch: Parameters<typeof serve>[0]['fetch'] }): Promise<{ port: number; close(): Promise<void> }> {
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, () => resolve(s));
  });
  return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}
