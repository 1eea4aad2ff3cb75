import { setMaxListeners } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction, type Socket } from 'node:net';
import { Readable, type Duplex } from 'node:stream';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import { createHostResolver, type HostResolverOptions, type ResolveHost } from '../lib/dns.ts';
import { addressRefusal, type AddressPolicy } from '../lib/url.ts';
import type { Logger } from '../lib/logger.ts';

/**
 * The one way out of the worker. Every provider adapter (their SDKs included) and the subscriber
 * dispatcher make their HTTP calls through an Outbound, because a tenant chooses where they go:
 * - the address is checked when the socket connects (a lookup hook, and IP literals before
 *   connecting), so a name that resolved to a public address when the API checked it cannot be
 *   re-pointed at the worker's own network (DNS rebinding);
 * - redirects are followed only to the same origin (and only for reads), so credentials never
 *   travel to another host; the dispatcher follows none;
 * - every call has a timeout, a cap on the answer's size, and ends when the activity is cancelled.
 * What parsing a provider's answer costs is bounded by the adapters, which count it before parsing
 * (activities/providers/answer.ts).
 */
export interface Outbound {
  fetch(url: string | URL, init?: OutboundInit): Promise<Response>;
  /** Keep-alive pools with the same connect-time checks, for SDKs with an HTTP client of their own. */
  agents: { http: http.Agent; https: https.Agent };
}

export interface OutboundInit {
  method?: string;
  headers?: ConstructorParameters<typeof Headers>[0];
  body?: string | Uint8Array | URLSearchParams | null;
  signal?: AbortSignal | null;
  /** Whole call, answer included; default 30 s. */
  timeoutMs?: number;
  /** The answer's body is cut off (the call fails) past this many bytes; default DEFAULT_MAX_BODY_BYTES (8 MiB). */
  maxBodyBytes?: number;
  /** `same-origin` (default): GET/HEAD follow redirects within the origin; `none`: a 3xx is the answer. */
  redirects?: 'same-origin' | 'none';
}

export interface OutboundPolicy extends AddressPolicy, HostResolverOptions {
  /** Resolves a host name to its addresses (default: createHostResolver with this policy's DNS settings, never the threadpool's getaddrinfo). */
  resolve?: ResolveHost;
  /** Where a refused address is logged: the refusal's text, which tenants see, names none a name resolved to. */
  logger?: Pick<Logger, 'warn'>;
}

/**
 * The address (or a redirect) is not one a tenant's URL may reach, or the answer is in an encoding
 * the layer does not decode (activities/providers/azure-devops-http.ts): permanent, never retried.
 */
export class OutboundRefusedError extends Error {
  override name = 'OutboundRefusedError';
}

export class ResponseTooLargeError extends Error {
  override name = 'ResponseTooLargeError';
  constructor(
    origin: string,
    readonly limit: number,
  ) {
    super(`${origin} answered with more than ${limit} bytes`);
  }
}

const DEFAULT_TIMEOUT_MS = 30_000;
/**
 * A provider's answer, at most: a tenant's server may answer as much as it likes, and the adapters
 * read an answer whole before parsing it. The largest legitimate pages are a few MiB at most
 * (provider-contracts.md: Bitbucket 1,000 repositories of ~1-2 KB, GitHub 100 of ~6 KB, GitLab
 * 100 of ~1 KB), and Azure DevOps lists one project's repositories unpaged (~1 KB each: 8 MiB is
 * ~8,000 repositories in one project). 32 MiB before.
 */
export const DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024;
/** What one request may read from a socket, headers included: a backstop for SDK clients. */
const MAX_SOCKET_READ_BYTES = DEFAULT_MAX_BODY_BYTES + 64 * 1024;
const MAX_REDIRECTS = 5;
/** Closed by us before servers usually close theirs (Node's default is 5 s), so no request goes down a closing connection. */
const IDLE_CONNECTION_MS = 4_000;
/** Answers that have no body whatever their headers say (also activities/providers/azure-devops-http.ts). */
export const NULL_BODY_STATUSES = new Set([204, 205, 304]);

/** The reason the SDK gives the activities it cancels because their worker is stopping. */
export const WORKER_SHUTDOWN = 'WORKER_SHUTDOWN';

/** The running activity's context, or undefined outside an activity. */
export function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/**
 * Cuts this process's local activities when its worker stops. The SDK cancels a stopping worker's
 * activities at its grace time but waits for its local activities however long they take (their
 * workflow task must end first), so the worker's shutdown cuts them itself at the same time
 * (worker/main.ts: one worker per process). The reason is the SDK's own, so a cut step fails as
 * WorkerShutdown, like an activity the SDK cut.
 */
const localActivitiesStop = new AbortController();
/**
 * How many listeners one cancellation signal may hold before Node warns of a leak (its default, 10,
 * is passed by any activity with more than ten calls at once, and by the worker's stop signal with
 * more than ten local activities calling at once). Every call removes its own listener when done
 * (the test of 100,000 calls retains nothing), so only a leak of that order would reach this.
 */
const MAX_CANCELLATION_LISTENERS = 1024;
setMaxListeners(MAX_CANCELLATION_LISTENERS, localActivitiesStop.signal);
export function stopLocalActivities(): void {
  localActivitiesStop.abort(new CancelledFailure(WORKER_SHUTDOWN));
}

/**
 * The running activity's cancellation: its cancellationSignal and, for a local activity, its
 * worker's stop; none outside an activity. Kept apart, each call listening to them and removing its
 * listeners when done: an AbortSignal.any over the process-wide stop signal per call left an entry
 * on that signal for ever (Node 20: ~55 bytes a call, 47 MiB after 900,000 calls).
 */
export function activityCancellations(): AbortSignal[] {
  const ctx = activityContext();
  if (!ctx) return [];
  setMaxListeners(MAX_CANCELLATION_LISTENERS, ctx.cancellationSignal);
  return ctx.info.isLocal ? [ctx.cancellationSignal, localActivitiesStop.signal] : [ctx.cancellationSignal];
}

/** Calls `onAbort` with the reason when any of `signals` aborts; the returned function removes the listeners. */
function onAnyAbort(signals: readonly AbortSignal[], onAbort: (reason: unknown) => void): () => void {
  const listener = (event: Event) => {
    remove();
    onAbort((event.target as AbortSignal).reason);
  };
  const remove = () => {
    for (const signal of signals) signal.removeEventListener('abort', listener);
  };
  for (const signal of signals) signal.addEventListener('abort', listener, { once: true });
  return remove;
}

/** Each running activity's last heartbeated progress: a wait repeats it rather than heartbeat without it. */
const lastProgress = new WeakMap<Context, unknown>();

/** Heartbeats the activity's progress (a retry resumes from it); waits inside outbound calls heartbeat it again. */
export function heartbeatProgress(details: unknown): void {
  const ctx = Context.current();
  lastProgress.set(ctx, details);
  ctx.heartbeat(details);
}

/**
 * Waits `ms`, ending early (rejecting) when the activity is cancelled. An activity that heartbeats
 * its progress heartbeats it as the wait begins, so the wait counts as life, not silence.
 */
export function cancellableSleep(ms: number): Promise<void> {
  const ctx = activityContext();
  if (ctx && lastProgress.has(ctx)) ctx.heartbeat(lastProgress.get(ctx));
  const signals = activityCancellations();
  return new Promise((resolve, reject) => {
    const aborted = signals.find((signal) => signal.aborted);
    if (aborted) return reject(aborted.reason);
    const timer = setTimeout(() => {
      removeListeners();
      resolve();
    }, ms);
    const removeListeners = onAnyAbort(signals, (reason) => {
      clearTimeout(timer);
      reject(reason);
    });
  });
}

/** `promise`, or its rejection when the activity is cancelled first (for SDK calls that take no signal). */
export function unlessCancelled<T>(promise: Promise<T>): Promise<T> {
  const signals = activityCancellations();
  if (signals.length === 0) return promise;
  const aborted = signals.find((signal) => signal.aborted);
  if (aborted) return Promise.reject(aborted.reason);
  return new Promise<T>((resolve, reject) => {
    const removeListeners = onAnyAbort(signals, reject);
    promise.then(resolve, reject).finally(removeListeners);
  });
}

/** One outbound call's end: `signal` aborts at the deadline or with a source; `done()` frees the timer and listeners. */
export interface CallDeadline {
  signal: AbortSignal;
  done(): void;
}

/**
 * A deadline of `timeoutMs` that also ends with any of `sources` (the caller's signal, the activity's
 * cancellation). The timer and the listeners hold the controller strongly: AbortSignal.any holds its
 * sources weakly, so an AbortSignal.timeout referenced only through it was collected by a garbage
 * collection during the call, and the call never timed out (nodejs/node#57736, Node 20). The caller
 * calls done() once the answer is read, refused or closed; an answer nobody reads is ended by the timer.
 */
export function callDeadline(timeoutMs: number, sources: readonly (AbortSignal | null | undefined)[], what = 'no answer'): CallDeadline {
  const controller = new AbortController();
  const signals = sources.filter((s): s is AbortSignal => s != null);
  const timer = setTimeout(() => controller.abort(new DOMException(`${what} within ${timeoutMs} ms`, 'TimeoutError')), timeoutMs);
  // A pending call's socket keeps the process alive; its timer need not.
  timer.unref?.();
  let removeListeners = () => {};
  const done = () => {
    clearTimeout(timer);
    removeListeners();
  };
  controller.signal.addEventListener('abort', done, { once: true });
  const aborted = signals.find((signal) => signal.aborted);
  if (aborted) controller.abort(aborted.reason);
  else removeListeners = onAnyAbort(signals, (reason) => controller.abort(reason));
  return { signal: controller.signal, done };
}

/**
 * Ends a request that has no answer yet: destroys it and, when it still waits in its agent's queue
 * (every socket the agent may open to its host busy), takes it out. On Node 20 a queued request that
 * is destroyed emits nothing and stays queued until a socket to its host frees (then is handed it
 * only to drop it), so whoever waits for it settles at its deadline or cancellation itself rather
 * than on its 'error' (Outbound.fetch and the Azure DevOps SDK's requests,
 * activities/providers/azure-devops-http.ts).
 */
export function abandonRequest(agent: http.Agent, request: http.ClientRequest, reason: unknown): void {
  request.destroy(reason as Error);
  const queues = agent.requests as unknown as Record<string, unknown>;
  for (const [name, queue] of Object.entries(queues)) {
    const at = Array.isArray(queue) ? queue.indexOf(request) : -1;
    if (at === -1) continue;
    (queue as unknown[]).splice(at, 1);
    if ((queue as unknown[]).length === 0) delete queues[name];
    return;
  }
}

/** A provider's or subscriber's text cut to a short, printable excerpt before it reaches an API answer or a run failure. */
export function excerpt(text: string, max = 200): string {
  const printable = Array.from(text.replace(/[\p{C}\s]+/gu, ' ').trim());
  return printable.length > max ? `${printable.slice(0, max - 1).join('')}…` : printable.join('');
}

const tracer = trace.getTracer('forgelink-outbound');

export function createOutbound(policy: OutboundPolicy): Outbound {
  const refusal = (host: string, ip: string) => {
    const refused = addressRefusal(policy, host, ip);
    if (refused && host !== ip) policy.logger?.warn({ host, address: ip, reason: refused }, 'an outbound call to a refused address');
    return refused;
  };
  const resolve = policy.resolve ?? createHostResolver(policy);

  /** net.connect's lookup: every address the name resolves to must be allowed. */
  const lookup: LookupFunction = (hostname, options, callback) => {
    resolve(hostname).then(
      (all) => {
        const addresses = options.family ? all.filter((a) => isIP(a) === options.family) : all;
        const refused = addresses.map((a) => refusal(hostname, a)).find(Boolean);
        if (refused) return callback(new OutboundRefusedError(refused), '', 4);
        if (addresses.length === 0) return callback(Object.assign(new Error(`host ${hostname} does not resolve`), { code: 'ENOTFOUND' }), '', 4);
        if (options.all) return (callback as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, addresses.map((address) => ({ address, family: isIP(address) })));
        callback(null, addresses[0]!, isIP(addresses[0]!));
      },
      (error: Error) => callback(error, '', 4),
    );
  };

  /**
   * An agent whose sockets are checked: names through the lookup hook, IP literals before
   * connecting. What a socket reads for one request is capped too, for SDK clients that would
   * read any answer whole.
   */
  function guarded<A extends typeof http.Agent>(Base: A): InstanceType<A> {
    const received = new WeakMap<Duplex, number>();
    class GuardedAgent extends (Base as typeof http.Agent) {
      override keepSocketAlive(socket: Socket) {
        received.set(socket, 0);
        return super.keepSocketAlive(socket);
      }

      override createConnection(options: http.ClientRequestArgs, callback?: (error: Error | null, socket: Duplex) => void) {
        const host = String(options.host ?? '').replace(/^\[|\]$/g, '');
        const refused = isIP(host) ? refusal(host, host) : undefined;
        if (refused) {
          process.nextTick(() => callback?.(new OutboundRefusedError(refused), undefined as unknown as Duplex));
          return undefined;
        }
        const socket = super.createConnection(options, callback);
        socket?.on('data', (chunk: Buffer) => {
          const total = (received.get(socket) ?? 0) + chunk.length;
          received.set(socket, total);
          if (total > MAX_SOCKET_READ_BYTES) socket.destroy(new ResponseTooLargeError(host, MAX_SOCKET_READ_BYTES));
        });
        return socket;
      }
    }
    return new GuardedAgent({ keepAlive: true, maxSockets: 128, timeout: IDLE_CONNECTION_MS, lookup } as http.AgentOptions) as InstanceType<A>;
  }
  const agents = { http: guarded(http.Agent), https: guarded(https.Agent) as https.Agent };

  /**
   * One request: the answer, and its message, which the deadline outlives only once it closes. The
   * promise settles at the deadline or cancellation itself, whatever the socket does: on Node 20 a
   * request aborted while it waits in the agent's queue (all maxSockets of its host busy) emits
   * nothing, so waiting for its 'error' waited for ever.
   */
  function send(url: URL, init: OutboundInit, method: string, signal: AbortSignal, maxBodyBytes: number): Promise<[Response, http.IncomingMessage]> {
    const transport = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : undefined;
    if (!transport) return Promise.reject(new OutboundRefusedError(`${url.protocol} URLs are not allowed`));
    if (signal.aborted) return Promise.reject(signal.reason);
    const headers: Record<string, string> = Object.fromEntries(new Headers(init.headers ?? {}));
    const body = init.body == null ? undefined : typeof init.body === 'string' || init.body instanceof Uint8Array ? init.body : String(init.body);
    if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
    const agent = url.protocol === 'https:' ? agents.https : agents.http;
    return new Promise((resolve, reject) => {
      const request = transport.request(url, { method, headers, agent, signal }, (answer) => {
        signal.removeEventListener('abort', onWaitAborted);
        const status = answer.statusCode ?? 0;
        const responseHeaders = new Headers();
        for (let i = 0; i < answer.rawHeaders.length; i += 2) responseHeaders.append(answer.rawHeaders[i]!, answer.rawHeaders[i + 1]!);
        // The message fails as the call would have: with the timeout or the cancellation, its socket destroyed.
        const onAbort = () => answer.destroy(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
        answer.once('close', () => signal.removeEventListener('abort', onAbort));
        if (NULL_BODY_STATUSES.has(status) || method === 'HEAD') {
          // The answer has no body, but Node's parser skips one only for 204, 304 and HEAD: a 205
          // sent chunked (or with a length, or until close) is read on, and one that never ends held
          // its socket for ever. Read and dropped under the deadline, which destroys what is left.
          answer.resume();
          return resolve([new Response(null, { status, statusText: answer.statusMessage, headers: responseHeaders }), answer]);
        }
        let received = 0;
        answer.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received > maxBodyBytes) answer.destroy(new ResponseTooLargeError(url.origin, maxBodyBytes));
        });
        resolve([new Response(Readable.toWeb(answer) as ReadableStream, { status, statusText: answer.statusMessage, headers: responseHeaders }), answer]);
      });
      // Node destroys the request with the signal too (its `signal` option), but a queued one emits nothing.
      const onWaitAborted = () => {
        abandonRequest(agent, request, signal.reason);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onWaitAborted, { once: true });
      request.on('error', (error) => {
        signal.removeEventListener('abort', onWaitAborted);
        reject(signal.aborted ? signal.reason : error);
      });
      request.end(body);
    });
  }

  return {
    agents,
    async fetch(input, init = {}) {
      // A client span (and a traceparent header) only inside a trace being recorded: tracing off costs a lookup.
      if (!trace.getActiveSpan()?.isRecording()) return guardedFetch(input, init);
      const method = (init.method ?? 'GET').toUpperCase();
      const url = new URL(input);
      const attributes = { 'http.request.method': method, 'server.address': url.hostname, 'server.port': Number(url.port || (url.protocol === 'https:' ? 443 : 80)), 'url.full': `${url.origin}${url.pathname}` };
      return tracer.startActiveSpan(method, { kind: SpanKind.CLIENT, attributes }, async (span) => {
        try {
          const headers = new Headers(init.headers ?? {});
          propagation.inject(context.active(), headers, { set: (carrier, key, value) => carrier.set(key, value) });
          const response = await guardedFetch(input, { ...init, headers });
          span.setAttribute('http.response.status_code', response.status);
          if (response.status >= 400) span.setStatus({ code: SpanStatusCode.ERROR });
          return response;
        } catch (error) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
          throw error;
        } finally {
          span.end();
        }
      });
    },
  };

  /** The call itself: address checks at connect, same-origin redirects, timeout, cancellation, body cap. */
  async function guardedFetch(input: string | URL, init: OutboundInit): Promise<Response> {
    const method = (init.method ?? 'GET').toUpperCase();
    // The deadline spans redirects and the caller's read of the body: it ends when the last answer closes.
    const deadline = callDeadline(init.timeoutMs ?? DEFAULT_TIMEOUT_MS, [init.signal, ...activityCancellations()]);
    try {
      const origin = new URL(input).origin;
      let url = new URL(input);
      for (let redirects = 0; ; redirects++) {
        const [response, answer] = await send(url, init, method, deadline.signal, init.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
        const location = response.headers.get('location');
        if (init.redirects === 'none' || response.status < 300 || response.status >= 400 || location === null) {
          if (answer.closed) deadline.done();
          else answer.once('close', deadline.done);
          return response;
        }
        await response.body?.cancel();
        const next = new URL(location, url);
        if (next.origin !== origin) throw new OutboundRefusedError(`${origin} redirected to another origin (${next.origin}): not followed`);
        if (method !== 'GET' && method !== 'HEAD') throw new OutboundRefusedError(`${origin} redirected a ${method}: not followed`);
        if (redirects === MAX_REDIRECTS) throw new OutboundRefusedError(`${origin} redirected more than ${MAX_REDIRECTS} times`);
        url = next;
      }
    } catch (error) {
      deadline.done();
      throw error;
    }
  }
}
