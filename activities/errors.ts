import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { UnreadableSecretError } from '../lib/crypto.ts';
import { HostLookupFailedError } from '../lib/dns.ts';
import { redactSecrets } from '../lib/secret-redaction.ts';
import { activityCancellations, activityContext, excerpt, OutboundRefusedError, ResponseTooLargeError, WORKER_SHUTDOWN } from './outbound.ts';
import { ListingTooLongError, ProviderHttpError, RepositoryNameTakenError } from './providers/port.ts';
import { AnswerBudgetFullError, AnswerTooCostlyError } from './providers/answer.ts';

/** Failure types an operator sees in the Temporal UI. */
export const FailureTypes = {
  authRejected: 'ProviderAuthRejected',
  forbidden: 'ProviderForbidden',
  notFound: 'ProviderNotFound',
  invalid: 'ProviderRejectedRequest',
  throttled: 'ProviderThrottled',
  unavailable: 'ProviderUnavailable',
  refused: 'OutboundRefused',
  /** The provider listed past forgelink's caps (pages, hooks, repositories): the same server would again. */
  listingTooLong: 'ProviderListingTooLong',
  /**
   * The provider's answer was longer than the size cap (activities/outbound.ts), or would take more
   * of the heap once parsed than its bound, alone or with its listing's other pages (activities/providers/answer.ts).
   */
  answerTooLarge: 'ProviderAnswerTooLarge',
  secretUnreadable: 'SecretUnreadable',
  /**
   * Bitbucket DC: the repository's name answers another repository's id than the one recorded (this
   * one deleted or renamed, its name taken): a save or deletion there was refused, nothing sent.
   */
  repositoryNameTaken: 'RepositoryNameTaken',
  workerShutdown: 'WorkerShutdown',
  /**
   * The worker's answer budget (activities/providers/answer-budget.ts) could not take the provider's
   * answer: it already holds as many parsed answers as it admits, or as the organization's share.
   * Retried: the worker is busy, the tenant not wrong. A step that asked admission (every provider
   * step of a current run but a repository listing's) is refused instead, as by the admissions
   * (ActivityNotAdmitted, InlineNotAdmitted: activities/activity-admission.ts), when the budget is
   * full of others' answers: no attempt spent, asked again after its run's wait. A repository
   * listing's page so refused waits for room inside its chunk (activities/repository-cache.ts).
   */
  workerBusy: 'WorkerBusy',
} as const;

/**
 * When a local step cut by its worker's stop is tried again: longer than the local retry threshold
 * of the workflows' local steps (2 s, workflows/attach.ts), so the retry waits on a timer in the
 * run's history, the stopping worker's workflow task ends, and whichever worker takes the next task
 * runs the step. A local retry would run again on the stopping worker, to be cut again.
 */
const LOCAL_STEP_RETRY_AFTER_SHUTDOWN = '3s';

const NON_RETRYABLE: Record<number, string> = {
  400: FailureTypes.invalid,
  401: FailureTypes.authRejected,
  403: FailureTypes.forbidden,
  404: FailureTypes.notFound,
  410: FailureTypes.notFound,
  422: FailureTypes.invalid,
};

/** Longest Retry-After we wait inside one activity retry; longer waits come back on the next retry. */
const MAX_RETRY_DELAY_SECONDS = 15 * 60;

/**
 * A provider's Retry-After as the failure's retry delay: whole milliseconds of whole seconds, at
 * most MAX_RETRY_DELAY_SECONDS, none when absent or not a number. A value Temporal cannot read as a
 * duration fails the worker itself (every tenant's steps), so whatever a constructor was handed is
 * bounded here too.
 */
export function retryDelayMs(retryAfterSeconds: number | undefined): number | undefined {
  if (retryAfterSeconds === undefined || !(retryAfterSeconds >= 0)) return undefined;
  return Math.ceil(Math.min(retryAfterSeconds, MAX_RETRY_DELAY_SECONDS)) * 1000;
}

/**
 * Maps a provider error to the Temporal failure the retry policy acts on: 400/401/403/404/422 are
 * permanent (retrying cannot help), 429/5xx/network errors are retried, honouring Retry-After. An
 * address or redirect the outbound layer refused, a listing past its caps and an answer past the
 * size cap or too costly to parse (the same server answers the same) are permanent too. Messages are short printable excerpts.
 */
export function toActivityFailure(error: unknown): Error {
  if (error instanceof ApplicationFailure) return error;
  if (cutByWorkerShutdown(error)) {
    const info = activityContext()?.info;
    return ApplicationFailure.create({
      type: FailureTypes.workerShutdown,
      message: `the worker stopped (${WORKER_SHUTDOWN}) while the step${info ? ` ${info.activityType}` : ''} ran; another worker retries it`,
      nonRetryable: false,
      ...(info?.isLocal ? { nextRetryDelay: LOCAL_STEP_RETRY_AFTER_SHUTDOWN } : {}),
    });
  }
  const cancelled = cancelledLocalStep();
  if (cancelled) return cancelled;
  const permanent = permanentSetupFailure(error);
  if (permanent) return permanent;
  if (error instanceof ProviderHttpError) {
    const type = NON_RETRYABLE[error.status];
    const message = `${error.provider} answered ${error.status}: ${error.message}`;
    if (type) return ApplicationFailure.create({ type, message, nonRetryable: true, details: [{ status: error.status }] });
    const retryAfter = error.retryAfterSeconds;
    return ApplicationFailure.create({
      type: error.status === 429 ? FailureTypes.throttled : FailureTypes.unavailable,
      message,
      nonRetryable: false,
      nextRetryDelay: retryDelayMs(retryAfter),
      details: [{ status: error.status }],
    });
  }
  // Before the bounds below: a wrapped refusal of the worker's budget is its passing load, not the answer's size.
  const busy = causeOfType(error, AnswerBudgetFullError);
  if (busy) {
    return ApplicationFailure.create({
      type: FailureTypes.workerBusy,
      message: excerpt(busy.message, 300),
      nonRetryable: false,
      // A local step's retry waits on a timer in its run, as after a worker's stop: the workflow task is not held while the budget drains.
      ...(activityContext()?.info?.isLocal ? { nextRetryDelay: LOCAL_STEP_RETRY_AFTER_SHUTDOWN } : {}),
      // Read by holdingAdmission (activities/activity-admission.ts): a step that asked admission is refused instead, when waiting can cure it.
      details: [{ waitCures: busy.waitCures }],
    });
  }
  // Refused before any call: the same name answers the same other repository on a retry.
  const nameTaken = causeOfType(error, RepositoryNameTakenError);
  if (nameTaken) return ApplicationFailure.create({ type: FailureTypes.repositoryNameTaken, message: excerpt(nameTaken.message, 500), nonRetryable: true, details: [{ idAtName: nameTaken.idAtName }] });
  const refused = refusalIn(error);
  if (refused) return ApplicationFailure.create({ type: FailureTypes.refused, message: refused.message, nonRetryable: true });
  // Neither is the provider's passing trouble: a retry would list as much, or answer as long, again.
  const tooLong = causeOfType(error, ListingTooLongError);
  if (tooLong) return ApplicationFailure.create({ type: FailureTypes.listingTooLong, message: excerpt(tooLong.message, 300), nonRetryable: true });
  const tooLarge = causeOfType(error, ResponseTooLargeError) ?? causeOfType(error, AnswerTooCostlyError);
  if (tooLarge) return ApplicationFailure.create({ type: FailureTypes.answerTooLarge, message: excerpt(tooLarge.message, 300), nonRetryable: true });
  // Named by the host whose name servers failed or did not answer, however a client library wrapped it.
  const lookupFailed = causeOfType(error, HostLookupFailedError);
  const message = excerpt(redactSecrets(lookupFailed?.message ?? (error instanceof Error ? error.message : String(error))));
  return ApplicationFailure.create({ type: FailureTypes.unavailable, message, nonRetryable: false });
}

/**
 * The message of a refusal of the worker's answer budget that waiting can cure (the budget full of
 * others' answers: AnswerBudgetFullError's waitCures), thrown as it is or as its WorkerBusy failure.
 */
export function curableBudgetRefusal(error: unknown): string | undefined {
  if (error instanceof ApplicationFailure) {
    return error.type === FailureTypes.workerBusy && (error.details?.[0] as { waitCures?: unknown } | undefined)?.waitCures === true ? error.message : undefined;
  }
  const busy = causeOfType(error, AnswerBudgetFullError);
  return busy?.waitCures ? excerpt(busy.message, 300) : undefined;
}

/** The error of class `type` behind an error, however a client library wrapped it. */
function causeOfType<T extends Error>(error: unknown, type: new (...args: never[]) => T): T | undefined {
  for (let e = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof type) return e;
  }
  return undefined;
}

/**
 * Whether the step failed because its worker is stopping (the SDK cancelled it when
 * shutdown.workerGraceSeconds ran out): told by the running activity's cancellation, or by the
 * CancelledFailure behind the error however a client library wrapped it. Not the provider's doing.
 */
function cutByWorkerShutdown(error: unknown): boolean {
  const reasons = [...activityCancellations().filter((signal) => signal.aborted).map((signal): unknown => signal.reason), causeOfType(error, CancelledFailure)];
  return activityContext()?.cancellationDetails?.workerShutdown === true || reasons.some((reason) => reason instanceof CancelledFailure && reason.message === WORKER_SHUTDOWN);
}

/**
 * The cancellation of a local step its run cancelled, to be thrown as it is: the SDK then reports
 * the step cancelled and the run's undo begins. As a retryable failure the step would be tried
 * again inside the workflow task (a local activity's retries are the worker's, which no longer
 * knows of the cancel). Activities keep their failure: the server decides on their retry.
 */
function cancelledLocalStep(): CancelledFailure | undefined {
  const ctx = activityContext();
  const reason: unknown = ctx?.info.isLocal && ctx.cancellationSignal.aborted ? ctx.cancellationSignal.reason : undefined;
  return reason instanceof CancelledFailure ? reason : undefined;
}

/** The address or redirect refusal behind an error, however a client library wrapped it. */
const refusalIn = (error: unknown) => causeOfType(error, OutboundRefusedError);

/**
 * A failure no retry can fix, from the deployment's own setup (a credential sealed under an
 * encryption key that is no longer configured): non-retryable, with the reason an operator acts on.
 */
export function permanentSetupFailure(error: unknown): ApplicationFailure | undefined {
  const unreadable = causeOfType(error, UnreadableSecretError);
  return unreadable && ApplicationFailure.create({ type: FailureTypes.secretUnreadable, message: unreadable.message, nonRetryable: true });
}

export async function classified<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw toActivityFailure(error);
  }
}
