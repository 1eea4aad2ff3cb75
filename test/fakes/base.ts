import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A tiny HTTP server for fake providers: a route table plus fault injection. Each fake
 * (github.ts, gitlab.ts, bitbucket.ts, azure-devops.ts) registers its provider's routes on one.
 */
export interface FakeRequest {
  method: string;
  path: string;
  url: URL;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  params: Record<string, string>;
  rawBody: string;
  /** Parsed JSON body, or undefined when there is none / it is not JSON. */
  body: unknown;
}

export interface FakeResponse {
  status: number;
  headers?: Record<string, string>;
  /** Sent as JSON unless `text` is given. */
  body?: unknown;
  text?: string;
}

export type FakeHandler = (req: FakeRequest) => FakeResponse | Promise<FakeResponse>;

interface Route {
  method: string;
  segments: string[];
  operation: string;
  handler: FakeHandler;
}

export interface RecordedCall {
  operation: string;
  method: string;
  path: string;
  status: number;
  body: unknown;
  /** The request's headers, but its credentials (authorization, cookie). */
  headers: IncomingHttpHeaders;
  /** performance.now() when the request arrived and when it was answered. */
  receivedAt: number;
  answeredAt: number;
}

function withoutCredentials(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const { authorization: _authorization, cookie: _cookie, 'private-token': _privateToken, ...rest } = headers;
  return rest;
}

type Fault = { kind: 'respond'; response: FakeResponse } | { kind: 'drop' };

export class FakeHttpServer {
  private readonly routes: Route[] = [];
  private readonly faults = new Map<string, Fault[]>();
  private readonly sockets = new Set<Socket>();
  private server?: Server;
  /** Every call in arrival order, with the status answered. */
  readonly calls: RecordedCall[] = [];
  /** How long after a request arrives its answer leaves, at the earliest (simulates provider latency). */
  latencyMs = 0;
  /** Requests being answered right now, and the most there have been at once (since the last reset). */
  inFlight = 0;
  peakInFlight = 0;
  /** The same over every fake server of the process (the refresh benchmark's concurrency). */
  static inFlightAll = 0;
  static peakInFlightAll = 0;
  /** TCP connections accepted so far: fewer than calls when the client keeps connections alive. */
  connectionsAccepted = 0;
  url = '';

  constructor(private readonly fallback?: FakeHandler) {}

  route(method: string, pattern: string, operation: string, handler: FakeHandler): this {
    this.routes.push({ method: method.toUpperCase(), segments: pattern.split('/').filter(Boolean), operation, handler });
    return this;
  }

  /** The next `count` calls of `operation` ('*' for any) get `response` instead of the real answer. */
  failNext(operation: string, count: number, response: FakeResponse): void {
    const list = this.faults.get(operation) ?? [];
    for (let i = 0; i < count; i++) list.push({ kind: 'respond', response });
    this.faults.set(operation, list);
  }

  /** The next `count` calls of `operation` have their connection destroyed without an answer. */
  dropNext(operation: string, count: number): void {
    const list = this.faults.get(operation) ?? [];
    for (let i = 0; i < count; i++) list.push({ kind: 'drop' });
    this.faults.set(operation, list);
  }

  clearFaults(): void {
    this.faults.clear();
  }

  count(operation: string): number {
    return this.calls.filter((c) => c.operation === operation).length;
  }

  private match(method: string, path: string): { route: Route; params: Record<string, string> } | undefined {
    const parts = path.split('/').filter(Boolean);
    for (const route of this.routes) {
      if (route.method !== method || route.segments.length !== parts.length) continue;
      const params: Record<string, string> = {};
      let ok = true;
      for (let i = 0; i < parts.length; i++) {
        const seg = route.segments[i]!;
        if (seg.startsWith(':')) params[seg.slice(1)] = decodeURIComponent(parts[i]!);
        else if (seg.toLowerCase() !== decodeURIComponent(parts[i]!).toLowerCase()) ok = false;
        if (!ok) break;
      }
      if (ok) return { route, params };
    }
    return undefined;
  }

  private takeFault(operation: string): Fault | undefined {
    for (const key of [operation, '*']) {
      const list = this.faults.get(key);
      if (list && list.length > 0) return list.shift();
    }
    return undefined;
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const receivedAt = performance.now();
      this.inFlight++;
      this.peakInFlight = Math.max(this.peakInFlight, this.inFlight);
      FakeHttpServer.inFlightAll++;
      FakeHttpServer.peakInFlightAll = Math.max(FakeHttpServer.peakInFlightAll, FakeHttpServer.inFlightAll);
      let answered = false;
      const done = () => {
        if (answered) return;
        answered = true;
        this.inFlight--;
        FakeHttpServer.inFlightAll--;
      };
      res.on('close', done);
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', async () => {
        const rawBody = Buffer.concat(chunks).toString('utf8');
        const url = new URL(req.url ?? '/', this.url);
        let body: unknown;
        try {
          body = rawBody ? JSON.parse(rawBody) : undefined;
        } catch {
          body = undefined;
        }
        const method = (req.method ?? 'GET').toUpperCase();
        const matched = this.match(method, url.pathname);
        const operation = matched?.route.operation ?? 'unmatched';
        const request: FakeRequest = { method, path: url.pathname, url, query: url.searchParams, headers: req.headers, params: matched?.params ?? {}, rawBody, body };
        // The answer leaves `latencyMs` after the request arrived (or when ready, if later): the
        // provider's own work is part of its latency, not added to it.
        const waitOutLatency = async () => {
          const remaining = receivedAt + this.latencyMs - performance.now();
          if (remaining > 0) await new Promise((r) => setTimeout(r, remaining));
        };
        const fault = this.takeFault(operation);
        if (fault?.kind === 'drop') {
          await waitOutLatency();
          this.calls.push({ operation, method, path: url.pathname, status: 0, body, headers: withoutCredentials(req.headers), receivedAt, answeredAt: performance.now() });
          req.socket.destroy();
          return;
        }
        let response: FakeResponse;
        try {
          if (fault) response = fault.response;
          else if (matched) response = await matched.route.handler(request);
          else if (this.fallback) response = await this.fallback(request);
          else response = { status: 404, body: { message: 'Not Found' } };
        } catch (error) {
          response = { status: 500, body: { message: (error as Error).message } };
        }
        await waitOutLatency();
        this.calls.push({ operation, method, path: url.pathname, status: response.status, body, headers: withoutCredentials(req.headers), receivedAt, answeredAt: performance.now() });
        const headers: Record<string, string> = { ...(response.headers ?? {}) };
        let payload: string | undefined;
        if (response.text !== undefined) {
          payload = response.text;
          headers['content-type'] ??= 'text/plain';
        } else if (response.body !== undefined && response.status !== 204 && response.status !== 304) {
          payload = JSON.stringify(response.body);
          headers['content-type'] ??= 'application/json; charset=utf-8';
        }
        res.writeHead(response.status, headers);
        res.end(payload);
      });
    });
    this.server.on('connection', (socket) => {
      this.connectionsAccepted++;
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** RFC 5988 Link header from rel → absolute URL. */
export function linkHeader(links: Record<string, string>): string {
  return Object.entries(links)
    .map(([rel, href]) => `<${href}>; rel="${rel}"`)
    .join(', ');
}
