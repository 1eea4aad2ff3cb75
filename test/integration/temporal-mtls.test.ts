import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect as connectTcp, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createServer as createTlsServer, type Server } from 'node:tls';
import { Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseConfig } from '../../lib/config.ts';
import { temporalConnectOptions } from '../../lib/temporal/connection.ts';
import { CLIENT_EXTENSIONS, makeTestCa, SERVER_EXTENSIONS } from '../support/test-ca.ts';

/**
 * temporal.tls against a frontend that demands mutual TLS: the test's own CA signs a server
 * certificate (for temporal.test only) and a client certificate; a TLS terminator that requires a
 * client certificate from that CA (ALPN h2, as gRPC needs) forwards to the run's dev server. Both
 * connections forgelink opens, the API's Client Connection (grpc-js) and the worker's
 * NativeConnection (the Rust core), get through with the configured files; without the client
 * certificate, or with the wrong server name, they do not.
 */
const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-mtls-'));
const file = (name: string) => path.join(dir, name);

describe('temporal.tls: mutual TLS to the Temporal frontend', () => {
  let terminator: Server;
  let address: string;
  const minimal = { publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: Buffer.alloc(32, 7).toString('base64') } };
  const optionsFor = (tls: Record<string, unknown>) => temporalConnectOptions(parseConfig({ ...minimal, temporal: { address, tls } }).temporal, address);

  beforeAll(async () => {
    const ca = makeTestCa(dir);
    ca.issue('server', SERVER_EXTENSIONS('DNS:temporal.test'));
    ca.issue('client', CLIENT_EXTENSIONS);
    const [host, port] = inject('temporalAddress').split(':');
    terminator = createTlsServer(
      { key: readFileSync(file('server.key')), cert: readFileSync(file('server.pem')), ca: readFileSync(file('ca.pem')), requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] },
      (socket) => {
        const upstream = connectTcp(Number(port), host!);
        socket.pipe(upstream).pipe(socket);
        const close = () => {
          socket.destroy();
          upstream.destroy();
        };
        socket.on('error', close).on('close', close);
        upstream.on('error', close).on('close', close);
      },
    );
    terminator.on('tlsClientError', () => {});
    await new Promise<void>((resolve) => terminator.listen(0, '127.0.0.1', resolve));
    address = `127.0.0.1:${(terminator.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => (terminator ? terminator.close(() => resolve()) : resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  const mtls = () => ({ caFile: file('ca.pem'), serverName: 'temporal.test', certFile: file('client.pem'), keyFile: file('client.key') });

  it("opens the API's Client connection and the worker's NativeConnection with the configured CA, server name and client certificate", async () => {
    const client = await Connection.connect(optionsFor(mtls()));
    try {
      const info = await client.workflowService.getSystemInfo({});
      expect(info.serverVersion).toBeTruthy();
    } finally {
      await client.close();
    }
    const native = await NativeConnection.connect(optionsFor(mtls()));
    await native.close();
  });

  it('fails without the client certificate, and with a server name the certificate does not carry', async () => {
    const { certFile: _cert, keyFile: _key, ...serverOnly } = mtls();
    await expect(NativeConnection.connect(optionsFor(serverOnly))).rejects.toThrow();
    await expect(Connection.connect({ ...optionsFor(serverOnly), connectTimeout: '3s' })).rejects.toThrow();
    await expect(NativeConnection.connect(optionsFor({ ...mtls(), serverName: 'other.test' }))).rejects.toThrow();
  });
});
