import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { open, signHmacSha256, type EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import { loadDispatch, recordDispatchAttempt } from '../lib/db/repositories/subscribers.ts';
import type { Logger } from '../lib/logger.ts';
import type { WorkerMetrics } from '../lib/metrics.ts';
import { excerpt, OutboundRefusedError, ResponseTooLargeError, type Outbound } from './outbound.ts';
import { parseRetryAfter } from './providers/port.ts';
import type { Dispatch } from './events.ts';

export interface DispatchActivityDeps {
  db: Db;
  keys: EncryptionKeys;
  outbound: Outbound;
  logger: Logger;
  metrics?: WorkerMetrics;
}

export const DispatchFailureTypes = {
  rejected: 'SubscriberRejected',
  unreachable: 'SubscriberUnreachable',
} as const;

export interface DispatchOutcome {
  delivered: boolean;
  statusCode?: number;
  /** Why nothing was sent: the subscriber or the event is gone, or an earlier attempt succeeded. */
  skipped?: 'subscriber deleted' | 'event deleted' | 'already delivered';
}

/** The details of a SubscriberRejected failure. */
export interface DispatchRejection {
  status: number;
  /** The subscriber's Retry-After, capped. */
  retryAfterSeconds?: number;
}

/** One attempt may take this long; a slow subscriber counts as failed and is retried. */
const REQUEST_TIMEOUT_MS = 10_000;
/** An acknowledgement needs no body: a longer answer fails the attempt rather than fill the worker's memory. */
export const MAX_ANSWER_BYTES = 64 * 1024;
/** Longest Retry-After honoured within the dispatch deadline. */
const MAX_RETRY_AFTER_SECONDS = 60 * 60;

export function createDispatchActivities({ db, keys, outbound, logger, metrics }: DispatchActivityDeps) {
  return {
    /**
     * Sends one event to one subscriber, signed with the subscriber's secret
     * (`X-Forgelink-Signature: sha256=<hex HMAC-SHA256 of the body>`), and records the attempt's
     * outcome. A non-2xx answer or a network error fails the attempt so the workflow's retry
     * policy tries again with backoff until the dispatch deadline; an event the subscriber already
     * acknowledged is not sent again. Subscribers deduplicate on X-Forgelink-Event-Id, which stays
     * the same across attempts (an acknowledgement lost in transit means a second send).
     */
    async dispatchEvent({ eventId, subscriberId, firstAttempt = 1 }: Dispatch): Promise<DispatchOutcome> {
      const attempt = Context.current().info.attempt + firstAttempt - 1;
      const skipped = (outcome: DispatchOutcome) => {
        metrics?.dispatchAttempt('skipped');
        return outcome;
      };
      const found = await loadDispatch(db, subscriberId, eventId);
      if (!found) return skipped({ delivered: false, skipped: 'subscriber deleted' });
      const { subscriber, event, delivered } = found;
      if (!event) return skipped({ delivered: false, skipped: 'event deleted' });
      if (delivered) return skipped({ delivered: true, skipped: 'already delivered' });

      const body = JSON.stringify({ id: event.id, receivedAt: event.receivedAt.toISOString(), ...event.event });
      const headers = {
        'content-type': 'application/json',
        'user-agent': 'forgelink-dispatch',
        'x-forgelink-signature': signHmacSha256(open(keys, subscriber.secret, subscriber.id), body),
        'x-forgelink-event': event.event.kind,
        'x-forgelink-event-id': event.id,
        'x-forgelink-attempt': String(attempt),
      };
      const started = performance.now();
      const record = (outcome: { succeeded: boolean; statusCode?: number; error?: string }) =>
        recordDispatchAttempt(db, { subscriberId, eventId, attempt, durationMs: Math.round(performance.now() - started), ...outcome });

      let response: Response;
      try {
        // Redirects are not followed: the registered URL is the one that was checked.
        response = await outbound.fetch(subscriber.url, { method: 'POST', headers, body, redirects: 'none', timeoutMs: REQUEST_TIMEOUT_MS, maxBodyBytes: MAX_ANSWER_BYTES });
        await response.arrayBuffer();
      } catch (error) {
        const reason = describeNetworkError(error);
        await record({ succeeded: false, error: reason });
        logger.warn({ eventId, subscriberId, attempt, reason }, 'subscriber unreachable');
        // An address the policy refuses stays refused: retrying would only repeat the refusal.
        const nonRetryable = error instanceof OutboundRefusedError || (error as Error | undefined)?.cause instanceof OutboundRefusedError;
        metrics?.dispatchAttempt(nonRetryable ? 'refused' : 'unreachable', (performance.now() - started) / 1000);
        throw ApplicationFailure.create({ type: DispatchFailureTypes.unreachable, message: `subscriber ${subscriberId} unreachable: ${reason}`, nonRetryable });
      }
      metrics?.dispatchAttempt(response.status >= 200 && response.status < 300 ? 'delivered' : 'rejected', (performance.now() - started) / 1000);
      if (response.status >= 200 && response.status < 300) {
        await record({ succeeded: true, statusCode: response.status });
        return { delivered: true, statusCode: response.status };
      }
      const error = response.status >= 300 && response.status < 400 ? 'redirects are not followed' : `answered ${response.status}`;
      await record({ succeeded: false, statusCode: response.status, error });
      logger.warn({ eventId, subscriberId, attempt, status: response.status }, 'subscriber rejected the event');
      const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
      const retryAfterSeconds = retryAfter !== undefined ? Math.min(retryAfter, MAX_RETRY_AFTER_SECONDS) : undefined;
      const details: DispatchRejection = { status: response.status, ...(retryAfterSeconds !== undefined ? { retryAfterSeconds } : {}) };
      throw ApplicationFailure.create({
        type: DispatchFailureTypes.rejected,
        message: `subscriber ${subscriberId} ${error}`,
        // Honoured by the retry policy of a regular activity; the workflow reads the details after
        // the inline first attempt (a failure reaching workflow code does not carry nextRetryDelay).
        nextRetryDelay: retryAfterSeconds !== undefined ? `${retryAfterSeconds}s` : undefined,
        details: [details],
      });
    },
  };
}

function describeNetworkError(error: unknown): string {
  if (error instanceof Error && error.name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
  if (error instanceof ResponseTooLargeError) return `answer longer than ${error.limit} bytes`;
  if (error instanceof OutboundRefusedError) return error.message;
  const e = error as { code?: string; message?: string; cause?: { code?: string; message?: string } } | undefined;
  return excerpt(e?.code ?? e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(error));
}
