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
  /**
   * From now on the endpoint hangs: it reads each delivery and answers none until `release()`,
   * then acknowledges them all (a subscriber that takes as long as a tenant wants).
   */
  hold(): SubscriberHold;
  /** Called with each delivery as it arrives, before it is answered (awaited: the answer waits for it). */
  onDelivery?: (event: ReceivedEvent) => void | Promise<void>;
  close(): Promise<void>;
}

export interface SubscriberHold {
  /** Deliveries that arrived while held. */
  readonly arrived: number;
  /** Resolves once `count` deliveries have arrived while held. */
  arrivals(count: number): Promise<void>;
  release(): void;
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
  let held: { released: Promise<void>; arrived: () => void } | undefined;
  const server = new FakeHttpServer().route('POST', '/events', 'deliver', async (req) => {
    const event: ReceivedEvent = {
      headers: req.headers,
      rawBody: req.rawBody,
      body: req.body as ReceivedEvent['body'],
      signatureValid: signatureMatches(secret, req.rawBody, req.headers['x-forgelink-signature']),
    };
    await subscriber.onDelivery?.(event);
    if (held) {
      const { released, arrived } = held;
      arrived();
      await released;
    }
    received.push(event);
    return { status: 204 };
  });
  const base = await server.start();
  const subscriber: FakeSubscriber = {
    url: `${base}/events`,
    server,
    received,
    verifyWith(value) {
      secret = value;
    },
    hold() {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let arrived = 0;
      const waiting: { count: number; resolve: () => void }[] = [];
      held = {
        released,
        arrived: () => {
          arrived++;
          for (const w of waiting.filter((w) => w.count <= arrived)) w.resolve();
        },
      };
      return {
        get arrived() {
          return arrived;
        },
        arrivals: (count) => (arrived >= count ? Promise.resolve() : new Promise<void>((resolve) => waiting.push({ count, resolve }))),
        release: () => {
          held = undefined;
          release();
        },
      };
    },
    close: () => server.close(),
  };
  return subscriber;
}
