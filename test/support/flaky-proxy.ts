import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A reverse proxy in front of a fake provider that injects the network faults a fake's own
 * `failNext` cannot: an answer lost after the provider acted on the request (the provider stored
 * the hook, the client saw the connection drop), or an answer withheld until the test releases it
 * (a step caught in flight, e.g. while the worker is restarted or another request is queued).
 */
export interface ProxiedRequest {
  method: string;
  /** Path and query string. */
  url: string;
  body: string;
}

export type ProxyFault =
  /** Answered by the proxy; the provider never sees the request. */
  | { kind: 'answer'; status: number; headers?: Record<string, string>; body?: string }
  /** Forwarded; the provider acts on it, then the connection is destroyed instead of answering. */
  | { kind: 'lose-answer' }
  /** Forwarded; the answer waits for `release`, then is sent ('answer') or the connection destroyed ('drop'). */
  | { kind: 'hold'; onHeld: () => void; release: Promise<'answer' | 'drop'> }
  /**
   * Held before the provider sees it (queued on the way); on `release` forwarded if the client still
   * waits, else dropped: a request the client abandoned before it arrived is never acted on.
   * `onReleased` says which, once the provider has answered a forwarded one. `onClientGone`, when
   * given, is called as soon as the client closes a held request (aborted it, or its socket closed).
   * `forwardWhenClientGone`: forwarded on `release` even so, as a provider that had the whole
   * request acts on it late (a real server does not undo work when the socket closes).
   */
  | { kind: 'hold-request'; onHeld: () => void; release: Promise<void>; onReleased: (forwarded: boolean) => void; onClientGone?: () => void; forwardWhenClientGone?: boolean };

export interface FlakyProxy {
  url: string;
  /** Decides each request's fate; undefined (the default) forwards it untouched. */
  fault: (request: ProxiedRequest) => ProxyFault | undefined;
  /** Every request the proxy received, in order. */
  readonly requests: ProxiedRequest[];
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set(['host', 'connection', 'content-length', 'transfer-encoding', 'keep-alive', 'accept-encoding']);

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function startFlakyProxy(upstream: string): Promise<FlakyProxy> {
  const origin = new URL(upstream).origin;
  const sockets = new Set<Socket>();
  const requests: ProxiedRequest[] = [];
  const proxy: FlakyProxy = { url: '', fault: () => undefined, requests, close };

  const server: Server = createServer(async (req, res) => {
    const request: ProxiedRequest = { method: req.method ?? 'GET', url: req.url ?? '/', body: await readBody(req) };
    requests.push(request);
    const fault = proxy.fault(request);
    if (fault?.kind === 'answer') {
      res.writeHead(fault.status, { 'content-type': 'application/json', ...fault.headers });
      res.end(fault.body ?? JSON.stringify({ message: `injected ${fault.status}` }));
      return;
    }
    let clientGone = false;
    if (fault?.kind === 'hold-request') {
      res.once('close', () => {
        clientGone = !res.writableEnded;
        if (clientGone) fault.onClientGone?.();
      });
      fault.onHeld();
      await fault.release;
      if (clientGone && !fault.forwardWhenClientGone) return fault.onReleased(false);
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(name) && value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    let answer: Response;
    let payload: Buffer;
    try {
      answer = await fetch(`${origin}${request.url}`, {
        method: request.method,
        headers,
        body: request.method === 'GET' || request.method === 'HEAD' ? undefined : request.body,
        redirect: 'manual',
      });
      payload = Buffer.from(await answer.arrayBuffer());
    } catch (error) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy could not reach ${origin}: ${(error as Error).message}`);
      return;
    }
    if (fault?.kind === 'hold-request') fault.onReleased(true);
    if (fault?.kind === 'lose-answer') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'hold') {
      fault.onHeld();
      if ((await fault.release) === 'drop') {
        req.socket.destroy();
        return;
      }
    }
    const answerHeaders: Record<string, string> = {};
    answer.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.has(name) && name !== 'content-encoding') answerHeaders[name] = value;
    });
    res.writeHead(answer.status, answerHeaders);
    res.end(payload);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  async function close(): Promise<void> {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
  return proxy;
}

/** A fault rule that fails the first attempt of every distinct request (method, URL and body) with the next of `faults`, in turn. */
export function failEachRequestOnce(faults: ProxyFault[]): (request: ProxiedRequest) => ProxyFault | undefined {
  const seen = new Set<string>();
  let next = 0;
  return (request) => {
    const key = `${request.method} ${request.url} ${request.body}`;
    if (seen.has(key)) return undefined;
    seen.add(key);
    return faults[next++ % faults.length];
  };
}

/** A hold the test releases by hand; `held` resolves once the provider has acted on the request. */
export function manualHold(): { fault: ProxyFault; held: Promise<void>; release: (how: 'answer' | 'drop') => void } {
  let onHeld!: () => void;
  let release!: (how: 'answer' | 'drop') => void;
  const held = new Promise<void>((resolve) => (onHeld = resolve));
  const released = new Promise<'answer' | 'drop'>((resolve) => (release = resolve));
  return { fault: { kind: 'hold', onHeld, release: released }, held, release };
}

/**
 * A request held before the provider sees it; `release` resolves whether it was forwarded (the
 * client still waited, or `forwardWhenClientGone`), once the provider answered it.
 */
export function heldRequest(options: { forwardWhenClientGone?: boolean } = {}): { fault: ProxyFault; held: Promise<void>; release: () => Promise<boolean> } {
  let onHeld!: () => void;
  let release!: () => void;
  let onReleased!: (forwarded: boolean) => void;
  const held = new Promise<void>((resolve) => (onHeld = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  const outcome = new Promise<boolean>((resolve) => (onReleased = resolve));
  return {
    fault: { kind: 'hold-request', onHeld, release: released, onReleased, ...options },
    held,
    release: () => {
      release();
      return outcome;
    },
  };
}

/**
 * `proxy` made into a tenant's server that hangs: while held it takes every request and answers
 * none, until `release`, when it forwards them all. `arrivals(n)` resolves once n requests are held.
 * With `first`, the first request gets that answer at once instead (`firstAnswered` resolves once it has).
 */
export function holding(proxy: FlakyProxy, first?: ProxyFault) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let answeredFirst!: () => void;
  const firstAnswered = new Promise<void>((resolve) => (answeredFirst = resolve));
  let held = true;
  let arrived = 0;
  const waiting: { count: number; resolve: () => void }[] = [];
  proxy.fault = () => {
    if (first) {
      const answer = first;
      first = undefined;
      setImmediate(answeredFirst);
      return answer;
    }
    return held
      ? {
          kind: 'hold-request',
          onHeld: () => {
            arrived++;
            for (const w of waiting.filter((w) => w.count <= arrived)) w.resolve();
          },
          release: released,
          onReleased: () => {},
        }
      : undefined;
  };
  return {
    url: proxy.url,
    firstAnswered,
    get arrived() {
      return arrived;
    },
    arrivals: (count: number) => (arrived >= count ? Promise.resolve() : new Promise<void>((resolve) => waiting.push({ count, resolve }))),
    release() {
      held = false;
      release();
    },
    close: () => proxy.close(),
  };
}
