import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { freeLoopbackPort as freePort } from '../../lib/net.ts';
import { killRemaining, ROOT, startProcess, writeProcessConfig, type StartedProcess } from '../support/processes.ts';

/**
 * A rollout's SIGTERM, as the API process meets it: /readyz answers 503 for the drain delay while
 * requests are still served, a request in flight (its body still arriving) is finished and written,
 * one that never finishes is cut after shutdown.requestTimeoutSeconds, and the process exits 0.
 */
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
  const started: StartedProcess[] = [];
  afterAll(async () => {
    await killRemaining(started);
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers /readyz 503 while draining, finishes the request in flight, cuts one that never ends, and exits 0', { timeout: 60_000 }, async () => {
    const adminToken = randomBytes(24).toString('hex');
    const { apiUrl: api, env } = writeProcessConfig(path.join(dir, 'forgelink.yml'), {
      port: await freePort(),
      database: { url: inject('databaseUrl') },
      temporal: { address: inject('temporalAddress') },
      auth: { adminToken },
      encryption: { key: randomBytes(32).toString('base64') },
      shutdown: { drainDelaySeconds: 3, requestTimeoutSeconds: 3 },
    });
    const apiProcess = await startProcess(['--import', 'tsx', 'api/main.ts'], { cwd: ROOT, env, readyMessage: 'API listening' });
    started.push(apiProcess);
    expect((await fetch(`${api}/readyz`)).status).toBe(200);

    const slug = `drain-${randomUUID().slice(0, 8)}`;
    const inFlight = slowPost(`${api}/api/v1/orgs`, adminToken, JSON.stringify({ slug, name: 'Drain' }));
    const neverEnds = slowPost(`${api}/api/v1/orgs`, adminToken, JSON.stringify({ slug: `${slug}-x`, name: 'Never' }));
    const cut = neverEnds.response.then(() => 'answered', () => 'cut');
    apiProcess.child.kill('SIGTERM');
    await apiProcess.waitForOutput('draining');

    const ready = await fetch(`${api}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: 'draining' });
    expect((await fetch(`${api}/healthz`)).status).toBe(200);

    await apiProcess.waitForOutput('"stopping');
    inFlight.req.end(JSON.stringify({ slug, name: 'Drain' }).slice(10));
    const res = await inFlight.response;
    expect(res.statusCode).toBe(201);
    expect(JSON.parse(await res.text)).toMatchObject({ slug });

    expect(await cut).toBe('cut');
    expect(await apiProcess.exited).toBe(0);
    expect(apiProcess.output()).toContain('API stopped');
    await expect(fetch(`${api}/healthz`)).rejects.toThrow();
  });
});
