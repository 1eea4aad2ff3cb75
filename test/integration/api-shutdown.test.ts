import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { freeLoopbackPort as freePort } from '../../lib/net.ts';

/**
 * A rollout's SIGTERM, as the API process meets it: /readyz answers 503 for the drain delay while
 * requests are still served, a request in flight (its body still arriving) is finished and written,
 * one that never finishes is cut after shutdown.requestTimeoutSeconds, and the process exits 0.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-shutdown-'));

/** A POST whose body arrives in parts: the first part now, the rest when the test says. */
function slowPost(url: string, token: string, body: string): { req: ClientRequest; response: Promise<IncomingMessage & { text: Promise<string> }> } {
  const req = request(url, { method: 'POST', agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } });
  const response = new Promise<IncomingMessage & { text: Promise<string> }>((resolve, reject) => {
    req.once('error', reject);
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      const text = new Promise<string>((done) => res.on('data', (c: Buffer) => chunks.push(c)).on('end', () => done(Buffer.concat(chunks).toString('utf8'))));
      resolve(Object.assign(res, { text }));
    });
  });
  req.write(body.slice(0, 10));
  req.flushHeaders();
  return { req, response };
}

describe('API: graceful shutdown on SIGTERM', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    if (child?.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers /readyz 503 while draining, finishes the request in flight, cuts one that never ends, and exits 0', { timeout: 60_000 }, async () => {
    const port = await freePort();
    const api = `http://127.0.0.1:${port}`;
    const adminToken = randomBytes(24).toString('hex');
    const configFile = path.join(dir, 'forgelink.yml');
    writeFileSync(
      configFile,
      toYaml({
        publicUrl: api,
        api: { host: '127.0.0.1', port },
        database: { url: inject('databaseUrl') },
        temporal: { address: inject('temporalAddress') },
        auth: { adminToken },
        encryption: { key: randomBytes(32).toString('base64') },
        shutdown: { drainDelaySeconds: 3, requestTimeoutSeconds: 3 },
      }),
    );
    child = spawn(process.execPath, ['--import', 'tsx', 'api/main.ts'], { cwd: ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const logged = (message: string) =>
      new Promise<void>((resolve, reject) => {
        const check = () => output.includes(message) && resolve();
        child!.stdout!.on('data', (chunk: Buffer) => ((output += chunk.toString('utf8')), check()));
        child!.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
        child!.once('exit', () => reject(new Error(`the API exited before logging "${message}":\n${output}`)));
        check();
      });
    const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
    await logged('API listening');
    expect((await fetch(`${api}/readyz`)).status).toBe(200);

    const slug = `drain-${randomUUID().slice(0, 8)}`;
    const inFlight = slowPost(`${api}/api/v1/orgs`, adminToken, JSON.stringify({ slug, name: 'Drain' }));
    const neverEnds = slowPost(`${api}/api/v1/orgs`, adminToken, JSON.stringify({ slug: `${slug}-x`, name: 'Never' }));
    const cut = neverEnds.response.then(() => 'answered', () => 'cut');
    child.kill('SIGTERM');
    await logged('draining');

    const ready = await fetch(`${api}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: 'draining' });
    expect((await fetch(`${api}/healthz`)).status).toBe(200);

    await logged('"stopping');
    inFlight.req.end(JSON.stringify({ slug, name: 'Drain' }).slice(10));
    const res = await inFlight.response;
    expect(res.statusCode).toBe(201);
    expect(JSON.parse(await res.text)).toMatchObject({ slug });

    expect(await cut).toBe('cut');
    expect(await exited).toBe(0);
    expect(output).toContain('API stopped');
    await expect(fetch(`${api}/healthz`)).rejects.toThrow();
  });
});
