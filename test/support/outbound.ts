import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createOutbound } from '../../activities/outbound.ts';

/** The tests' guarded HTTP layer: the fake servers listen on 127.0.0.1, as the test config allows. */
export const TEST_ADDRESS_POLICY = { allowHttpHosts: ['127.0.0.1', 'localhost'], allowPrivateNetworks: ['127.0.0.1'] };
export const testOutbound = createOutbound(TEST_ADDRESS_POLICY);

/** A bare HTTP server standing for a provider or subscriber that misbehaves. */
export interface Listener {
  url: string;
  port: number;
  /** TCP connections accepted: a refused call never opens one. */
  connections: number;
  close(): Promise<void>;
}

export async function listen(host: string, handler: http.RequestListener = (_, res) => res.end('{}')): Promise<Listener> {
  const server = http.createServer(handler);
  const listener: Listener = { url: '', port: 0, connections: 0, close: () => new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections()) };
  server.on('connection', () => listener.connections++);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  listener.port = (server.address() as AddressInfo).port;
  listener.url = `http://${host}:${listener.port}`;
  return listener;
}

/** Answers 200, then streams forever, writing only as fast as the reader reads. */
export const endlessAnswer: http.RequestListener = (_, res) => {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const chunk = Buffer.alloc(16 * 1024, 'x');
  const write = () => {
    if (!res.destroyed && res.write(chunk)) setImmediate(write);
  };
  res.on('drain', write);
  write();
};
