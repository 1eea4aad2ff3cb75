import { readFileSync } from 'node:fs';
import type { TLSConfig } from '@temporalio/client';
import type { Config } from '../config.ts';

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
