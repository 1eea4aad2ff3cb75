import { mkdirSync } from 'node:fs';
import path from 'node:path';

export interface EmbeddedPostgres {
  url: string;
  stop(): Promise<void>;
}

/**
 * A PostgreSQL for a newcomer's machine with nothing installed: PGlite (Postgres compiled to WASM)
 * persisted under `.forgelink/pgdata`, served over the Postgres wire protocol on loopback so the
 * same pg/Kysely code runs against it. Development only: it is single-process and slow to start.
 */
export async function startEmbeddedPostgres(dataDir = path.resolve('.forgelink/pgdata')): Promise<EmbeddedPostgres> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket');
  mkdirSync(dataDir, { recursive: true });
  const pglite = await PGlite.create(dataDir);
  const server = new PGLiteSocketServer({ db: pglite, host: '127.0.0.1', port: 0, maxConnections: 20 });
  await server.start();
  const conn = server.getServerConn();
  return {
    url: `postgres://postgres@${conn}/postgres?sslmode=disable`,
    async stop() {
      await server.stop();
      await pglite.close();
    },
  };
}
