import { ActivityFailure, ApplicationFailure, patched, proxyActivities, sleep, type ActivityOptions } from '@temporalio/workflow';
import type { ActivityNotAdmittedDetails } from '../activities/activity-admission.ts';
import type { Activities } from '../activities/index.ts';
import { ACTIVITY_NOT_ADMITTED } from './contract.ts';

/**
 * A provider step's retry policy, in milliseconds, so that the policy from any attempt on can be
 * worked out (askingActivitySlot).
 */
export interface StepRetry {
  initialInterval: number;
  backoffCoefficient: number;
  maximumInterval: number;
  maximumAttempts: number;
}

/** The wait before a refused step asks again: doubling while refused, at most the max. */
const REFUSED_WAIT_MS = 1000;
const REFUSED_MAX_WAIT_MS = 30_000;
/**
 * How long a step may stay refused before it fails with its last refusal: under the hour a
 * disconnect waits for its detaches (DETACH_WAIT) and a hook-health check for its check
 * (CHECK_TIMEOUT), so the step's outcome is recorded before they stop waiting, and a bound on what
 * the refusals add to the run's history (about 11 events each, at most one every 15-30 s).
 */
export const REFUSED_FOR_AT_MOST_MS = 30 * 60_000;

/**
 * The wait before a refused step asks again after `refusals` refusals (0: the first), or undefined
 * once it has been refused since `refusedSinceMs` for `budgetMs` or more: it then fails. The wait
 * doubles from 1 s to at most 30 s and is spread over its upper half by `random` (the workflow's
 * seeded Math.random, so it replays), so runs refused together do not all ask again together.
 */
export function refusedWaitMs(refusals: number, refusedForMs: number, random: number, budgetMs = REFUSED_FOR_AT_MOST_MS): number | undefined {
  if (refusedForMs >= budgetMs) return undefined;
  const ceiling = refusedWaitCeilingMs(refusals);
  return Math.round(ceiling / 2 + (ceiling / 2) * random);
}

/** After `refusals` refusals (0: the first), the longest wait before asking again: 1 s doubling, at most 30 s. */
export function refusedWaitCeilingMs(refusals: number): number {
  return Math.min(REFUSED_WAIT_MS * 2 ** refusals, REFUSED_MAX_WAIT_MS);
}

/** A dispatch refused this long or longer waits at most a fifth of the time it has been refused (refusedDispatchWaitMs). */
const REFUSED_WAIT_SHARE = 5;
/** The longest wait of a refused dispatch, when its deadline is at most a day (else a 24th of the deadline). */
const REFUSED_LONGEST_WAIT_MS = 60 * 60_000;

/**
 * The wait before a refused dispatch asks again, after `refusals` refusals (0: the first) over
 * `refusedForMs` since its first, with `remainingMs` left of its `deadlineMs`-long deadline.
 *
 * A dispatch is given up on at its deadline (a day by default), not after REFUSED_FOR_AT_MOST_MS,
 * and each refusal adds about 11 events to its run's history: at one ask every 30 s, a pair refused
 * for a day asks ~2,900 times (~31,000 events), and a run with a few such pairs reaches Temporal's
 * limit of 51,200 events and is terminated with its deliveries. So the wait grows with the time
 * already refused: as refusedWaitCeilingMs (1 s doubling, at most 30 s) for the first 2.5 minutes,
 * so a short refusal is retried promptly, then up to a fifth of the time refused, at most an hour
 * (or a 24th of a longer deadline), spread over its upper half by `random` (the workflow's seeded
 * Math.random). A pair refused for a whole deadline then asks at most ~100 times (about 1,100
 * events; test/unit/dispatch-refusal-schedule.test.ts). A grown wait ends no later than the short
 * wait before the deadline, so the last ask still comes then.
 */
export function refusedDispatchWaitMs(refusals: number, refusedForMs: number, remainingMs: number, deadlineMs: number, random: number): number {
  const short = refusedWaitCeilingMs(refusals);
  const ceiling = Math.min(refusedForMs / REFUSED_WAIT_SHARE, Math.max(REFUSED_LONGEST_WAIT_MS, deadlineMs / 24));
  if (ceiling <= short) return short;
  const wait = Math.round(ceiling / 2 + (ceiling / 2) * random);
  return Math.max(short, Math.min(wait, remainingMs - REFUSED_MAX_WAIT_MS));
}

/**
 * The wait before a refused drain (workflows/event.ts's drainQueue) asks again, after `refusals`
 * refusals (0: the first) in its run over `refusedForMs` since its first refusal in a row (carried
 * over continue-as-new), with `remainingMs` left of its deadline: as refusedDispatchWaitMs, at most
 * an hour whatever the deadline. A drain's run continues as new, so its history is bounded anyway;
 * what the growing wait bounds is the load: a drain refused for a day asks about 100 times, not
 * ~2,900 (test/unit/dispatch-refusal-schedule.test.ts).
 */
export function refusedDrainWaitMs(refusals: number, refusedForMs: number, remainingMs: number, random: number): number {
  return refusedDispatchWaitMs(refusals, refusedForMs, remainingMs, 0, random);
}

/** The longest wait of a refused step that keeps waiting (keptWaitingMs). */
const KEPT_WAITING_LONGEST_WAIT_MS = 5 * 60_000;

/**
 * The wait before a refused step that is never given up for its refusals (a repository listing,
 * askingActivitySlot's `keepsWaiting`) asks again, after `refusals` refusals (0: the first) over
 * `refusedForMs` since its first: as refusedWaitMs (1 s doubling, at most 30 s) for the first
 * 2.5 minutes, then up to a fifth of the time refused, at most 5 minutes, spread over its upper
 * half by `random` (the workflow's seeded Math.random). A step refused for ten hours asks about
 * 180 times (some 2,000 events of its run's history), not 1,200 times.
 */
export function keptWaitingMs(refusals: number, refusedForMs: number, random: number): number {
  const ceiling = Math.max(refusedWaitCeilingMs(refusals), Math.min(refusedForMs / REFUSED_WAIT_SHARE, KEPT_WAITING_LONGEST_WAIT_MS));
  return Math.round(ceiling / 2 + (ceiling / 2) * random);
}

/** How the activity was refused an activity slot (it made no call), if that is how it failed. */
export function refusalOf(error: unknown): ActivityNotAdmittedDetails | undefined {
  const cause = error instanceof ActivityFailure ? error.cause : undefined;
  if (!(cause instanceof ApplicationFailure && cause.type === ACTIVITY_NOT_ADMITTED)) return undefined;
  return { attemptsMade: 0, ...(cause.details?.[0] as ActivityNotAdmittedDetails | undefined) };
}

/** The activity's attempts before the one its worker refused an activity slot (it made no call), if that is how it failed. */
export function refusedAfter(error: unknown): number | undefined {
  return refusalOf(error)?.attemptsMade;
}

/** `retry` from its attempt `attemptsMade + 1` on: the attempts left, and the backoff that attempt would have had. */
export function retryAfterAttempts(retry: StepRetry, attemptsMade: number): StepRetry {
  return {
    ...retry,
    initialInterval: Math.min(retry.initialInterval * retry.backoffCoefficient ** attemptsMade, retry.maximumInterval),
    // 0 is Temporal's "no limit": it stays so (a difference would go negative, and a schedule with it is refused).
    maximumAttempts: retry.maximumAttempts === 0 ? 0 : Math.max(1, retry.maximumAttempts - attemptsMade),
  };
}

type StepInput<K extends keyof Activities> = Parameters<Activities[K]>[0];

/**
 * A step scheduled again after a refusal that came after some of its attempts is told the attempt
 * number its first attempt now has (`firstAttempt`, as a dispatch's): Temporal counts each schedule's
 * attempts from 1, so an activity with a give-up rule of its own (the sweep of an unattached
 * repository, activities/hooks.ts) counted from 1 again after each refusal, and a schedule with fewer
 * attempts left than its rule needs failed the step without the give-up. Runs of earlier code, and
 * steps refused before any attempt, schedule the step as before.
 */
const FIRST_ATTEMPT_CARRIED = 'activity-slot-first-attempt';

/**
 * The activity `name` (its input takes `askAdmission`), scheduled with `options`, asking its worker
 * for an activity slot (activities/activity-admission.ts: a share of the slots per organization).
 * A refused attempt made no call: the step is scheduled again after a timer (refusedWaitMs: 1 s,
 * doubling while refused, at most 30 s, jittered) from the attempt it did not make, with the
 * attempts left and the backoff that attempt would have had, so a refusal costs the step none of
 * its `maximumAttempts` and does not lengthen its backoff; the input then says which attempt comes
 * first (`firstAttempt`, FIRST_ATTEMPT_CARRIED). Refused for REFUSED_FOR_AT_MOST_MS, it
 * fails with its last refusal (the run records that, as any failure of the step); with
 * `keepsWaiting` it is never given up for its refusals and asks again after keptWaitingMs. Any
 * other failure is the step's, as without admission.
 */
export function askingActivitySlot<K extends keyof Activities>(
  name: K,
  options: Omit<ActivityOptions, 'retry'> & { retry: StepRetry },
  { keepsWaiting = false }: { keepsWaiting?: boolean } = {},
): (input: StepInput<K>) => ReturnType<Activities[K]> {
  return (async (input: StepInput<K>) => {
    let attemptsMade = 0;
    let refusedSince: number | undefined;
    for (let refusals = 0; ; refusals++) {
      const step = proxyActivities<Activities>({ ...options, retry: retryAfterAttempts(options.retry, attemptsMade) })[name] as (input: unknown) => Promise<unknown>;
      // Asked only once attempts were made before a refusal: only such runs record the marker.
      const carried = attemptsMade > 0 && patched(FIRST_ATTEMPT_CARRIED) ? { firstAttempt: attemptsMade + 1 } : {};
      try {
        return await step({ ...input, askAdmission: true, ...carried });
      } catch (error) {
        const before = refusedAfter(error);
        if (before === undefined) throw error;
        attemptsMade += before;
        refusedSince ??= Date.now();
        const wait = keepsWaiting ? keptWaitingMs(refusals, Date.now() - refusedSince, Math.random()) : refusedWaitMs(refusals, Date.now() - refusedSince, Math.random());
        if (wait === undefined) throw error;
        await sleep(wait);
      }
    }
  }) as (input: StepInput<K>) => ReturnType<Activities[K]>;
}
