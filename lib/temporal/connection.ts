import { readFileSync } from 'node:fs';
import { type ConnectionOptions, defaultGrpcRetryOptions, makeGrpcRetryInterceptor, type TLSConfig } from '@temporalio/client';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';

/** What both the API's Client connection and the worker's NativeConnection are opened with. */
export interface TemporalConnectOptions {
  address: string;
  tls?: TLSConfig | false;
  apiKey?: string;
}

/**
 * The connection options for `temporal.{tls,apiKey}`: PEM files are read here, at start, so a
 * missing or unreadable one stops the process naming its key (a rotated certificate needs a
 * restart). An API key without `tls` turns TLS on with the system's roots, as Temporal Cloud needs.
 */
export function temporalConnectOptions(temporal: Config['temporal'], address: string, readFile: (file: string) => string = (f) => readFileSync(f, 'utf8')): TemporalConnectOptions {
  const pem = (inline: string | undefined, file: string | undefined, key: string): Buffer | undefined => {
    if (inline) return Buffer.from(inline);
    if (!file) return undefined;
    try {
      return Buffer.from(readFile(file));
    } catch (error) {
      throw new Error(`temporal.tls.${key}: cannot read ${file}: ${(error as Error).message}`);
    }
  };
  const options: TemporalConnectOptions = { address, ...(temporal.apiKey ? { apiKey: temporal.apiKey } : {}) };
  const tls = temporal.tls;
  if (!tls) return options;
  if (!tls.enabled) return { ...options, tls: false };
  const serverRootCACertificate = pem(tls.ca, tls.caFile, 'caFile');
  const crt = pem(tls.cert, tls.certFile, 'certFile');
  const key = pem(tls.key, tls.keyFile, 'keyFile');
  return {
    ...options,
    tls: {
      ...(tls.serverName ? { serverNameOverride: tls.serverName } : {}),
      ...(serverRootCACertificate ? { serverRootCACertificate } : {}),
      ...(crt && key ? { clientCertPair: { crt, key } } : {}),
    },
  };
}

/**
 * grpc-js channel arguments for every Client connection forgelink keeps open (the API's). grpc-js
 * waits longer between reconnection attempts the longer a server is unreachable (1 s growing 1.6x,
 * up to 120 s), so after a Temporal restart or outage of a minute or more the API's client went on
 * failing for up to two more minutes against a server that was back, and the intake relay started
 * no run meanwhile (measured: the first call succeeded 88 s after a 90 s outage ended; with this,
 * at the relay's next round). Attempts every 2 s at most cost a refused connection each while the
 * server is down.
 */
export const CLIENT_CHANNEL_ARGS: Readonly<Record<string, number>> = { 'grpc.max_reconnect_backoff_ms': 2000 };

/** temporalConnectOptions for a Client Connection (grpc-js): with CLIENT_CHANNEL_ARGS. */
export function clientConnectOptions(temporal: Config['temporal'], address: string): TemporalConnectOptions & { channelArgs: Record<string, number> } {
  return { ...temporalConnectOptions(temporal, address), channelArgs: { ...CLIENT_CHANNEL_ARGS } };
}

export interface RetrySettings {
  initialDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * Connects to Temporal, retrying with exponential backoff (0.5 s doubling, at most 30 s apart) for
 * as long as it takes: a worker started while the cluster is briefly unreachable (a restart, an
 * upgrade, pods coming up in any order) waits for it instead of exiting.
 */
export async function connectWithRetry<T>(what: string, connect: () => Promise<T>, logger: Logger, settings: RetrySettings = {}): Promise<T> {
  const maxDelayMs = settings.maxDelayMs ?? 30_000;
  for (let attempt = 1, delayMs = settings.initialDelayMs ?? 500; ; attempt++, delayMs = Math.min(delayMs * 2, maxDelayMs)) {
    try {
      return await connect();
    } catch (error) {
      logger.warn({ attempt, retryInMs: delayMs, reason: (error as Error).message }, `cannot reach Temporal (${what}); retrying`);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}

type GrpcInterceptor = NonNullable<ConnectionOptions['interceptors']>[number];

/**
 * The SDK's retries of a call Temporal refuses (UNAVAILABLE and the like: 10 attempts over ~19 s),
 * but none past the call's deadline. The SDK's own interceptor waits out its backoff (up to 5 s)
 * even past the deadline and only then fails, so a request's deadline ended up to 5 s late, and
 * its timer could fire after the connection closed at shutdown ("Channel has been shut down", an
 * uncaught exception). With this, a refused call ends before its deadline with the last refusal
 * (UNAVAILABLE), an unanswered one at the deadline (DEADLINE_EXCEEDED); a call without one retries as before.
 */
export function retryWithinDeadline(): GrpcInterceptor {
  const defaults = defaultGrpcRetryOptions();
  return (options, nextCall) => {
    const deadline = typeof options.deadline === 'number' ? options.deadline : (options.deadline?.getTime() ?? Infinity);
    let delayMs = 0;
    return makeGrpcRetryInterceptor({
      retryableDecider(attempt, status) {
        if (!defaults.retryableDecider(attempt, status)) return false;
        delayMs = defaults.delayFunction(attempt, status);
        return Date.now() + delayMs < deadline;
      },
      delayFunction: () => delayMs,
    })(options, nextCall);
  };
}
