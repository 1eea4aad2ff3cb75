import { ActivityCancellationType, ActivityFailure, ApplicationFailure, CancellationScope, log, patched, proxyActivities, proxyLocalActivities } from '@temporalio/workflow';
import type { RepositoryKey } from '../activities/hooks.ts';
import type { Activities } from '../activities/index.ts';
import type { InlineStep } from '../activities/inline-admission.ts';
import { askingActivitySlot } from './activity-slot.ts';
import { AttachmentFailureTypes, INLINE_NOT_ADMITTED, NETWORK_STEP_HEARTBEAT_TIMEOUT } from './contract.ts';
import { failureReason } from './failure-reason.ts';

/** Database bookkeeping: retried until the database answers. */
const bookkeepingOptions = { startToCloseTimeout: '30 seconds', retry: { initialInterval: '1s', maximumInterval: '30s' } } as const;
const bookkeepingActivities = proxyActivities<Activities>(bookkeepingOptions);
/**
 * The same steps run inside the workflow task (one short query each): beginning and completing an
 * attach then cost no round trip through the server, two of the attach's six.
 */
const bookkeepingInWorkflowTask = proxyLocalActivities<Activities>(bookkeepingOptions);
/** Runs started before bookkeeping moved into the workflow task schedule it as activities, and finish that way when replayed. */
const BOOKKEEPING_IN_WORKFLOW_TASK = 'attach-bookkeeping-in-workflow-task';
/**
 * Provider calls: 429/5xx/timeouts retried with backoff (a Retry-After sets the next delay), for a
 * few minutes; 400/401/403/404/422 fail at once. Compensations use the same policy.
 */
const providerRetry = { initialInterval: 1000, backoffCoefficient: 2, maximumInterval: 60_000, maximumAttempts: 10 } as const;
const providerStepOptions = { startToCloseTimeout: '2 minutes', heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT, retry: providerRetry } as const;
const providerSteps = proxyActivities<Activities>(providerStepOptions);
const { ensureHook } = providerSteps;
/**
 * ensureHook for a run that is cancelled waits until the step has ended (it sees the cancellation at
 * its next heartbeat and stops) before the undo begins. Without it the undo listed the hooks while
 * the step still ran: a creation it made after that listing stayed behind at the provider.
 */
const { ensureHook: ensureHookEndedOnCancel } = proxyActivities<Activities>({ ...providerStepOptions, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED });
/** Runs started before this change undo at once when cancelled, and do so when replayed. */
const UNDO_AFTER_ENSURE_ENDED = 'attach-undo-after-ensure-ended';
/**
 * A provider step run as an activity (refused inside the workflow task) and a compensation hold an
 * activity slot while the tenant's provider answers, and a tenant can ask for many attaches. Later
 * runs ask the worker for the slot (a share per organization, workflows/activity-slot.ts): one
 * refused waits on a timer and costs no attempt. Runs started before run them as they did.
 */
const providerStepsAskingSlot = {
  verifyRepository: askingActivitySlot('verifyRepository', providerStepOptions),
  pruneHooks: askingActivitySlot('pruneHooks', providerStepOptions),
  ensureHook: askingActivitySlot('ensureHook', { ...providerStepOptions, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED }),
  removeHook: askingActivitySlot('removeHook', providerStepOptions),
};
const ACTIVITY_ADMISSION = 'attach-activity-admission';
/**
 * Provider steps run inside the workflow task as local activities: each saves an activity's round
 * trip through the server (three events and a workflow task), about the CPU the worker and the
 * server spend on a step. The repository's lookup and the prune are a few reads safe to repeat (a
 * prune deletes only hooks outside the set); ensureHook lists first and adopts, so a workflow task
 * re-run by another worker after this one died ends with the same hooks, never a copy.
 * - Retries: 429/5xx as for activities. A backoff of up to LOCAL_RETRY_THRESHOLD (the first two:
 *   1 s, 2 s) waits inside the workflow task; a longer one (and a Retry-After beyond it) is a timer
 *   in the history, so the workflow task ends instead of being held open for minutes, each attempt's
 *   outcome is recorded, and a worker that stops meanwhile loses nothing. (The SDK's default, 1
 *   minute, kept every retry of the lookup and the prune inside the task. A cut step's WorkerShutdown
 *   retry delay, 3 s in activities/errors.ts, must stay above this threshold.)
 * - Cancellation: WAIT_CANCELLATION_COMPLETED (the default, named): a cancelled run waits until the
 *   step has ended (its HTTP call aborted by the step's cancellation) before it undoes anything.
 *   The cancel reaches a run whose workflow task is busy with a step at that task's next heartbeat
 *   (the SDK's, at 80 % of the 10 s workflow task timeout).
 * - No heartbeats (local activities have none): a worker that dies mid-step is noticed by the
 *   workflow task's timeout (10 s) instead of the 5 s heartbeat timeout; a worker that stops drains
 *   its local steps and cuts them at workerGraceSeconds (worker/main.ts), which come back here as a
 *   WorkerShutdown failure retried after a timer, by whichever worker takes the next task.
 */
const LOCAL_RETRY_THRESHOLD = '2 seconds';
const providerStepsInWorkflowTask = proxyLocalActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: providerRetry,
  localRetryThreshold: LOCAL_RETRY_THRESHOLD,
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
});
/** Runs started before the lookup and the prune moved into the workflow task schedule them as activities, and finish that way when replayed. */
const CHECKS_IN_WORKFLOW_TASK = 'attach-checks-in-workflow-task';
/**
 * Runs started before the hooks moved into the workflow task ensure them as activities (with
 * heartbeats) and finish that way when replayed. Later runs do the whole attach in one workflow
 * task. Compensations stay activities: they run only after a failure, when the workflow task that
 * schedules them also records every ensure's outcome, so a worker lost during the undo costs a
 * retried removal (noticed by heartbeat), not a re-run of the ensures.
 */
const HOOKS_IN_WORKFLOW_TASK = 'attach-hooks-in-workflow-task';

/**
 * Runs started before this change ensured their hooks one after another, and finish that way when
 * replayed; later runs ensure the hooks of the set side by side.
 */
const HOOKS_SIDE_BY_SIDE = 'attach-hooks-side-by-side';

/**
 * A local step holds its run's workflow task slot until it ends, and these call a provider the
 * tenant chose and controls how slowly it answers. Later runs have each local provider step ask its
 * worker for admission (activities/inline-admission.ts: a few at once per worker and per
 * organization); a step refused makes no call and runs again at once as the activity, which holds
 * an activity slot instead. Runs started before replay their local steps as they were.
 */
const INLINE_ADMISSION = 'attach-inline-admission';

/**
 * The same local steps for runs that ask admission, whose retries all wait on a timer: a backoff
 * waited inside the workflow task (1 s, then 2 s under LOCAL_RETRY_THRESHOLD) would hold the slot
 * without admission, and a tenant whose provider fails at once could put every slot into such
 * waits. After the timer, the retry asks admission again, like any attempt.
 */
const providerStepsAskingAdmission = proxyLocalActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: providerRetry,
  localRetryThreshold: '1 ms',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
});
/** Runs that asked admission before their retries moved onto timers wait as they did. */
const RETRIES_ON_TIMERS = 'attach-inline-retries-on-timers';

/**
 * Later runs keep the bookkeeping off the provider calls' path: the attach begins (marks the
 * repository attaching, reads its plan) while the repository's lookup runs, and the prune step
 * marks it attached when its work is done, instead of a step of its own after it. Each saved a
 * local activity's turn through the workflow (~5 ms) and its queries between two provider calls.
 * Runs started before begin, look up, prune and complete one after another, and replay so.
 */
const BOOKKEEPING_BESIDE_PROVIDER_STEPS = 'attach-bookkeeping-beside-provider-steps';

/**
 * Later runs take attachAsPatched: the path the eight patches above lead a new run along, with one
 * marker instead of eight. Each patch recorded a marker and an upsert of the TemporalChangeVersion
 * search attribute in every new attach, 16 of a GitLab attach's 26 events, which the server persists
 * and indexes and the worker builds before the run can complete. Runs started before replay through
 * the patches as they were recorded.
 */
const ONE_PATCH = 'attach-one-patch';

/** The step inside the workflow task if its worker admits it, else as `activity`. */
async function inlineOr<I, O>(activity: (input: I) => Promise<O>, local: (input: I & InlineStep) => Promise<O>, input: I): Promise<O> {
  try {
    return await local({ ...input, askAdmission: true });
  } catch (error) {
    const cause = error instanceof ActivityFailure ? error.cause : error;
    if (!(cause instanceof ApplicationFailure && cause.type === INLINE_NOT_ADMITTED)) throw error;
    return activity(input);
  }
}

interface Compensation {
  hookKey: string;
  undo: () => Promise<unknown>;
}

/** Runs compensations in the order given; a failed one is logged and reported, never rethrown. */
async function compensate(compensations: Compensation[]): Promise<string[]> {
  const failed: string[] = [];
  for (const { hookKey, undo } of compensations) {
    try {
      await undo();
    } catch (error) {
      log.error('compensation failed: the hook stays at the provider until a detach removes it (by its record, or by the sweep of our delivery URL when its creation was never recorded)', { hookKey, reason: failureReason(error) });
      failed.push(hookKey);
    }
  }
  return failed;
}

/**
 * Attach as a saga: each hook of the repository's hook set is ensured by its own step (listed
 * first, adopted if it exists, created otherwise), the hooks of the set side by side. Each step's
 * compensation is registered before the step runs, so a permanent failure removes, in reverse
 * order, every hook this attach created, even one whose creation answer was lost. The attachment
 * is `attached` only once every hook is in place; otherwise it ends `failed` with the provider's
 * reason (a re-attach of an attached repository leaves it attached, on the hooks it had, with the
 * reason) and this throws a typed failure.
 */
export async function attachRepository(key: RepositoryKey): Promise<{ hookIds: string[] }> {
  // Asked first: histories recorded before it have no marker of it and go on to the patches below as they did.
  if (patched(ONE_PATCH)) return attachAsPatched(key);
  const { beginAttachment, completeAttachment, failAttachment } = patched(BOOKKEEPING_IN_WORKFLOW_TASK) ? bookkeepingInWorkflowTask : bookkeepingActivities;
  const admission = patched(INLINE_ADMISSION);
  const inTask = admission && patched(RETRIES_ON_TIMERS) ? providerStepsAskingAdmission : providerStepsInWorkflowTask;
  const asActivity =
    admission && patched(ACTIVITY_ADMISSION)
      ? providerStepsAskingSlot
      : { verifyRepository: providerSteps.verifyRepository, pruneHooks: providerSteps.pruneHooks, ensureHook: ensureHookEndedOnCancel, removeHook: providerSteps.removeHook };
  /** A local provider step, asking admission in runs that fall back to the activity when refused. */
  const local = <I, O>(activity: (input: I) => Promise<O>, inWorkflowTask: (input: I) => Promise<O>) =>
    admission ? (input: I) => inlineOr(activity, inWorkflowTask, input) : inWorkflowTask;
  const { verifyRepository, pruneHooks } = patched(CHECKS_IN_WORKFLOW_TASK)
    ? { verifyRepository: local(asActivity.verifyRepository, inTask.verifyRepository), pruneHooks: local(asActivity.pruneHooks, inTask.pruneHooks) }
    : providerSteps;
  const compensations: Compensation[] = [];
  const hookIds: string[] = [];
  let fullName = key.repositoryId;
  const beside = patched(BOOKKEEPING_BESIDE_PROVIDER_STEPS);
  try {
    let plan: Awaited<ReturnType<typeof beginAttachment>>;
    let projectId: string | undefined;
    if (beside) {
      // Both settle before anything else happens: a failure is recorded after the begin's write, never before it.
      const [begun, verified] = await Promise.allSettled([beginAttachment(key), verifyRepository(key)]);
      if (begun.status === 'rejected') throw begun.reason;
      plan = begun.value;
      fullName = plan.fullName;
      if (verified.status === 'rejected') throw verified.reason;
      projectId = verified.value.projectId;
    } else {
      plan = await beginAttachment(key);
      fullName = plan.fullName;
      ({ projectId } = await verifyRepository(key));
    }
    const ensureStep = patched(HOOKS_IN_WORKFLOW_TASK)
      ? local(asActivity.ensureHook, inTask.ensureHook)
      : patched(UNDO_AFTER_ENSURE_ENDED)
        ? ensureHookEndedOnCancel
        : ensureHook;
    const ensure = (hookKey: string) => ensureStep({ ...key, hookKey, ...(projectId ? { projectId } : {}) });
    // Hooks recorded before this attach began are the attachment's, not this attach's: never undone here.
    const compensationOf = (hookKey: string): Compensation => ({ hookKey, undo: () => asActivity.removeHook({ ...key, hookKey, keepHookIds: plan.recordedHookIds }) });
    if (patched(HOOKS_SIDE_BY_SIDE)) {
      // Every compensation is registered before any hook is ensured. Each hook is its own provider
      // object (Azure DevOps: one subscription per event type), so they are made at once. All of
      // them settle before anything is undone: a compensation finds its hook by listing, and a
      // creation still in flight when it listed would be left behind.
      for (const hookKey of plan.hookKeys) compensations.unshift(compensationOf(hookKey));
      const settled = await Promise.allSettled(plan.hookKeys.map(ensure));
      for (const outcome of settled) {
        if (outcome.status === 'rejected') throw outcome.reason;
        hookIds.push(outcome.value.providerHookId);
      }
    } else {
      for (const hookKey of plan.hookKeys) {
        compensations.unshift(compensationOf(hookKey));
        hookIds.push((await ensure(hookKey)).providerHookId);
      }
    }
    if (beside) {
      const { attachmentCompleted } = await pruneHooks({ ...key, keepHookIds: hookIds, completeAttachment: true });
      if (!attachmentCompleted) await completeAttachment(key);
    } else {
      await pruneHooks({ ...key, keepHookIds: hookIds });
      await completeAttachment(key);
    }
    return { hookIds };
  } catch (error) {
    throw await failedAttach(key, fullName, compensations, failAttachment, error);
  }
}

/**
 * attachRepository as the patches above have it for a new run: bookkeeping inside the workflow
 * task and beside the provider steps, the provider steps inside it asking admission (as activities
 * asking a slot when refused), retries on timers, the hooks side by side. The saga is
 * attachRepository's: every compensation registered before any ensure, all ensures settled before
 * any undo, undone in reverse order, the failure recorded after the begin's write.
 */
async function attachAsPatched(key: RepositoryKey): Promise<{ hookIds: string[] }> {
  const { beginAttachment, completeAttachment, failAttachment } = bookkeepingInWorkflowTask;
  const inTask = providerStepsAskingAdmission;
  const asActivity = providerStepsAskingSlot;
  const verifyRepository = (input: RepositoryKey) => inlineOr(asActivity.verifyRepository, inTask.verifyRepository, input);
  const ensureHook = (input: Parameters<typeof inTask.ensureHook>[0]) => inlineOr(asActivity.ensureHook, inTask.ensureHook, input);
  const pruneHooks = (input: Parameters<typeof inTask.pruneHooks>[0]) => inlineOr(asActivity.pruneHooks, inTask.pruneHooks, input);
  const compensations: Compensation[] = [];
  const hookIds: string[] = [];
  let fullName = key.repositoryId;
  try {
    // Both settle before anything else happens: a failure is recorded after the begin's write, never before it.
    const [begun, verified] = await Promise.allSettled([beginAttachment(key), verifyRepository(key)]);
    if (begun.status === 'rejected') throw begun.reason;
    const plan = begun.value;
    fullName = plan.fullName;
    if (verified.status === 'rejected') throw verified.reason;
    const { projectId } = verified.value;
    // Hooks recorded before this attach began are the attachment's, not this attach's: never undone here.
    for (const hookKey of plan.hookKeys) {
      compensations.unshift({ hookKey, undo: () => asActivity.removeHook({ ...key, hookKey, keepHookIds: plan.recordedHookIds }) });
    }
    const settled = await Promise.allSettled(plan.hookKeys.map((hookKey) => ensureHook({ ...key, hookKey, ...(projectId ? { projectId } : {}) })));
    for (const outcome of settled) {
      if (outcome.status === 'rejected') throw outcome.reason;
      hookIds.push(outcome.value.providerHookId);
    }
    const { attachmentCompleted } = await pruneHooks({ ...key, keepHookIds: hookIds, completeAttachment: true });
    if (!attachmentCompleted) await completeAttachment(key);
    return { hookIds };
  } catch (error) {
    throw await failedAttach(key, fullName, compensations, failAttachment, error);
  }
}

/** Undoes what the attach made (even when the run is being cancelled), records why it failed, and returns the attach's typed failure. */
async function failedAttach(
  key: RepositoryKey,
  fullName: string,
  compensations: Compensation[],
  failAttachment: (input: RepositoryKey & { reason: string }) => Promise<void>,
  error: unknown,
): Promise<ApplicationFailure> {
  const cause = failureReason(error);
  // Undo even when the run is being cancelled: a half-made hook set must not stay behind.
  const reason = await CancellationScope.nonCancellable(async () => {
    const notUndone = await compensate(compensations);
    const full = notUndone.length > 0 ? `${cause} (could not remove hook ${notUndone.join(', ')}: it stays at the provider; a detach removes it, by its record or, if its creation's answer was lost and it was never recorded, by the sweep of our delivery URL)` : cause;
    await failAttachment({ ...key, reason: full });
    return full;
  });
  return ApplicationFailure.create({
    type: AttachmentFailureTypes.attachFailed,
    message: `attaching ${fullName} failed: ${reason}`,
    nonRetryable: true,
    details: [{ repositoryId: key.repositoryId, reason }],
  });
}
