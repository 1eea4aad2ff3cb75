import { createServer } from 'node:net';

/** A 127.0.0.1 port free right now, for a server started next on it (the embedded PostgreSQL, a test's or a bench's process). */
export async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
