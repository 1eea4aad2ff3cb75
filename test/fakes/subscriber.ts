import { createHmac, timingSafeEqual } from 'node:crypto';
import { FakeHttpServer } from './base.ts';

/** One event as a subscriber endpoint received it and acknowledged it (2xx). */
export interface ReceivedEvent {
  headers: Record<string, string | string[] | undefined>;
  rawBody: string;
  body: { id: string; kind: string; deliveryId: string; [key: string]: unknown };
  /** X-Forgelink-Signature checked against the secret given to `verifyWith`. */
  signatureValid: boolean;
}

/**
 * An organization's event endpoint: accepts `POST /events`, checks the signature with the secret
 * the registration answered, and keeps what it acknowledged. Faults come from FakeHttpServer
 * (`server.failNext('deliver', n, { status: 503 })`); failed attempts stay in `server.calls`.
 */
export interface FakeSubscriber {
  url: string;
  server: FakeHttpServer;
  received: ReceivedEvent[];
  /** The secret from `POST …/subscribers`; deliveries before this call count as unsigned. */
  verifyWith(secret: string): void;
  close(): Promise<void>;
}

function signatureMatches(secret: string | undefined, rawBody: string, header: unknown): boolean {
  if (!secret || typeof header !== 'string') return false;
  const expected = Buffer.from(`sha256=${createHmac('sha256', secret).update(rawBody).digest('hex')}`);
  const given = Buffer.from(header);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export async function startFakeSubscriber(): Promise<FakeSubscriber> {
  let secret: string | undefined;
  const received: ReceivedEvent[] = [];
  const server = new FakeHttpServer().route('POST', '/events', 'deliver', (req) => {
    received.push({
      headers: req.headers,
      rawBody: req.rawBody,
      body: req.body as ReceivedEvent['body'],
      signatureValid: signatureMatches(secret, req.rawBody, req.headers['x-forgelink-signature']),
    });
    return { status: 204 };
  });
  const base = await server.start();
  return {
    url: `${base}/events`,
    server,
    received,
    verifyWith(value) {
      secret = value;
    },
    close: () => server.close(),
  };
}
