import { Context, type Info } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { open, signHmacSha256, type EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import {
  claimDueDispatches,
  deferSubscriber,
  dispatchCounts,
  giveUpPendingDispatches,
  listUndeliveredDispatches,
  loadEventsForDispatch,
  pendingDispatchOrganizations,
  recordQueuedAttempt,
  releaseDispatch,
} from '../lib/db/repositories/event-dispatches.ts';
import { failedDispatchAttempt, loadDispatch, loadSubscriberForDispatch, recordDispatchAttempt, type FailedDispatchAttempt } from '../lib/db/repositories/subscribers.ts';
import { HostLookupFailedError } from '../lib/dns.ts';
import { createLimiter } from '../lib/limiter.ts';
import type { Logger } from '../lib/logger.ts';
import type { DispatchGiveUpReason, WorkerMetrics } from '../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, admitActivity, holdingAdmission } from './activity-admission.ts';
import { activityCancellations, excerpt, OutboundRefusedError, ResponseTooLargeError, type Outbound } from './outbound.ts';
import { parseRetryAfter } from './providers/port.ts';
import type { Dispatch } from './events.ts';
import { permanentSetupFailure } from './errors.ts';
import { INLINE_NOT_ADMITTED, type InlineAdmission, withAdmission } from './inline-admission.ts';

export interface DispatchActivityDeps {
  /** Admission of tenant-facing calls into workflow tasks (activities/inline-admission.ts), one per worker. */
  inline?: InlineAdmission;
  /** Admission of tenant-facing activities into activity slots (activities/activity-admission.ts), one per worker. */
  activitySlots?: InlineAdmission;
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
  /** The subscriber's Retry-After, in whole seconds (rounded up), capped at an hour. */
  retryAfterSeconds?: number;
}

/** One attempt may take this long; a slow subscriber counts as failed and is retried. */
const REQUEST_TIMEOUT_MS = 10_000;
/** An acknowledgement needs no body: a longer answer fails the attempt rather than fill the worker's memory. */
export const MAX_ANSWER_BYTES = 64 * 1024;
/** Longest Retry-After honoured within the dispatch deadline. */
const MAX_RETRY_AFTER_SECONDS = 60 * 60;

/** One attempt's outcome, as recorded and as the caller acts on it. */
type AttemptOutcome =
  | { succeeded: true; statusCode: number; durationMs: number }
  | {
      succeeded: false;
      statusCode?: number;
      /** What dispatch_attempts records. */
      error: string;
      durationMs: number;
      type: (typeof DispatchFailureTypes)[keyof typeof DispatchFailureTypes];
      message: string;
      /** An address the policy refuses stays refused: retrying would only repeat the refusal. */
      permanent: boolean;
      retryAfterSeconds?: number;
    };

export interface SubscriberForDispatch {
  id: string;
  url: string;
  secret: string;
}

/**
 * Sends one event to one subscriber, signed with the subscriber's secret, through the guarded
 * outbound layer (no redirects, the address checked at connect time, a timeout, the answer capped).
 */
async function sendToSubscriber(
  { keys, outbound, logger, metrics }: Pick<DispatchActivityDeps, 'keys' | 'outbound' | 'logger' | 'metrics'>,
  subscriber: SubscriberForDispatch,
  event: { id: string; receivedAt: Date; event: { kind: string } & object },
  attempt: number,
  timeoutMs = REQUEST_TIMEOUT_MS,
): Promise<AttemptOutcome> {
  const subscriberId = subscriber.id;
  const eventId = event.id;
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
  const elapsed = () => Math.round(performance.now() - started);

  let response: Response;
  try {
    // Redirects are not followed: the registered URL is the one that was checked.
    response = await outbound.fetch(subscriber.url, { method: 'POST', headers, body, redirects: 'none', timeoutMs, maxBodyBytes: MAX_ANSWER_BYTES });
    await response.arrayBuffer();
  } catch (error) {
    const reason = describeNetworkError(error, timeoutMs);
    logger.warn({ eventId, subscriberId, attempt, reason }, 'subscriber unreachable');
    const permanent = error instanceof OutboundRefusedError || (error as Error | undefined)?.cause instanceof OutboundRefusedError;
    metrics?.dispatchAttempt(permanent ? 'refused' : 'unreachable', (performance.now() - started) / 1000);
    return { succeeded: false, error: reason, durationMs: elapsed(), type: DispatchFailureTypes.unreachable, message: `subscriber ${subscriberId} unreachable: ${reason}`, permanent };
  }
  metrics?.dispatchAttempt(response.status >= 200 && response.status < 300 ? 'delivered' : 'rejected', (performance.now() - started) / 1000);
  if (response.status >= 200 && response.status < 300) return { succeeded: true, statusCode: response.status, durationMs: elapsed() };
  const error = response.status >= 300 && response.status < 400 ? 'redirects are not followed' : `answered ${response.status}`;
  logger.warn({ eventId, subscriberId, attempt, status: response.status }, 'subscriber rejected the event');
  const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
  return {
    succeeded: false,
    statusCode: response.status,
    error,
    durationMs: elapsed(),
    type: DispatchFailureTypes.rejected,
    message: `subscriber ${subscriberId} ${error}`,
    permanent: false,
    // The subscriber's (a tenant's) value, bounded: whole seconds (it may say 1.5), at most an hour.
    ...(retryAfter !== undefined ? { retryAfterSeconds: Math.min(Math.ceil(retryAfter), MAX_RETRY_AFTER_SECONDS) } : {}),
  };
}

/**
 * What one attempt needs: the subscriber with its sealed secret, the event (undefined: deleted) and
 * whether the subscriber already acknowledged it. Read by loadDispatch, or handed over by a
 * recording that has just inserted the event (no attempt of it can exist yet).
 */
export interface DispatchTarget {
  subscriber: SubscriberForDispatch & { organization_id: string };
  event: { id: string; receivedAt: Date; event: { kind: string } & object } | undefined;
  delivered: boolean;
}

/**
 * One attempt (number `attempt`) to send one event to one subscriber, and its recording: the body
 * of dispatchEvent (below), and of the first attempts a recording makes inside its own local
 * activity (createFirstAttempts). Throws the failure the run acts on (SubscriberRejected,
 * SubscriberUnreachable, not admitted) after recording the attempt.
 */
async function attemptDispatch(
  { db, keys, outbound, logger, metrics, inline: admission, activitySlots }: DispatchActivityDeps,
  { eventId, subscriberId, askAdmission, refusedWaitMs }: Dispatch,
  attempt: number,
  known?: DispatchTarget,
  timeoutMs = REQUEST_TIMEOUT_MS,
): Promise<DispatchOutcome> {
  const skipped = (outcome: DispatchOutcome) => {
    metrics?.dispatchAttempt('skipped');
    return outcome;
  };
  const found = known ?? (await loadDispatch(db, subscriberId, eventId));
  if (!found) return skipped({ delivered: false, skipped: 'subscriber deleted' });
  const { subscriber, event, delivered } = found;
  // A regular attempt holds an activity slot until it ends: asked once the organization is known, before any call.
  // Refused with no time left to ask again, the pair is given up on: counted here, once, as a pair the deadline found waiting.
  admitActivity(activitySlots, { organizationId: subscriber.organization_id, askAdmission, refusedWaitMs }, (last) => {
    metrics?.dispatchAttempt('not_admitted');
    if (last) metrics?.dispatchGaveUp('deadline');
  });
  if (!event) return skipped({ delivered: false, skipped: 'event deleted' });
  if (delivered) return skipped({ delivered: true, skipped: 'already delivered' });

  // Asked after the database read, before the call: the subscriber's answer time is what holds
  // the slot. The run's first attempts, side by side in one workflow task, take one place.
  const outcome = await withAdmission(
    admission,
    { organizationId: subscriber.organization_id, askAdmission },
    () => sendToSubscriber({ keys, outbound, logger, metrics }, subscriber, event, attempt, timeoutMs),
    () => metrics?.dispatchAttempt('not_admitted'),
  );
  await recordDispatchAttempt(db, {
    subscriberId,
    eventId,
    attempt,
    durationMs: outcome.durationMs,
    succeeded: outcome.succeeded,
    ...(outcome.statusCode !== undefined ? { statusCode: outcome.statusCode } : {}),
    ...(outcome.succeeded ? {} : { error: outcome.error, ...(outcome.retryAfterSeconds !== undefined ? { retryAfterSeconds: outcome.retryAfterSeconds } : {}) }),
  });
  if (outcome.succeeded) return { delivered: true, statusCode: outcome.statusCode };
  // Counted here, after the attempt is recorded, by the attempt that ends the retries: once per
  // pair, whatever the retries before it (a replay of the run does not run activities again).
  const last = isLastAttempt(Context.current().info, outcome);
  if (last) metrics?.dispatchGaveUp(giveUpReason(outcome));
  if (outcome.type === DispatchFailureTypes.unreachable) {
    throw ApplicationFailure.create({ type: outcome.type, message: outcome.message, nonRetryable: last || outcome.permanent });
  }
  const { retryAfterSeconds } = outcome;
  const details: DispatchRejection = { status: outcome.statusCode!, ...(retryAfterSeconds !== undefined ? { retryAfterSeconds } : {}) };
  throw ApplicationFailure.create({
    type: outcome.type,
    message: outcome.message,
    nonRetryable: last,
    // Honoured by the retry policy of a regular activity; the workflow reads the details after
    // the inline first attempt (a failure reaching workflow code does not carry nextRetryDelay).
    nextRetryDelay: retryAfterSeconds !== undefined && !last ? `${retryAfterSeconds}s` : undefined,
    details: [details],
  });
}

/** A first attempt the recording made inside its own local activity (createFirstAttempts): its outcome, or its failure as data. */
export type FirstAttempt = DispatchOutcome | { failed: FirstAttemptFailure };

/** The failure the run acts on as it acts on a failed inline attempt's (workflows/event.ts): type, message, and a rejection's status and Retry-After. */
export interface FirstAttemptFailure {
  type: string;
  message: string;
  details?: DispatchRejection;
}

/** The activity type a refused first attempt is counted under (forgelink_activities_not_admitted_total), as when it was a local activity of its own. */
const FIRST_ATTEMPT_ACTIVITY = 'dispatchEvent';

/**
 * The first attempts of a recorded delivery's pairs, made by the recording's own local activity
 * (recordEventAndDispatch) right after its transaction, side by side, each asking the worker's
 * inline admission (the run's calls take one place): what dispatchEvent does as a local activity
 * of its own, without a second local activity and workflow activation per run. Each attempt is
 * attempt 1 whatever the recording's own attempt; a pair whose event the recording has just
 * inserted comes with what the attempt needs (`known`), so it reads nothing first; any other pair
 * (a repeat of the recording) whose recorded attempt failed is not sent, it comes back as that
 * failure (the run goes on with attempt 2 after what is left of its Retry-After). Never throws:
 * each failure comes back as data (the run retries it as a regular activity, as before), counted
 * and logged as the interceptors count and log a refused or failed local activity.
 */
export function createFirstAttempts(deps: DispatchActivityDeps) {
  const { logger, metrics } = deps;
  const failureOf = (error: unknown): FirstAttemptFailure => {
    const failure = permanentSetupFailure(error) ?? error;
    if (!(failure instanceof ApplicationFailure)) {
      logger.warn({ err: failure }, 'a first dispatch attempt failed');
      return { type: (failure as Error | undefined)?.name ?? 'Error', message: (failure as Error | undefined)?.message ?? String(failure) };
    }
    if (failure.type === INLINE_NOT_ADMITTED) {
      metrics?.activityNotAdmitted(FIRST_ATTEMPT_ACTIVITY, 'workflow_task');
      logger.info({ slot: 'workflow_task', reason: failure.message }, 'activity not admitted: it made no call');
    }
    const details = failure.details?.[0] as DispatchRejection | undefined;
    return { type: failure.type ?? 'Error', message: failure.message, ...(details ? { details } : {}) };
  };
  /**
   * `leftMs`: what the local activity's start-to-close timeout leaves after the recording. Under
   * FIRST_ATTEMPTS_MIN_LEFT_MS (a slow recording: lock or pool waits), no pair is attempted here:
   * each comes back not admitted, and the run makes it at once as a regular activity, still
   * attempt 1, rather than let a subscriber's 10 s time the whole local activity out (which would
   * throw every outcome away and redo the recording and the attempts); but a repeat's pair with a
   * recorded failure comes back as that failure then too. Otherwise each request may
   * take at most what is left less FIRST_ATTEMPTS_MARGIN_MS (for recording the attempt), and 10 s.
   */
  return (pairs: readonly { dispatch: Dispatch; known?: DispatchTarget }[], leftMs = Number.POSITIVE_INFINITY): Promise<FirstAttempt[]> => {
    const inline = leftMs >= FIRST_ATTEMPTS_MIN_LEFT_MS;
    const notInline = { type: INLINE_NOT_ADMITTED, message: `not attempted inline: the recording left ${Math.round(leftMs)} ms of its local activity's time` };
    if (!inline) logger.info({ pairs: pairs.length, leftMs: Math.round(leftMs) }, 'first attempts not made inline: the recording left too little of its local activity\'s time');
    const timeoutMs = Math.min(REQUEST_TIMEOUT_MS, leftMs - FIRST_ATTEMPTS_MARGIN_MS);
    const attempt = async ({ dispatch, known }: { dispatch: Dispatch; known?: DispatchTarget }): Promise<FirstAttempt> => {
      // A repeat (the local activity executed again after its attempts were recorded: it timed
      // out, its worker died, a redelivery): a pair whose attempt failed is not sent again at once,
      // it goes on as a failed first attempt does, after its backoff or what is left of its
      // Retry-After, as attempt 2, also when too little time is left to attempt pairs inline (as
      // not admitted, the run would send it at once as attempt 1). A pair never attempted, or
      // whose attempt was lost before it was recorded, is attempted, or with too little time left
      // comes back not admitted (an acknowledged one is skipped by attemptDispatch's read).
      const failed = known ? undefined : await failedDispatchAttempt(deps.db, dispatch.subscriberId, dispatch.eventId);
      if (failed) {
        logger.info({ eventId: dispatch.eventId, subscriberId: dispatch.subscriberId, attempt: failed.attempt, waitSeconds: failed.waitSeconds }, 'first attempt already made and failed: not sent again inline');
        return { failed: recordedFailure(dispatch.subscriberId, failed) };
      }
      if (!inline) return { failed: notInline };
      return attemptDispatch(deps, { eventId: dispatch.eventId, subscriberId: dispatch.subscriberId, askAdmission: true }, 1, known, timeoutMs);
    };
    return Promise.all(pairs.map((pair) => attempt(pair).catch((error: unknown) => ({ failed: failureOf(error) }))));
  };
}

/** A recorded failed attempt as the failure the run acts on (attemptDispatch's, with what is left of its Retry-After). */
function recordedFailure(subscriberId: string, { statusCode, error, waitSeconds }: FailedDispatchAttempt): FirstAttemptFailure {
  if (statusCode === null) return { type: DispatchFailureTypes.unreachable, message: `subscriber ${subscriberId} unreachable: ${error ?? 'unknown error'}` };
  return {
    type: DispatchFailureTypes.rejected,
    message: `subscriber ${subscriberId} ${error ?? `answered ${statusCode}`}`,
    details: { status: statusCode, ...(waitSeconds > 0 ? { retryAfterSeconds: waitSeconds } : {}) },
  };
}

/** Time a first attempt inside the recording's local activity keeps, past its request, to record itself and return. */
export const FIRST_ATTEMPTS_MARGIN_MS = 2_000;
/** The least of the local activity's time the recording must leave for its first attempts to be made inline (a request's 10 s and the margin). */
export const FIRST_ATTEMPTS_MIN_LEFT_MS = REQUEST_TIMEOUT_MS + FIRST_ATTEMPTS_MARGIN_MS;

export type FirstAttempts = ReturnType<typeof createFirstAttempts>;

/** Why a failed attempt that is the last one gives the pair up. */
function giveUpReason(outcome: Extract<AttemptOutcome, { succeeded: false }>): DispatchGiveUpReason {
  if (outcome.permanent) return 'refused';
  return outcome.type === DispatchFailureTypes.unreachable ? 'unreachable' : 'rejected';
}

/**
 * A retry must be due this long before the activity's schedule-to-close deadline to be made. The
 * activity then says "no retry" itself (a non-retryable failure) rather than leave the call to the
 * server, whose clock reads the deadline a round trip later: the attempt that gives up is the one
 * that knows it, so it is counted once.
 */
const LAST_RETRY_MARGIN_MS = 1000;

/**
 * Whether this failed attempt of a regular dispatchEvent activity is its last: the address is
 * refused, the retry policy's attempts are used up, or the next retry (Retry-After, else the
 * policy's backoff) would fall past the schedule-to-close deadline, the dispatch deadline the
 * workflow gave it. The inline first attempt (a local activity) is never the last: the workflow
 * retries it as an activity unless the deadline leaves no time for one at all (a dispatch deadline
 * shorter than the subscriber's Retry-After), which is given up in workflow code and not counted.
 */
function isLastAttempt(info: Info, outcome: Extract<AttemptOutcome, { succeeded: false }>, now = Date.now()): boolean {
  if (info.isLocal) return false;
  if (outcome.permanent) return true;
  const policy = info.retryPolicy;
  if (policy?.maximumAttempts && info.attempt >= policy.maximumAttempts) return true;
  if (!info.scheduleToCloseTimeoutMs) return false;
  const initial = typeof policy?.initialInterval === 'number' ? policy.initialInterval : 1000;
  const coefficient = policy?.backoffCoefficient ?? 2;
  const maximum = typeof policy?.maximumInterval === 'number' ? policy.maximumInterval : 100 * initial;
  const backoffMs = outcome.retryAfterSeconds !== undefined ? outcome.retryAfterSeconds * 1000 : Math.min(initial * coefficient ** (info.attempt - 1), maximum);
  return now + backoffMs + LAST_RETRY_MARGIN_MS >= info.scheduledTimestampMs + info.scheduleToCloseTimeoutMs;
}

/** The queue's backoff: the second attempt 1 s after the first, each later one twice as long after, at most 10 minutes apart. */
export function queuedRetryDelayMs(attemptsMade: number): number {
  return Math.min(QUEUED_FIRST_RETRY_MS * 2 ** Math.max(0, attemptsMade - 1), QUEUED_MAX_RETRY_MS);
}
const QUEUED_FIRST_RETRY_MS = 1000;
const QUEUED_MAX_RETRY_MS = 10 * 60 * 1000;

/** Pairs sent at once by one drain. */
export const DRAIN_CONCURRENCY = 16;
/** Pairs claimed per read. */
const DRAIN_BATCH = 4 * DRAIN_CONCURRENCY;
/** A claimed pair is another drain's to take again only after this (past one attempt's timeout and its recording). */
const DRAIN_LEASE_MS = REQUEST_TIMEOUT_MS + 5_000;
/** One drain stops claiming after this and returns; the run calls the next one at once (the activity's start-to-close covers it). */
export const DRAIN_BUDGET_MS = 60_000;
/** Undelivered pairs a run's result names; the rest are counted. */
export const UNDELIVERED_LISTED = 100;

export interface DrainInput {
  /** The event run's workflow id: its queue in event_dispatches. */
  runKey: string;
  /** ISO time the dispatch deadline passes: no attempt after it, pairs still pending are given up on. */
  deadlineAt: string;
  /**
   * Set by workflow code that can take a refusal (patched('drain-activity-admission')): the drain
   * then asks the worker's admission into activity slots (activities/activity-admission.ts) for
   * each organization its run's pending pairs go to, before it claims any, and claims only the
   * admitted organizations' pairs; refused for all, it claims and sends nothing and fails
   * ActivityNotAdmitted, and the run drains again after a timer.
   */
  askAdmission?: boolean;
}

export interface DrainResult {
  /** Attempts this drain made. */
  attempted: number;
  /** The run's pairs by state, after this drain. */
  pending: number;
  delivered: number;
  undeliveredCount: number;
  /** ISO time the earliest pending pair falls due (absent when none is pending). */
  nextDueAt?: string;
  /** Stopped at its time budget with pairs still due: call again at once. */
  moreDue: boolean;
  /** Once none is pending: the first UNDELIVERED_LISTED pairs given up on, with the last reason. */
  undelivered?: { eventId: string; subscriberId: string; reason: string }[];
}

export function createDispatchActivities(deps: DispatchActivityDeps) {
  const { db, keys, outbound, logger, metrics, activitySlots } = deps;
  return holdingAdmission({
    /**
     * Sends one event to one subscriber, signed with the subscriber's secret
     * (`X-Forgelink-Signature: sha256=<hex HMAC-SHA256 of the body>`), and records the attempt's
     * outcome. A non-2xx answer or a network error fails the attempt so the workflow's retry
     * policy tries again with backoff until the dispatch deadline; an event the subscriber already
     * acknowledged is not sent again. Subscribers deduplicate on X-Forgelink-Event-Id, which stays
     * the same across attempts (an acknowledgement lost in transit means a second send).
     *
     * Run as a regular activity by a run that can take a refusal (`askAdmission`), it asks the
     * worker's admission into activity slots for the subscriber's organization
     * (activities/activity-admission.ts): not admitted, it sends nothing, records no attempt and
     * fails with ActivityNotAdmitted, and the run schedules it again after a timer, from the same
     * attempt.
     *
     * Run inside a workflow task (a local activity) by a run that can take a refusal
     * (`askAdmission`), it first asks the worker's admission for the subscriber's organization: not
     * admitted, it sends nothing, records no attempt and fails with InlineNotAdmitted, and the run
     * makes the same attempt as a regular activity (a slow subscriber then holds an activity slot,
     * not one of the workflow task slots every organization's runs need).
     */
    async dispatchEvent(dispatch: Dispatch): Promise<DispatchOutcome> {
      return attemptDispatch(deps, dispatch, Context.current().info.attempt + (dispatch.firstAttempt ?? 1) - 1);
    },

    /**
     * Sends a large fan-out's due pairs (event_dispatches of the run `runKey`), DRAIN_CONCURRENCY
     * at a time, and records each attempt with the pair's new state in one transaction: a pair
     * recorded delivered is never claimed again, so a retried drain does not send it twice. A
     * drain lost mid-send (its worker died after the subscriber answered, before the recording)
     * leaves the pair due again once its lease ends: that subscriber gets the event twice, which
     * X-Forgelink-Event-Id lets it recognise (at-least-once). A failed pair is due again after the
     * queue's backoff or the subscriber's Retry-After (at most an hour), whichever is later, and the
     * subscriber's other pairs wait as long; a pair whose next attempt would fall past the deadline
     * is given up on. Returns the counts and when the next pair falls due.
     */
    async drainDispatches({ runKey, deadlineAt, askAdmission }: DrainInput): Promise<DrainResult> {
      const deadline = Date.parse(deadlineAt);
      const started = Date.now();
      const cancellations = activityCancellations();
      let attempted = 0;
      let moreDue = false;
      const subscribers = new Map<string, SubscriberForDispatch | null>();
      /** Subscribers that failed during this drain, and until when they are left alone. */
      const pausedUntil = new Map<string, number>();
      const limiter = createLimiter(DRAIN_CONCURRENCY);

      const subscriberOf = async (id: string) => {
        if (!subscribers.has(id)) subscribers.set(id, (await loadSubscriberForDispatch(db, id)) ?? null);
        return subscribers.get(id)!;
      };

      if (Date.now() < deadline) {
        // It holds its activity slot while subscribers answer, up to DRAIN_BUDGET_MS: a place of
        // each organization it sends for, whose pairs alone it claims. Past the deadline it sends
        // nothing and asks nothing, so a refused run can still give its pairs up.
        const organizations = askAdmission && activitySlots ? admittedOrganizations(activitySlots, await pendingDispatchOrganizations(db, runKey)) : undefined;
        for (;;) {
          for (const signal of cancellations) signal.throwIfAborted();
          const now = Date.now();
          if (now >= deadline) break;
          if (now - started >= DRAIN_BUDGET_MS) {
            moreDue = true;
            break;
          }
          const claimed = await claimDueDispatches(db, runKey, { now: new Date(now), leaseUntil: new Date(now + DRAIN_LEASE_MS), limit: DRAIN_BATCH, ...(organizations ? { organizations } : {}) });
          if (claimed.length === 0) break;
          const events = await loadEventsForDispatch(db, claimed.map((c) => c.eventId));
          await Promise.all(
            claimed.map((pair) =>
              limiter.run(async () => {
                const subscriber = await subscriberOf(pair.subscriberId);
                const event = events.get(pair.eventId);
                // Deleted meanwhile: its rows went with it.
                if (!subscriber || !event) return;
                const paused = pausedUntil.get(pair.subscriberId);
                if (paused !== undefined && paused > Date.now()) {
                  // Left alone with the subscriber's other pairs: due again when the subscriber is.
                  await releaseDispatch(db, pair, new Date(paused));
                  return;
                }
                const attempt = pair.attempts + 1;
                attempted++;
                const outcome = await sendToSubscriber({ keys, outbound, logger, metrics }, subscriber, event, attempt);
                if (outcome.succeeded) {
                  await recordQueuedAttempt(db, { ...pair, attempt }, outcome);
                  return;
                }
                const reason = `${outcome.type}: ${outcome.message}`;
                const waitMs = Math.max(queuedRetryDelayMs(attempt), (outcome.retryAfterSeconds ?? 0) * 1000);
                const nextAt = Date.now() + waitMs;
                const givenUp = outcome.permanent || nextAt >= deadline;
                // Before anything is awaited, so no pair of this subscriber starts meanwhile.
                const pauses = !outcome.permanent && nextAt > (pausedUntil.get(pair.subscriberId) ?? 0);
                if (pauses) pausedUntil.set(pair.subscriberId, nextAt);
                const recorded = await recordQueuedAttempt(db, { ...pair, attempt }, { ...outcome, reason, nextAttemptAt: givenUp ? null : new Date(nextAt) });
                // Counted with the state change that gives the pair up, so a retried drain cannot count it again.
                if (givenUp && recorded) metrics?.dispatchGaveUp(giveUpReason(outcome));
                if (outcome.permanent) {
                  logger.warn({ runKey, eventId: pair.eventId, subscriberId: pair.subscriberId, reason }, 'event not delivered: the subscriber address is refused');
                }
                if (pauses) await deferSubscriber(db, runKey, pair.subscriberId, new Date(nextAt), `not attempted while the subscriber failed (${reason})`);
              }),
            ),
          );
        }
      }
      if (Date.now() >= deadline) {
        // Given up whether or not metrics are on (an argument of metrics?.… is not evaluated without them).
        const givenUp = await giveUpPendingDispatches(db, runKey, 'not attempted before the dispatch deadline');
        metrics?.dispatchGaveUp('deadline', givenUp);
      }
      const counts = await dispatchCounts(db, runKey);
      const result: DrainResult = {
        attempted,
        pending: counts.pending,
        delivered: counts.delivered,
        undeliveredCount: counts.undelivered,
        moreDue: moreDue && counts.pending > 0,
        ...(counts.nextDueAt ? { nextDueAt: counts.nextDueAt.toISOString() } : {}),
      };
      if (counts.pending === 0) {
        result.undelivered = await listUndeliveredDispatches(db, runKey, UNDELIVERED_LISTED);
        if (counts.undelivered > 0) logger.warn({ runKey, undelivered: counts.undelivered }, 'events not delivered before the dispatch deadline');
      }
      logger.info({ runKey, attempted, ...counts }, 'dispatch queue drained');
      return result;
    },
  });
}

/**
 * The organizations a drain sends for: those of `organizationIds` the worker admits, a place each
 * (admitActivity, given back when the drain ends), asked in a random order so that no organization
 * of a shared run is always asked last. The pairs of the others stay due for the run's next drain;
 * refused for every one, the drain fails ActivityNotAdmitted and the run drains again after a timer.
 */
function admittedOrganizations(slots: InlineAdmission, organizationIds: readonly string[]): string[] {
  const admitted: string[] = [];
  let refusal: unknown;
  const order = [...organizationIds];
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  for (const organizationId of order) {
    try {
      admitActivity(slots, { organizationId, askAdmission: true });
      admitted.push(organizationId);
    } catch (error) {
      if (!(error instanceof ApplicationFailure && error.type === ACTIVITY_NOT_ADMITTED)) throw error;
      refusal = error;
    }
  }
  if (admitted.length === 0 && refusal !== undefined) throw refusal;
  return admitted;
}

function describeNetworkError(error: unknown, timeoutMs = REQUEST_TIMEOUT_MS): string {
  if (error instanceof Error && error.name === 'TimeoutError') return `no answer within ${Math.round(timeoutMs / 100) / 10} s`;
  if (error instanceof ResponseTooLargeError) return `answer longer than ${error.limit} bytes`;
  if (error instanceof OutboundRefusedError || error instanceof HostLookupFailedError) return error.message;
  const e = error as { code?: string; message?: string; cause?: { code?: string; message?: string } } | undefined;
  return excerpt(e?.code ?? e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(error));
}
