import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Hono } from 'hono';
import { requestContext, requestIdFrom } from '../../api/request-context.ts';
import { createLogger, isSecretKey, redact, REDACTED, temporalLogger, withLogContext } from '../../lib/logger.ts';

function capture(level = 'trace') {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      raw.push(String(chunk));
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger('test', level, sink), lines, raw };
}

describe('logger', () => {
  it('redacts secret-named keys at any depth, in arrays, errors and child bindings', () => {
    const { logger, raw, lines } = capture();
    const failure = Object.assign(new Error('provider said no'), {
      config: { headers: { Authorization: 'Bearer s3cr3t-auth', 'PRIVATE-TOKEN': 'glpat-deep-token' } },
      cause: Object.assign(new Error('inner'), { request: { webhookSecret: 'whsec-inner' } }),
    });
    logger.child({ connection: { credential: 's3cr3t-credential' } }).warn(
      {
        a: { b: { c: { d: { e: { token: 's3cr3t-token', list: [{ password: 's3cr3t-password' }, { clientSecret: 's3cr3t-client' }] } } } } },
        tls: { key: 's3cr3t-key' },
        encryption: { encryptionKey: 's3cr3t-encryption' },
        github: { privateKey: '-----BEGIN RSA PRIVATE KEY-----s3cr3t' },
        err: failure,
        hookKey: 'push', keyId: 'k1', tokenCount: 3,
      },
      'something failed',
    );
    const text = raw.join('');
    expect(text).not.toMatch(/s3cr3t|glpat-deep-token|whsec-inner/);
    const [line] = lines as [any];
    expect(line.a.b.c.d.e).toEqual({ token: REDACTED, list: [{ password: REDACTED }, { clientSecret: REDACTED }] });
    expect(line.connection).toEqual({ credential: REDACTED });
    expect(line.err).toMatchObject({ type: 'Error', message: 'provider said no', config: { headers: { Authorization: REDACTED, 'PRIVATE-TOKEN': REDACTED } }, cause: { message: 'inner', request: { webhookSecret: REDACTED } } });
    expect(line.err.stack).toContain('provider said no');
    // Names that only contain a secret word stay.
    expect(line).toMatchObject({ hookKey: 'push', keyId: 'k1', tokenCount: 3 });
  });

  it('survives cycles and very deep objects', () => {
    const { logger, lines } = capture();
    const cyclic: Record<string, unknown> = { name: 'loop' };
    cyclic.self = cyclic;
    let deep: Record<string, unknown> = { token: 'bottom' };
    for (let i = 0; i < 50; i++) deep = { next: deep };
    logger.info({ cyclic, deep }, 'odd shapes');
    expect(lines[0]).toMatchObject({ cyclic: { name: 'loop', self: '[circular]' } });
    expect(JSON.stringify(lines[0])).not.toContain('bottom');
  });

  it('adds the fields of the surrounding log context to every line, nested contexts adding up', async () => {
    const { logger, lines } = capture();
    await withLogContext({ requestId: 'r-1' }, async () => {
      await Promise.resolve();
      logger.info('outer');
      withLogContext({ workflowId: 'w-1' }, () => logger.info({ workflowId: 'explicit wins' }, 'inner'));
    });
    logger.info('outside');
    expect(lines.map(({ msg, requestId, workflowId }) => ({ msg, requestId, workflowId }))).toEqual([
      { msg: 'outer', requestId: 'r-1', workflowId: undefined },
      { msg: 'inner', requestId: 'r-1', workflowId: 'explicit wins' },
      { msg: 'outside', requestId: undefined, workflowId: undefined },
    ]);
  });

  it('names secrets by key, whatever the case or separators', () => {
    for (const key of ['token', 'adminToken', 'x-gitlab-token', 'PRIVATE-TOKEN', 'authorization', 'Cookie', 'webhookSecret', 'webhook_basic_auth_pass', 'webhookBasicAuthPass', 'privateKey', 'apiKey', 'key', 'password', 'taskToken']) {
      expect(isSecretKey(key), key).toBe(true);
    }
    for (const key of ['hookKey', 'keyId', 'tokenCount', 'deliveryId', 'workflowId', 'monkey']) expect(isSecretKey(key), key).toBe(false);
    expect(redact({ token: '' })).toEqual({ token: '' });
  });

  it("takes the Temporal SDK's messages: levels mapped, metadata redacted, the task token dropped", () => {
    const { logger, lines } = capture('debug');
    const sdk = temporalLogger(logger);
    sdk.trace('below the level');
    sdk.info('Worker state changed', { sdkComponent: 'worker', state: 'RUNNING', [Symbol.for('log_timestamp')]: 1n });
    sdk.log('WARN', 'Activity failed', { sdkComponent: 'activity', taskToken: 'CiQ0...', workflowId: 'w', error: Object.assign(new Error('boom'), { secret: 'nope' }) });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      [30, 'Worker state changed'],
      [40, 'Activity failed'],
    ]);
    expect(lines[1]).not.toHaveProperty('taskToken');
    expect(lines[1]).toMatchObject({ workflowId: 'w', error: { message: 'boom', secret: REDACTED } });
  });
});

describe('request ids', () => {
  it('keeps a short printable X-Request-Id and replaces anything else', () => {
    expect(requestIdFrom('abc-123_DEF.456')).toBe('abc-123_DEF.456');
    for (const bad of [undefined, '', 'has space', 'x'.repeat(129), 'new\nline', 'é']) {
      const id = requestIdFrom(bad);
      expect(id, String(bad)).not.toBe(bad);
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
    }
  });

  it('answers with the request id whether the handler answers through the context, with its own Response, or throws', async () => {
    const app = new Hono();
    app.use('*', requestContext({ logger: capture().logger, accessLogLevel: 'silent' }));
    app.get('/json', (c) => c.json({ ok: true }, 202));
    app.get('/own', () => new Response('own', { status: 201 }));
    app.get('/throws', () => {
      throw new Error('no');
    });
    app.onError((_error, c) => c.json({ failed: true }, 500));
    for (const [path, status] of [['/json', 202], ['/own', 201], ['/throws', 500]] as const) {
      const res = await app.request(path, { headers: { 'x-request-id': `id-${path.slice(1)}` } });
      expect(res.status, path).toBe(status);
      expect(res.headers.get('x-request-id'), path).toBe(`id-${path.slice(1)}`);
    }
  });
});
