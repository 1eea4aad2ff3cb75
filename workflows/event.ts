import { ActivityFailure, ApplicationFailure, continueAsNew, log, patched, proxyActivities, proxyLocalActivities, sleep, workflowInfo } from '@temporalio/workflow';
import type { DispatchOutcome, DispatchRejection, FirstAttempt } from '../activities/dispatch.ts';
import type { Dispatch } from '../activities/events.ts';
import type { Activities } from '../activities/index.ts';
import { refusalOf, refusedDispatchWaitMs, refusedDrainWaitMs, refusedWaitCeilingMs } from './activity-slot.ts';
import { INLINE_NOT_ADMITTED, NETWORK_STEP_HEARTBEAT_TIMEOUT, type EventInput, type EventResult, type QueuedDispatch } from './contract.ts';
import { failureReason } from './failure-reason.ts';

// A local activity: one short database transaction, run inside the workflow task, which saves a
// round trip through the server on every delivery (the ingestion hot path). It still shows in the
// run's history (a marker with its result).
const { recordEvent } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // A database outage must not lose an acknowledged delivery: retry until it is back, on timers
  // once retries take longer than a few seconds.
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});

/**
 * New runs record their delivery and make the first attempts in one local activity
 * (recordEventAndDispatch: the attempts made right after the recording's transaction, their
 * outcomes in its result), instead of a local activity for the recording and one per first
 * attempt: each local activity costs the worker an activation of the run and a local activity
 * task of the SDK's (about 2 s of CPU per 1,000 runs in the benchmark's floor worker, README:
 * Worker memory and CPU per event). What follows a failed first attempt is the same. Runs started
 * before replay their two steps as they were.
 */
const RECORD_WITH_FIRST_ATTEMPTS = 'record-with-first-attempts';
const { recordEventAndDispatch } = proxyLocalActivities<Activities>({
  // The recording and the first attempts together: the attempts get only what the recording leaves
  // (activities/dispatch.ts createFirstAttempts: under 12 s left, none is made inline and the run
  // makes them as activities), so a slow recording and a slow subscriber do not time it out.
  startToCloseTimeout: '45 seconds',
  // As recordEvent's: a first attempt's failure never fails the activity, so only the recording is retried.
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
  localRetryThreshold: '10 seconds',
});

/** A first attempt the recording made, as the settled local activity it stands for (a failure as its ApplicationFailure). */
function settledFirstAttempt(attempt: FirstAttempt): PromiseSettledResult<DispatchOutcome> {
  if (!('failed' in attempt)) return { status: 'fulfilled', value: attempt };
  const { type, message, details } = attempt.failed;
  return { status: 'rejected', reason: ApplicationFailure.create({ type, message, nonRetryable: true, ...(details ? { details: [details] } : {}) }) };
}

// The first attempt of each dispatch runs inside the same workflow task: when subscribers answer,
// the whole run is one workflow task with no activity task, about half the server's work per event.
// A failed first attempt goes on as a regular activity, retried durably until the deadline. One the
// worker does not admit (it holds the run's workflow task slot while the subscriber answers, so the
// worker bounds how many, per organization too: activities/inline-admission.ts) is made at once as
// a regular activity, still attempt 1.
const { dispatchEvent: dispatchFirstAttempt } = proxyLocalActivities<Activities>({
  // Past the request's own 10 s timeout: the attempt is recorded before it fails.
  startToCloseTimeout: '15 seconds',
  retry: { maximumAttempts: 1 },
});

/** Backoff before the second attempt; each later one waits twice as long (so attempts at 0, 1, 3, 7 s…). */
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 10 * 60 * 1000;

/**
 * A retry held by a slow subscriber holds an activity slot, and a tenant decides how slowly its
 * subscriber answers: so later runs have their regular attempts ask the worker's admission
 * (activities/activity-admission.ts: a share of the activity slots per organization). One refused
 * made no call; the run schedules it again after a timer (refusedWaitCeilingMs: 1 s doubling while
 * refused, at most 30 s), from the same attempt. Runs started before replay their
 * activities as they were.
 */
const ACTIVITY_ADMISSION = 'dispatch-activity-admission';

/**
 * A pair refused for long waits longer between asks (refusedDispatchWaitMs: 30 s at most for the
 * first minutes, then up to a fifth of the time refused), so that refusals until the deadline stay
 * a bounded part of the run's history. Asked before a pair's second ask (the waits before are the
 * same): runs refused before wait as they did, until their next workflow task runs this code.
 */
const REFUSAL_SCHEDULE = 'dispatch-refusal-schedule';

// A large fan-out's pairs are queued in PostgreSQL and sent by one activity at a time, so the run's
// history grows with the number of rounds, not of pairs. A drain returns after a minute at most.
const { drainDispatches } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  // A database outage: retried until it is back (the drain's own deadline check ends the run).
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute' },
});

/**
 * A drain holds an activity slot for up to a minute while tenants' subscribers answer: later runs
 * have their drains ask the worker's admission (activities/activity-admission.ts), a place of each
 * organization their pending pairs go to (a drain sends for those admitted; the others' pairs wait
 * for the next round). One refused for all claimed and sent nothing; the run drains
 * again after a timer (as a refused attempt waits: 1 s doubling, at most 30 s, not past the
 * deadline, after which a drain only gives the pending pairs up and asks nothing). A refusal counts
 * as a round, so a run refused for long still continues as new. Runs started before drain as they were.
 */
const DRAIN_ADMISSION = 'drain-activity-admission';

/**
 * A drain refused for long waits longer (refusedDispatchWaitMs: as before for the first 2.5
 * minutes, then up to a fifth of the time refused, at most an hour), from its first refusal in a
 * row, carried over continue-as-new (QueuedDispatch.refusedSince). Before, it asked every 30 s
 * until the deadline (a day by default) and continuing as new every 100 rounds restarted nothing
 * but the count: ~2,900 refused activities per run per day, each a workflow task and an activity
 * task on the shared worker, so an organization whose activity share stays full (its own
 * subscribers hanging) made every one of its queued runs load the worker all day. Runs refused
 * before wait as they did until their next refusal runs this code.
 */
const DRAIN_REFUSAL_SCHEDULE = 'drain-refusal-schedule';

/** Drain rounds per run before it continues as new (each round is about 8 history events). */
const DRAIN_ROUNDS_PER_RUN = 100;
/** Shortest wait between rounds, so pairs falling due one after another are sent together. */
const MIN_ROUND_GAP_MS = 1000;

/** How long the subscriber asked to wait (Retry-After), from the failed attempt's details. */
function retryAfterMs(error: unknown): number {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  const details = cause instanceof ApplicationFailure ? (cause.details?.[0] as DispatchRejection | undefined) : undefined;
  return (details?.retryAfterSeconds ?? 0) * 1000;
}

/**
 * Sends one pair as a regular activity from attempt `firstAttempt` (the same backoff as from the
 * first attempt on: attempts at 0, 1, 3, 7 s… either way) until `deadlineAt` (`deadlineMs` after
 * the run's start), first scheduled with `firstScheduleToCloseMs` (positive: what the caller had
 * left of the deadline less its wait, as runs before admission scheduled it; a timer that fired
 * after the deadline leaves none, and a negative limit fails every workflow task of the run, 0 is
 * none at all). Asking admission, an activity refused an activity slot is scheduled again after a
 * timer, longer the longer the pair has been refused (REFUSAL_SCHEDULE), from the attempt it did
 * not make.
 */
async function dispatchAsActivity(
  dispatch: Dispatch,
  firstAttempt: number,
  deadlineAt: number,
  deadlineMs: number,
  firstScheduleToCloseMs: number,
  askAdmission: boolean,
): Promise<Awaited<ReturnType<Activities['dispatchEvent']>>> {
  let refused: unknown;
  let refusedSince: number | undefined;
  for (let refusals = 0; ; refusals++) {
    const remainingMs = refused === undefined ? firstScheduleToCloseMs : deadlineAt - Date.now();
    // A timer that fired late can leave no time: the pair is given up on with the refusal.
    if (refused !== undefined && remainingMs <= 0) throw refused;
    const { dispatchEvent } = proxyActivities<Activities>({
      // The request's own 10 s timeout, plus recording the attempt.
      startToCloseTimeout: '15 seconds',
      heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
      scheduleToCloseTimeout: remainingMs,
      // 1 s for attempt 1 and 2 s for attempt 2, as before; later attempts (after a refusal) go on doubling.
      retry: { initialInterval: Math.min(FIRST_RETRY_MS * 2 ** (firstAttempt - 1), MAX_RETRY_MS), backoffCoefficient: 2, maximumInterval: MAX_RETRY_MS },
    });
    const waitMs =
      refusedSince !== undefined && patched(REFUSAL_SCHEDULE)
        ? refusedDispatchWaitMs(refusals, Date.now() - refusedSince, deadlineAt - Date.now(), deadlineMs, Math.random())
        : refusedWaitCeilingMs(refusals);
    try {
      // The activity is told the wait, so that a refusal leaving no time for it is given up, and counted, by the activity.
      return await dispatchEvent({ ...dispatch, firstAttempt, ...(askAdmission ? { askAdmission: true, refusedWaitMs: waitMs } : {}) });
    } catch (error) {
      const refusal = askAdmission ? refusalOf(error) : undefined;
      if (refusal === undefined) throw error;
      refused = error;
      // Since the pair's first refusal, whatever attempts were made between: the waits only grow, so the bound holds however they interleave.
      refusedSince ??= Date.now();
      firstAttempt += refusal.attemptsMade;
      // The activity's word first (it counted the pair); the run's clock still ends a run whose activity could not tell.
      if (refusal.last || deadlineAt - Date.now() <= waitMs) throw error;
      await sleep(waitMs);
    }
  }
}

/** Whether the inline first attempt was not admitted into the workflow task (and made no call). */
function notAdmitted(error: unknown): boolean {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  return cause instanceof ApplicationFailure && cause.type === INLINE_NOT_ADMITTED;
}

/**
 * One provider delivery (id `event:<provider>:<deliveryId>`, so a redelivery maps onto this run):
 * records its events per organization and applies the repository cache changes they carry, then
 * dispatches each event to every subscriber whose filters it matches until the dispatch deadline
 * passes. Up to INLINE_DISPATCH_LIMIT pairs: a first attempt inline, then retries in a regular
 * activity with backoff. More: recordEvent queues them in PostgreSQL and the run drains the queue
 * (drainQueue).
 */
export async function eventWorkflow(input: EventInput): Promise<EventResult> {
  // A run continued as new goes on draining its queue.
  if (input.queuedDispatch) return drainQueue(input, input.queuedDispatch);
  const startedAt = Date.now();
  const recordedDelivery = patched(RECORD_WITH_FIRST_ATTEMPTS) ? await recordEventAndDispatch(input) : await recordEvent(input);
  // Decided by the recorded result, so a run recorded before the queue existed (its pairs in the
  // marker) replays and goes on exactly as it was.
  if ('queued' in recordedDelivery) {
    const { recorded, runKey, deliveryDeadlineSeconds } = recordedDelivery;
    return drainQueue(input, { runKey, recorded, deadlineAt: new Date(startedAt + deliveryDeadlineSeconds * 1000).toISOString() });
  }
  const { recorded, dispatches, deliveryDeadlineSeconds, firstAttempts } = recordedDelivery;
  if (dispatches.length === 0) return { recorded, delivered: 0, undelivered: [] };

  // Runs from before admission send no `askAdmission`: a first attempt they re-execute after an upgrade is made as it was.
  // First attempts the recording made asked for admission (and their runs never reach the patch).
  const admission = firstAttempts !== undefined || patched('dispatch-inline-admission');
  const first = firstAttempts
    ? firstAttempts.map(settledFirstAttempt)
    : await Promise.allSettled(dispatches.map((dispatch) => dispatchFirstAttempt(admission ? { ...dispatch, askAdmission: true } : dispatch)));
  const outcomes = await Promise.all(
    first.map(async (outcome, i) => {
      if (outcome.status === 'fulfilled') return outcome;
      // Not admitted: no attempt was made, so the activity makes the first one, at once.
      const firstAttempt = admission && notAdmitted(outcome.reason) ? 1 : 2;
      const remainingMs = deliveryDeadlineSeconds * 1000 - (Date.now() - startedAt);
      const waitMs = firstAttempt === 1 ? 0 : Math.max(FIRST_RETRY_MS, retryAfterMs(outcome.reason));
      if (remainingMs <= waitMs) return outcome;
      if (waitMs > 0) await sleep(waitMs);
      return dispatchAsActivity(dispatches[i]!, firstAttempt, startedAt + deliveryDeadlineSeconds * 1000, deliveryDeadlineSeconds * 1000, remainingMs - waitMs, patched(ACTIVITY_ADMISSION)).then(
        (value) => ({ status: 'fulfilled' as const, value }),
        (reason: unknown) => ({ status: 'rejected' as const, reason }),
      );
    }),
  );
  const undelivered: EventResult['undelivered'] = [];
  let delivered = 0;
  outcomes.forEach((outcome, i) => {
    if (outcome.status === 'fulfilled') {
      if (outcome.value.delivered) delivered++;
      return;
    }
    const { eventId, subscriberId } = dispatches[i]!;
    const reason = failureReason(outcome.reason);
    log.warn('event not delivered before the dispatch deadline', { eventId, subscriberId, reason });
    undelivered.push({ eventId, subscriberId, reason });
  });
  return { recorded, delivered, undelivered };
}

/**
 * Drains the run's queue in rounds: a drain sends what is due, then the run sleeps until the next
 * pair falls due (or the deadline), until none is pending. The result counts every pair and names
 * the first undelivered ones. After DRAIN_ROUNDS_PER_RUN rounds the run continues as new.
 */
async function drainQueue(input: EventInput, queue: QueuedDispatch): Promise<EventResult> {
  const deadline = Date.parse(queue.deadlineAt);
  let refusedSince = queue.refusedSince === undefined ? undefined : Date.parse(queue.refusedSince);
  /** The queue as the next run goes on with it: with the refusals in a row so far, if any. */
  const carried = (): QueuedDispatch => {
    const { refusedSince: _previous, ...rest } = queue;
    return refusedSince === undefined ? rest : { ...rest, refusedSince: new Date(refusedSince).toISOString() };
  };
  for (let round = 1, refusals = 0; ; round++) {
    const askAdmission = patched(DRAIN_ADMISSION);
    const drained = await drainDispatches({ runKey: queue.runKey, deadlineAt: queue.deadlineAt, ...(askAdmission ? { askAdmission } : {}) }).catch((error: unknown) => {
      if (askAdmission && refusalOf(error)) return undefined;
      throw error;
    });
    if (drained === undefined) {
      const growing = patched(DRAIN_REFUSAL_SCHEDULE);
      if (growing) refusedSince ??= Date.now();
      if (round >= (input.drainRoundsPerRun ?? DRAIN_ROUNDS_PER_RUN) || workflowInfo().continueAsNewSuggested) {
        await continueAsNew<typeof eventWorkflow>({ ...input, queuedDispatch: carried() });
      }
      const waitMs = growing ? refusedDrainWaitMs(refusals++, Date.now() - refusedSince!, deadline - Date.now(), Math.random()) : refusedWaitCeilingMs(refusals++);
      await sleep(Math.max(1, Math.min(waitMs, deadline - Date.now())));
      continue;
    }
    refusals = 0;
    refusedSince = undefined;
    if (drained.pending === 0) {
      return { recorded: queue.recorded, delivered: drained.delivered, undelivered: drained.undelivered ?? [], undeliveredCount: drained.undeliveredCount };
    }
    if (round >= (input.drainRoundsPerRun ?? DRAIN_ROUNDS_PER_RUN) || workflowInfo().continueAsNewSuggested) {
      await continueAsNew<typeof eventWorkflow>({ ...input, queuedDispatch: carried() });
    }
    if (drained.moreDue) continue;
    const nextDue = Math.min(drained.nextDueAt ? Date.parse(drained.nextDueAt) : deadline, deadline);
    await sleep(Math.max(MIN_ROUND_GAP_MS, nextDue - Date.now()));
  }
}
