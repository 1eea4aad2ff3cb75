import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { isRunning, randomPassword, startEmbeddedPostgres, type EmbeddedPostgres } from '../../lib/db/embedded.ts';

/**
 * The embedded PostgreSQL behind `npm start` and a test run without a server: a real PostgreSQL 18
 * (run as an unprivileged user when the tests run as root), persistent across restarts, taking
 * over from a server a dead run left on its data directory, and moving a PGlite directory aside.
 */
describe('embedded PostgreSQL', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'forgelink-embedded-'));
  // As .forgelink is: under root, the user PostgreSQL runs as must reach the data directory.
  chmodSync(root, 0o755);
  const started: EmbeddedPostgres[] = [];
  afterAll(async () => {
    for (const server of started) await server.stop();
    rmSync(root, { recursive: true, force: true });
  });

  async function start(dataDir: string, password: string, log?: (line: string) => void) {
    const server = await startEmbeddedPostgres({ dataDir, password, log });
    started.push(server);
    return server;
  }

  async function query(url: string, text: string): Promise<Record<string, unknown>[]> {
    const client = new pg.Client(url);
    await client.connect();
    try {
      return (await client.query(text)).rows;
    } finally {
      await client.end();
    }
  }

  it('keeps its data across a restart, and a start over a dead run stops the server it left behind', async () => {
    const dataDir = path.join(root, 'pgdata');
    const password = randomPassword();
    const first = await start(dataDir, password);
    expect(await query(first.url, 'show server_version')).toEqual([{ server_version: expect.stringMatching(/^18\./) }]);
    await query(first.url, "create table kept (note text); insert into kept values ('before the crash')");

    // The process that started `first` "died": its server still runs on the directory.
    expect(isRunning(first.pid)).toBe(true);
    const second = await start(dataDir, password);
    expect(isRunning(first.pid)).toBe(false);
    expect(second.url).not.toBe(first.url);
    expect(await query(second.url, 'select note from kept')).toEqual([{ note: 'before the crash' }]);

    // Loopback only, and the password is required.
    const wrong = new URL(second.url);
    wrong.password = 'not-the-password';
    await expect(query(wrong.toString(), 'select 1')).rejects.toThrow(/password authentication failed/);
    await second.stop();
    expect(isRunning(second.pid)).toBe(false);
  });

  it('moves a PGlite data directory aside, with a message, instead of failing on it', async () => {
    const dataDir = path.join(root, 'from-pglite');
    mkdirSync(path.join(dataDir, 'base'), { recursive: true });
    writeFileSync(path.join(dataDir, 'PG_VERSION'), '17\n');
    writeFileSync(path.join(dataDir, 'base', 'keep-me'), 'a developer’s data');
    const lines: string[] = [];
    const server = await start(dataDir, randomPassword(), (line) => lines.push(line));

    const aside = readdirSync(root).filter((name) => name.startsWith('from-pglite.old-'));
    expect(aside).toHaveLength(1);
    expect(existsSync(path.join(root, aside[0]!, 'base', 'keep-me'))).toBe(true);
    expect(lines.join('\n')).toContain(`moved it to ${path.join(root, aside[0]!)}`);
    expect(await query(server.url, 'select 1 as one')).toEqual([{ one: 1 }]);
  });

  it('removes a throwaway cluster when it stops', async () => {
    const dataDir = path.join(root, 'throwaway');
    const server = await startEmbeddedPostgres({ dataDir, password: randomPassword(), ephemeral: true });
    expect(existsSync(path.join(dataDir, 'PG_VERSION'))).toBe(true);
    await server.stop();
    expect(existsSync(dataDir)).toBe(false);
  });
});
