import { createHash } from 'node:crypto';
import { isAccessChange, type NormalizedEvent, type Provider } from '../../lib/domain.ts';
import { serializeEvents } from '../../lib/db/repositories/deliveries.ts';
import { summarizeDelivery, type DeliverySummary } from '../../workflows/contract.ts';
import { isPing, normalizeDelivery, WebhookPayloadError, type WebhookHeaders } from './normalize.ts';
import { parseCost } from '../../lib/parse-cost.ts';
import { verifyDelivery, type DeliveryCredential } from './verify.ts';

/**
 * What the receiver does with a delivery's body, in one pure step: the ping check, the signature
 * over the body, the decoding, JSON.parse and normalization, and the events' serialization. The
 * same code runs on the event loop for small bodies and on a thread (api/webhooks/body-thread.ts)
 * for large ones, so a delivery is answered the same either way; what comes back is only what the
 * receiver needs from the events, never the events themselves (cloning half a million events back
 * to the event loop would cost it what the thread saved).
 */
export interface BodyJob {
  provider: Provider;
  headers: WebhookHeaders;
  body: Uint8Array;
  /** The credentials the body's signature must match (GitHub, Bitbucket); absent when the delivery's credential was a header, checked already. */
  credentials?: DeliveryCredential[];
  /** The most UTF-8 bytes the events may take as JSON (twice webhooks.maxBodyBytes). */
  maxEventsBytes: number;
  /**
   * The most heap its JSON may take once parsed, as parseCost counts it before the parse (a large
   * body, on a thread: maxParseCost of webhooks.maxBodyBytes); a body over it is not parsed. Absent
   * on the event loop: a body under webhooks.threadBodyBytes takes at most ~30 times its bytes.
   */
  maxParseCost?: number;
  /** Whether to compute the body's SHA-256 (a connection's delivery records it). */
  bodyDigest: boolean;
  /**
   * Whether to serialize the events here (on a thread: the event loop never holds them). On the
   * loop they are handed back instead, and serialized only for a delivery that is acted on.
   */
  serialize: boolean;
}

export type BodyOutcome =
  /** A ping: starts nothing. */
  | { kind: 'pong' }
  /** The signature does not match the credentials: the body, handed back for a check against reloaded ones. */
  | { kind: 'refused'; body: Uint8Array }
  /** Its JSON would take more heap to parse than BodyJob.maxParseCost (413): not parsed. */
  | { kind: 'tooCostly'; cost: number }
  /** Verified, but `verified` found no room for it in the budget of verified deliveries (503): not parsed. */
  | { kind: 'busy' }
  /** Not the provider's JSON (400). */
  | { kind: 'invalid'; message: string }
  | { kind: 'delivery'; delivery: ReceivedDelivery; bodyDigest?: string; events?: NormalizedEvent[] };

/** A normalized delivery as the receiver acts on it (api/webhooks/normalize.ts' NormalizedDelivery, its events summed up). */
export interface ReceivedDelivery {
  /** How many events (0: not acted on). */
  events: number;
  /** The first event's delivery id (all events of a delivery share it). */
  deliveryId?: string;
  /** The repositories the events name, each once. */
  externalIds: string[];
  /** Whether an event is an installation's access change. */
  accessChange: boolean;
  summary: DeliverySummary;
  /** With BodyJob.serialize, the events as stored (serializeEvents), null when they pass `maxEventsBytes`. */
  eventsJson?: string | null;
  instanceUrl?: string;
  installationId?: string;
  overlong?: number;
  overLimit?: true;
}

const JSON_CONTENT_TYPE = /^application\/json\s*(;|$)/i;

/**
 * The body's step. The order is the receiver's: the parse's cost (a large body), Bitbucket's
 * unsigned ping, the signature, GitHub's (signed) ping, the content type, the payload. `verified` is called once the signature matched
 * (the receiver then moves the body's bytes from the unverified budget to the verified one; false:
 * they do not fit there, and the body is not parsed).
 */
export function readDeliveryBody(job: BodyJob, verified: () => boolean | void = () => {}): BodyOutcome {
  const { provider, headers, body } = job;
  // First: a Bitbucket body without X-Event-Key is parsed for its ping check.
  if (job.maxParseCost !== undefined) {
    const cost = parseCost(body, job.maxParseCost);
    if (cost > job.maxParseCost) return { kind: 'tooCostly', cost };
  }
  const ping = isPing(provider, headers, body);
  if (ping && provider === 'bitbucket') return { kind: 'pong' };
  if (job.credentials) {
    if (!verifyDelivery(provider, headers, body, job.credentials)) return { kind: 'refused', body };
    if (verified() === false) return { kind: 'busy' };
  }
  if (ping) return { kind: 'pong' };
  if (!JSON_CONTENT_TYPE.test(headers['content-type'] ?? '')) return { kind: 'invalid', message: `content-type must be application/json, got ${headers['content-type'] ?? 'none'}` };
  let normalized;
  try {
    normalized = normalizeDelivery(provider, headers, body, { maxEventsLength: job.maxEventsBytes });
  } catch (error) {
    if (error instanceof WebhookPayloadError) return { kind: 'invalid', message: error.message };
    throw error;
  }
  const { events, instanceUrl, installationId, overlong, overLimit } = normalized;
  const delivery: ReceivedDelivery = {
    events: events.length,
    ...(events.length > 0 ? { deliveryId: events[0]!.deliveryId } : {}),
    externalIds: [...new Set(events.map((e) => e.repository.externalId))],
    accessChange: events.some(isAccessChange),
    summary: summarizeDelivery(events),
    ...(job.serialize && events.length > 0 ? { eventsJson: serializeEvents(events, job.maxEventsBytes) ?? null } : {}),
    ...(instanceUrl ? { instanceUrl } : {}),
    ...(installationId ? { installationId } : {}),
    ...(overlong ? { overlong } : {}),
    ...(overLimit ? { overLimit } : {}),
  };
  return {
    kind: 'delivery',
    delivery,
    ...(job.bodyDigest ? { bodyDigest: createHash('sha256').update(body).digest('hex') } : {}),
    ...(job.serialize ? {} : { events }),
  };
}
