import { connect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomPassword, startEmbeddedPostgres } from '../../lib/db/embedded.ts';

export interface TestPostgres {
  /** A superuser URL that may create databases. */
  adminUrl: string;
  /** Where it came from, for the run's log. */
  origin: string;
  stop(): Promise<void>;
}

const MACHINE_DEFAULT = 'postgres://postgres@127.0.0.1:5432/postgres';

function answers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.setTimeout(1000);
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('timeout', () => (socket.destroy(), resolve(false)));
    socket.once('error', () => resolve(false));
  });
}

/**
 * The PostgreSQL server the tests and benchmarks run on: `TEST_DATABASE_URL` when set (the value
 * `embedded` forces the embedded one); else the machine's server if one answers on 127.0.0.1:5432;
 * else a throwaway embedded PostgreSQL started for this run, so `npm test` needs none installed.
 */
export async function testPostgres(log: (line: string) => void = () => {}): Promise<TestPostgres> {
  const configured = process.env.TEST_DATABASE_URL;
  if (configured && configured !== 'embedded') return { adminUrl: configured, origin: 'TEST_DATABASE_URL', stop: async () => {} };
  if (!configured && (await answers('127.0.0.1', 5432))) return { adminUrl: MACHINE_DEFAULT, origin: 'the server on 127.0.0.1:5432', stop: async () => {} };
  const embedded = await startEmbeddedPostgres({
    dataDir: path.join(os.tmpdir(), `forgelink-test-pg-${process.pid}-${Date.now()}`),
    password: randomPassword(),
    ephemeral: true,
    log,
  });
  return { adminUrl: embedded.url, origin: `an embedded PostgreSQL started for this run (pid ${embedded.pid})`, stop: () => embedded.stop() };
}
