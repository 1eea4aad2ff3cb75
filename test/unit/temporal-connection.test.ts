import { type AddressInfo, createServer } from 'node:net';
import { Connection } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../lib/config.ts';
import { retryWithinDeadline, temporalConnectOptions } from '../../lib/temporal/connection.ts';

const minimal = { publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: Buffer.alloc(32, 7).toString('base64') } };
const files: Record<string, string> = { '/etc/temporal/ca.pem': 'CA PEM', '/etc/temporal/tls.crt': 'CLIENT CERT', '/etc/temporal/tls.key': 'CLIENT KEY' };
const readFile = (file: string) => {
  if (!(file in files)) throw new Error(`ENOENT: no such file, open '${file}'`);
  return files[file]!;
};
const optionsOf = (temporal: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => {
  const config = parseConfig({ ...minimal, temporal }, env);
  return temporalConnectOptions(config.temporal, config.temporal.address ?? '127.0.0.1:7233', readFile);
};
const text = (bytes: Uint8Array | undefined) => (bytes ? Buffer.from(bytes).toString('utf8') : undefined);

describe('temporal.tls and temporal.apiKey → connection options', () => {
  it('connects in plain text without tls or apiKey', () => {
    expect(optionsOf({ address: 'temporal:7233' })).toEqual({ address: 'temporal:7233' });
  });

  it('reads mTLS from files: server CA, server name, client certificate and key', () => {
    const options = optionsOf({
      address: 'temporal.internal:7233',
      tls: { caFile: '/etc/temporal/ca.pem', serverName: 'temporal.example', certFile: '/etc/temporal/tls.crt', keyFile: '/etc/temporal/tls.key' },
    });
    expect(options.address).toBe('temporal.internal:7233');
    const tls = options.tls as Exclude<typeof options.tls, false | undefined>;
    expect(tls.serverNameOverride).toBe('temporal.example');
    expect(text(tls.serverRootCACertificate)).toBe('CA PEM');
    expect(text(tls.clientCertPair?.crt)).toBe('CLIENT CERT');
    expect(text(tls.clientCertPair?.key)).toBe('CLIENT KEY');
  });

  it('takes inline PEM', () => {
    const tls = optionsOf({ tls: { ca: 'INLINE CA', cert: 'INLINE CERT', key: 'INLINE KEY' } }).tls as Exclude<ReturnType<typeof optionsOf>['tls'], false | undefined>;
    expect([text(tls.serverRootCACertificate), text(tls.clientCertPair?.crt), text(tls.clientCertPair?.key)]).toEqual(['INLINE CA', 'INLINE CERT', 'INLINE KEY']);
  });

  it('turns TLS on with the system roots for `tls: {}`, and leaves it to the SDK (TLS on) for an API key alone', () => {
    expect(optionsOf({ tls: {} }).tls).toEqual({});
    expect(optionsOf({ address: 'ns.acct.tmprl.cloud:7233', apiKey: 'cloud-key' })).toEqual({ address: 'ns.acct.tmprl.cloud:7233', apiKey: 'cloud-key' });
    expect(optionsOf({ apiKey: 'k', tls: { enabled: false } }).tls).toBe(false);
  });

  it("honours the Temporal SDK's environment variables, with FORGELINK_TEMPORAL_* winning", () => {
    const env = {
      TEMPORAL_ADDRESS: 'sdk:7233',
      TEMPORAL_NAMESPACE: 'sdk-ns',
      TEMPORAL_API_KEY: 'sdk-key',
      TEMPORAL_TLS_SERVER_CA_CERT_PATH: '/etc/temporal/ca.pem',
      TEMPORAL_TLS_SERVER_NAME: 'sdk.example',
      TEMPORAL_TLS_CLIENT_CERT_DATA: 'ENV CERT',
      TEMPORAL_TLS_CLIENT_KEY_PATH: '/etc/temporal/tls.key',
    };
    const config = parseConfig({ ...minimal, temporal: { address: 'file:7233' } }, env);
    expect(config.temporal).toMatchObject({ address: 'sdk:7233', namespace: 'sdk-ns', apiKey: 'sdk-key' });
    const options = temporalConnectOptions(config.temporal, config.temporal.address!, readFile);
    const tls = options.tls as Exclude<typeof options.tls, false | undefined>;
    expect([tls.serverNameOverride, text(tls.serverRootCACertificate), text(tls.clientCertPair?.crt), text(tls.clientCertPair?.key)]).toEqual(['sdk.example', 'CA PEM', 'ENV CERT', 'CLIENT KEY']);
    expect(parseConfig(minimal, { ...env, FORGELINK_TEMPORAL_ADDRESS: 'forgelink:7233' }).temporal.address).toBe('forgelink:7233');
    expect(parseConfig(minimal, { TEMPORAL_TLS: 'false' }).temporal.tls?.enabled).toBe(false);
    expect(parseConfig(minimal, { TEMPORAL_TLS: 'true' }).temporal.tls?.enabled).toBe(true);
  });

  it('refuses half a client pair, a key given twice, and an unknown key, naming each', () => {
    const errorOf = (temporal: Record<string, unknown>) => {
      try {
        parseConfig({ ...minimal, temporal });
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return (error as Error).message;
      }
      throw new Error('expected a ConfigError');
    };
    expect(errorOf({ tls: { certFile: '/c' } })).toMatch(/temporal\.tls\.key: a client certificate and its key go together/);
    expect(errorOf({ tls: { key: 'K' } })).toMatch(/temporal\.tls\.cert: a client certificate and its key go together/);
    expect(errorOf({ tls: { ca: 'A', caFile: '/a' } })).toMatch(/temporal\.tls\.ca: give ca or caFile, not both/);
    expect(errorOf({ tls: { clientCert: 'x' } })).toMatch(/temporal\.tls: Unrecognized key/);
  });

  it('names the key of a PEM file it cannot read, and never puts PEM or API key into that message', () => {
    const config = parseConfig({ ...minimal, temporal: { apiKey: 'secret-api-key', tls: { caFile: '/missing/ca.pem', cert: 'SECRET CERT', key: 'SECRET KEY' } } });
    expect(() => temporalConnectOptions(config.temporal, 'x:7233', readFile)).toThrow(/^temporal\.tls\.caFile: cannot read \/missing\/ca\.pem: ENOENT/);
    try {
      temporalConnectOptions(config.temporal, 'x:7233', readFile);
    } catch (error) {
      expect((error as Error).message).not.toMatch(/SECRET|secret-api-key/);
    }
  });
});

describe('retryWithinDeadline: the API connection retries no call past its deadline', () => {
  /** A loopback port nothing listens on: every attempt is refused at once (Temporal stopped). */
  async function refusedAddress() {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return `127.0.0.1:${port}`;
  }

  // The SDK's own retries wait out their backoff past the deadline and fail only after it
  // (DEADLINE_EXCEEDED; 3.3 s measured for a 3 s deadline, up to ~6 s); these fail before it with the last refusal.
  it('fails a refused call before its deadline, with UNAVAILABLE', async () => {
    const connection = Connection.lazy({ address: await refusedAddress(), interceptors: [retryWithinDeadline()] });
    try {
      const started = performance.now();
      const error = await connection.withDeadline(Date.now() + 3000, () => connection.workflowService.getSystemInfo({})).catch((e: unknown) => e);
      const ms = performance.now() - started;
      expect((error as { code?: number }).code).toBe(14);
      expect(ms).toBeLessThan(3000);
      // It did retry: the SDK's first five attempts take 1.4 s at the least (100 ms growing 1.7x, ±20 %).
      expect(ms).toBeGreaterThan(1000);
    } finally {
      await connection.close();
    }
  });
});
