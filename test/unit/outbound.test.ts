import http from 'node:http';
import v8 from 'node:v8';
import vm from 'node:vm';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { classified, toActivityFailure } from '../../activities/errors.ts';
import { cancellableSleep, createOutbound, excerpt, heartbeatProgress, unlessCancelled, OutboundRefusedError, ResponseTooLargeError, type OutboundPolicy } from '../../activities/outbound.ts';
import { ProviderHttpError } from '../../activities/providers/port.ts';
import { endlessAnswer, listen as listenOn, type Listener } from '../support/outbound.ts';

const listeners: Listener[] = [];
afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(listeners.splice(0).map((l) => l.close()));
});

async function listen(host: string, handler?: http.RequestListener): Promise<Listener> {
  const listener = await listenOn(host, handler);
  listeners.push(listener);
  return listener;
}

const LOOPBACK_ONLY: OutboundPolicy = { allowHttpHosts: [], allowPrivateNetworks: ['127.0.0.1'] };
const refusal = (promise: Promise<unknown>) => promise.then(() => undefined, (error: unknown) => error);

describe('outbound: addresses checked when connecting', () => {
  it('refuses link-local and metadata literals, IPv4-mapped IPv6 included, without connecting', async () => {
    const outbound = createOutbound({ allowHttpHosts: ['169.254.169.254'], allowPrivateNetworks: ['169.254.0.0/16'] });
    for (const url of ['http://169.254.169.254/latest/meta-data', 'http://[::ffff:a9fe:a9fe]/', 'http://[::ffff:169.254.169.254]/', 'https://[fd00:ec2::254]/', 'http://168.63.129.16/machine?comp=goalstate']) {
      const error = await refusal(outbound.fetch(url));
      expect(error, url).toBeInstanceOf(OutboundRefusedError);
      expect((error as Error).message).toMatch(/link-local or metadata/);
    }
  });

  it('refuses loopback and private addresses the policy does not list; the listener there sees no connection', async () => {
    const elsewhere = await listen('127.0.0.2');
    const error = await refusal(createOutbound(LOOPBACK_ONLY).fetch(`${elsewhere.url}/`));
    expect(error).toBeInstanceOf(OutboundRefusedError);
    expect((error as Error).message).toBe('127.0.0.2 is a loopback or private address (allow it in security.allowPrivateNetworks)');
    expect(elsewhere.connections).toBe(0);

    const allowed = await listen('127.0.0.1');
    expect((await createOutbound(LOOPBACK_ONLY).fetch(`${allowed.url}/`)).status).toBe(200);
    // A host in allowHttpHosts may resolve to a private address.
    const byName = createOutbound({ allowHttpHosts: ['gitlab.lan'], resolve: async () => ['127.0.0.2'] });
    expect((await byName.fetch(`http://gitlab.lan:${elsewhere.port}/`)).status).toBe(200);
  });

  it('checks the name as it resolves at connect time: a rebound name is refused', async () => {
    const internal = await listen('127.0.0.2');
    let answer = ['203.0.113.10'];
    const warned: unknown[] = [];
    const outbound = createOutbound({ ...LOOPBACK_ONLY, resolve: async () => answer, logger: { warn: (fields: unknown) => void warned.push(fields) } as never });
    answer = ['127.0.0.2'];
    const error = await refusal(outbound.fetch(`http://ci.example.com:${internal.port}/hook`, { method: 'POST', body: '{}' }));
    expect((error as Error).message).toBe('host ci.example.com resolves to a loopback or private address (allow it in security.allowPrivateNetworks)');
    // One bad address among several is enough.
    answer = ['127.0.0.1', '169.254.169.254'];
    expect(((await refusal(outbound.fetch(`http://ci.example.com:${internal.port}/`))) as Error).message).toBe('host ci.example.com resolves to a link-local or metadata address');
    expect(internal.connections).toBe(0);
    // The address is the operator's to see: logged, never in the error.
    expect(warned).toContainEqual(expect.objectContaining({ host: 'ci.example.com', address: '127.0.0.2' }));
  });

  it('applies the same checks to SDKs through its agents', async () => {
    const internal = await listen('127.0.0.2');
    const outbound = createOutbound(LOOPBACK_ONLY);
    const error = await new Promise<Error>((resolve) => {
      http.get(`${internal.url}/`, { agent: outbound.agents.http }, () => resolve(new Error('answered'))).on('error', resolve);
    });
    expect(error).toBeInstanceOf(OutboundRefusedError);
    const named = createOutbound({ ...LOOPBACK_ONLY, resolve: async () => ['127.0.0.2'] });
    const viaName = await new Promise<Error>((resolve) => {
      http.get(`http://dev.azure.example:${internal.port}/`, { agent: named.agents.http }, () => resolve(new Error('answered'))).on('error', resolve);
    });
    expect(viaName).toBeInstanceOf(OutboundRefusedError);
    expect(internal.connections).toBe(0);
  });
});

describe('outbound: redirects', () => {
  it('never follows a redirect to another origin; the credential does not reach it', async () => {
    const second = await listen('127.0.0.1');
    const provider = await listen('127.0.0.1', (_, res) => res.writeHead(302, { location: `${second.url}/api/v4/personal_access_tokens/self` }).end());
    const error = await refusal(createOutbound(LOOPBACK_ONLY).fetch(`${provider.url}/api/v4/personal_access_tokens/self`, { headers: { 'private-token': 'glpat-secret' } }));
    expect(error).toBeInstanceOf(OutboundRefusedError);
    expect((error as Error).message).toBe(`${provider.url} redirected to another origin (${second.url}): not followed`);
    expect(second.connections).toBe(0);
  });

  it('follows a read redirected within the origin, but not a write, and not for the dispatcher', async () => {
    const provider = await listen('127.0.0.1', (req, res) => {
      if (req.url === '/old') res.writeHead(301, { location: '/new' }).end();
      else res.end(JSON.stringify({ at: req.url, token: req.headers['private-token'] }));
    });
    const outbound = createOutbound(LOOPBACK_ONLY);
    const read = await outbound.fetch(`${provider.url}/old`, { headers: { 'private-token': 't' } });
    expect(await read.json()).toEqual({ at: '/new', token: 't' });
    expect(((await refusal(outbound.fetch(`${provider.url}/old`, { method: 'PUT', body: '{}' }))) as Error).message).toMatch(/redirected a PUT: not followed/);
    expect((await outbound.fetch(`${provider.url}/old`, { method: 'POST', redirects: 'none' })).status).toBe(301);
  });
});

describe('outbound: bounded answers', () => {
  it('cuts an endless body off at the cap', async () => {
    const subscriber = await listen('127.0.0.1', endlessAnswer);
    const started = performance.now();
    const response = await createOutbound(LOOPBACK_ONLY).fetch(`${subscriber.url}/`, { maxBodyBytes: 64 * 1024 });
    const error = await refusal(response.arrayBuffer());
    expect((error as Error).name).toBe('ResponseTooLargeError');
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('ends a body that outlasts the timeout with the timeout', async () => {
    const subscriber = await listen('127.0.0.1', (_, res) => res.writeHead(200).write('a stalled answer'));
    const response = await createOutbound(LOOPBACK_ONLY).fetch(`${subscriber.url}/`, { timeoutMs: 300, maxBodyBytes: Number.MAX_SAFE_INTEGER });
    const error = await refusal(response.arrayBuffer());
    expect((error as Error).name).toBe('TimeoutError');
  });

  it('ends a body at the timeout even when the heap is collected during the call', async () => {
    // AbortSignal.any holds its sources weakly: a timeout signal referenced only through it was
    // collected by the next garbage collection, and the call then never timed out (nodejs/node#57736).
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const subscriber = await listen('127.0.0.1', (_, res) => res.writeHead(200).write('a stalled answer'));
    const response = await createOutbound(LOOPBACK_ONLY).fetch(`${subscriber.url}/`, { timeoutMs: 300 });
    gc();
    await new Promise(setImmediate);
    gc();
    const error = await refusal(response.arrayBuffer());
    expect((error as Error).name).toBe('TimeoutError');
  }, 5_000);

  it("retains nothing per call on a local activity's cancellation signals, however many calls it makes", async () => {
    // An AbortSignal.any over the process-wide stop signal per call left an entry on it for ever
    // (Node 20: ~55 bytes a call); 100,000 calls would retain ~5 MiB.
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const retained = () => {
      gc();
      gc();
      return process.memoryUsage().heapUsed;
    };
    await new MockActivityEnvironment({ isLocal: true }).run(async () => {
      const calls = async (n: number) => {
        for (let i = 0; i < n; i++) await unlessCancelled(Promise.resolve(i));
      };
      await calls(20_000);
      const before = retained();
      await calls(100_000);
      expect(retained() - before).toBeLessThan(1024 * 1024);
    });
  }, 30_000);

  it('warns of no listener leak when a local activity has more than ten calls at once', async () => {
    // Each call listens to the activity's cancellation and the worker's stop until it ends: more than
    // ten at once passed Node's default of ten listeners, and every worker logged a leak warning.
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(warning.name);
    process.on('warning', onWarning);
    try {
      await new MockActivityEnvironment({ isLocal: true }).run(async () => {
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const calls = Array.from({ length: 40 }, () => unlessCancelled(gate));
        release();
        await Promise.all(calls);
      });
      await new Promise(setImmediate);
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).not.toContain('MaxListenersExceededWarning');
  });

  it('holds a timer only while the call is open: answered, refused, redirected, bodiless or never read', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    let unreadClosed!: () => void;
    const closed = new Promise<void>((resolve) => (unreadClosed = resolve));
    const provider = await listen('127.0.0.1', (req, res) => {
      if (req.url === '/old') res.writeHead(301, { location: '/new' }).end();
      else if (req.url === '/empty') res.writeHead(204).end();
      else if (req.url === '/stalled' || req.url === '/unread') res.writeHead(200).write('a stalled answer');
      else res.end('{}');
      if (req.url === '/unread') res.once('close', unreadClosed);
    });
    const outbound = createOutbound(LOOPBACK_ONLY);
    expect(await (await outbound.fetch(`${provider.url}/new`)).text()).toBe('{}');
    expect(await (await outbound.fetch(`${provider.url}/old`)).text()).toBe('{}');
    expect((await outbound.fetch(`${provider.url}/empty`)).status).toBe(204);
    expect((await outbound.fetch(`${provider.url}/new`, { method: 'HEAD' })).status).toBe(200);
    await (await outbound.fetch(`${provider.url}/new`)).body?.cancel();
    expect(await refusal(createOutbound({ allowHttpHosts: [] }).fetch(`${provider.url}/`))).toBeInstanceOf(OutboundRefusedError);
    const caller = new AbortController();
    const aborted = await outbound.fetch(`${provider.url}/stalled`, { signal: caller.signal });
    caller.abort(new Error('activity cancelled'));
    expect(((await refusal(aborted.text())) as Error).message).toBe('activity cancelled');
    expect(vi.getTimerCount()).toBe(0);
    // An answer nobody reads is ended by its timer, and the connection with it.
    await outbound.fetch(`${provider.url}/unread`);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(30_000);
    await closed;
    expect(vi.getTimerCount()).toBe(0);
  });

  it('ends a bodiless answer that goes on (a 205 sent chunked, then silent) at the deadline, its connection with it', async () => {
    // Node's parser skips the body only for 204, 304 and HEAD: it reads a 205's, so one that never
    // ends held its socket for ever once the call had returned.
    let closed!: () => void;
    const connectionClosed = new Promise<void>((resolve) => (closed = resolve));
    const subscriber = await listen('127.0.0.1', (_, res) => {
      res.writeHead(205, { 'transfer-encoding': 'chunked' }).write('a');
      res.once('close', closed);
    });
    const response = await createOutbound(LOOPBACK_ONLY).fetch(`${subscriber.url}/`, { timeoutMs: 300 });
    expect(response.status).toBe(205);
    expect(response.body).toBeNull();
    await connectionClosed;
  }, 5_000);

  it('keeps the connection of a bodiless answer that is complete (204, 205 with no length, HEAD)', async () => {
    const provider = await listen('127.0.0.1', (req, res) => {
      if (req.url === '/reset') res.writeHead(205, { 'content-length': '0' }).end();
      else if (req.url === '/empty') res.writeHead(204).end();
      else res.writeHead(200, { 'content-length': '2' }).end(req.method === 'HEAD' ? undefined : '{}');
    });
    const outbound = createOutbound(LOOPBACK_ONLY);
    // The call returns with the headers; its connection goes back to the pool once the parser is done with it.
    const pooled = () =>
      new Promise<void>((resolve) => {
        const wait = () => (Object.values(outbound.agents.http.freeSockets).flat().length > 0 ? resolve() : setImmediate(wait));
        wait();
      });
    for (const path of ['/empty', '/reset', '/head', '/empty', '/reset']) {
      const response = await outbound.fetch(`${provider.url}${path}`, { method: path === '/head' ? 'HEAD' : 'GET' });
      expect(response.body).toBeNull();
      await pooled();
    }
    expect(provider.connections).toBe(1);
  }, 5_000);

  it("ends a call that waits for a connection (every socket to its host held) at its deadline or cancellation, and takes it out of the agent's queue", async () => {
    const held: http.ServerResponse[] = [];
    let allHeld!: () => void;
    const full = new Promise<void>((resolve) => (allHeld = resolve));
    const provider = await listen('127.0.0.1', (_, res) => {
      if (held.push(res) === 128) allHeld();
    });
    const outbound = createOutbound(LOOPBACK_ONLY);
    const queued = () => Object.values(outbound.agents.http.requests).flat().length;
    const holding = Array.from({ length: 128 }, () => outbound.fetch(`${provider.url}/`, { timeoutMs: 60_000 }));
    await full;

    const late = refusal(outbound.fetch(`${provider.url}/`, { timeoutMs: 200 }));
    expect(queued()).toBe(1);
    expect(((await late) as Error).name).toBe('TimeoutError');
    expect(queued()).toBe(0);
    const caller = new AbortController();
    const cancelled = refusal(outbound.fetch(`${provider.url}/`, { signal: caller.signal }));
    expect(queued()).toBe(1);
    caller.abort(new Error('activity cancelled'));
    expect(((await cancelled) as Error).message).toBe('activity cancelled');
    expect(queued()).toBe(0);

    // The held calls answered, their connections go back to the pool; none was opened for the ended calls.
    for (const res of held) res.end('{}');
    for (const response of await Promise.all(holding)) expect(await response.text()).toBe('{}');
    expect(provider.connections).toBe(128);
  }, 10_000);

  it('serves a host again once 128 answers of 205 sent chunked and left silent end at their deadline', async () => {
    // The attack: each silent 205 kept its socket, and from the 129th on every call to the host waited for ever.
    let answered = 0;
    const subscriber = await listen('127.0.0.1', (_, res) => {
      if (++answered <= 128) res.writeHead(205, { 'transfer-encoding': 'chunked' }).flushHeaders();
      else res.end('{}');
    });
    const outbound = createOutbound(LOOPBACK_ONLY);
    const silent = await Promise.all(Array.from({ length: 128 }, () => outbound.fetch(`${subscriber.url}/`, { timeoutMs: 300 })));
    expect(silent.map((r) => r.status)).toEqual(Array(128).fill(205));
    const next = await outbound.fetch(`${subscriber.url}/`, { timeoutMs: 5_000 });
    expect(await next.text()).toBe('{}');
  }, 10_000);

  it('caps what an SDK reads through the agents, per request', async () => {
    const provider = await listen('127.0.0.1', endlessAnswer);
    const outbound = createOutbound(LOOPBACK_ONLY);
    const error = await new Promise<Error>((resolve) => {
      http.get(`${provider.url}/`, { agent: outbound.agents.http }, (res) => res.on('data', () => {}).on('error', resolve).on('end', () => resolve(new Error('ended')))).on('error', resolve);
    });
    expect(error).toBeInstanceOf(ResponseTooLargeError);
    // A kept-alive socket starts its count again with every request.
    const small = await listen('127.0.0.1', (_, res) => res.end('x'.repeat(1024 * 1024)));
    for (let i = 0; i < 40; i++) expect((await (await outbound.fetch(`${small.url}/`)).arrayBuffer()).byteLength).toBe(1024 * 1024);
    expect(small.connections).toBe(1);
  });

  it('ends the call when the activity is cancelled', async () => {
    const silent = await listen('127.0.0.1', () => {});
    const outbound = createOutbound(LOOPBACK_ONLY);
    const env = new MockActivityEnvironment();
    const pending = refusal(env.run(() => outbound.fetch(`${silent.url}/`)));
    await new Promise<void>((resolve) => {
      const wait = () => (silent.connections > 0 ? resolve() : setImmediate(wait));
      wait();
    });
    env.cancel('CANCELLED');
    expect(await pending).toBeDefined();
  });

  it('ends the call when the caller aborts', async () => {
    const silent = await listen('127.0.0.1', () => {});
    const controller = new AbortController();
    const pending = refusal(createOutbound(LOOPBACK_ONLY).fetch(`${silent.url}/`, { signal: controller.signal }));
    controller.abort(new Error('activity cancelled'));
    expect(((await pending) as Error).message).toBe('activity cancelled');
  });
});

describe('waits inside an activity', () => {
  it('heartbeat the progress the activity last heartbeated, and only that', async () => {
    const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 30_000 });
    const beats: unknown[] = [];
    env.on('heartbeat', (details: unknown) => beats.push(details));
    await env.run(async () => {
      await cancellableSleep(1);
      heartbeatProgress({ pages: 3 });
      await cancellableSleep(1);
    });
    expect(beats).toEqual([{ pages: 3 }, { pages: 3 }]);
  });

  it('end when the activity is cancelled', async () => {
    const env = new MockActivityEnvironment();
    const waiting = refusal(env.run(() => cancellableSleep(60_000)));
    env.cancel('CANCELLED');
    expect(await waiting).toBeDefined();
  });
});

describe('failures from outbound calls', () => {
  it('makes a refusal permanent however a client library wrapped it, and keeps provider text short', () => {
    const wrapped = Object.assign(new Error('fetch failed'), { cause: new OutboundRefusedError('10.0.0.1 is a loopback or private address') });
    expect(toActivityFailure(wrapped)).toMatchObject({ type: 'OutboundRefused', nonRetryable: true, message: '10.0.0.1 is a loopback or private address' });
    const reflected = new ProviderHttpError('gitlab', 401, `<html>\u0000${'secret page '.repeat(1000)}</html>`);
    expect(reflected.message.length).toBeLessThanOrEqual(200);
    expect(reflected.message).not.toContain('\u0000');
    const generic = toActivityFailure(new Error(`unexpected token in ${'x'.repeat(5000)}`)) as ApplicationFailure;
    expect(generic.message.length).toBeLessThanOrEqual(200);
    expect(generic.nonRetryable).toBe(false);
  });
});

describe('a step cut by its worker stopping', () => {
  async function cutWith(reason: 'WORKER_SHUTDOWN' | 'CANCELLED') {
    const silent = await listen('127.0.0.1', () => {});
    const env = new MockActivityEnvironment();
    const pending = refusal(env.run(() => classified(() => createOutbound(LOOPBACK_ONLY).fetch(`${silent.url}/`))));
    await new Promise<void>((resolve) => {
      const wait = () => (silent.connections > 0 ? resolve() : setImmediate(wait));
      wait();
    });
    env.cancel(reason);
    return (await pending) as ApplicationFailure;
  }

  it('is a retryable WorkerShutdown, not the provider being unavailable', async () => {
    expect(await cutWith('WORKER_SHUTDOWN')).toMatchObject({ type: 'WorkerShutdown', nonRetryable: false, message: expect.stringContaining('WORKER_SHUTDOWN') });
    expect((await cutWith('CANCELLED')).type).not.toBe('WorkerShutdown');
  });
});

describe('excerpt', () => {
  it('keeps provider text short and printable', () => {
    expect(excerpt('  token \u0000expired\r\n\u001b[31m  ')).toBe('token expired [31m');
    const long = excerpt('x'.repeat(10_000));
    expect(long).toHaveLength(200);
    expect(long.endsWith('…')).toBe(true);
  });
});
