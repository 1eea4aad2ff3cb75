/**
 * Which tenant-facing activities may hold an activity slot.
 *
 * A regular activity holds one of the worker's activity slots (worker.maxConcurrentActivityTaskExecutions)
 * until it ends, and a call to a tenant's endpoint ends when the tenant answers: a subscriber may take
 * its 10 s on every attempt. Without a bound, one organization's slow subscriber could hold every
 * activity slot of a worker, and every other organization's activities (their retries, their
 * connects and detaches, the database writes of their runs) would wait behind it.
 *
 * So a tenant-facing activity whose input asks for admission (only workflow code that can take a
 * refusal sets it) is admitted only while fewer than `perOrganization` of its organization's, and
 * fewer than `perWorker` of all organizations', run on this worker. One that is not admitted makes
 * no call and ends at once, not retried (`ActivityNotAdmitted`, with how many attempts the activity
 * made before it); its workflow schedules the same step again after a timer, from the same attempt,
 * so a refusal costs the step none of its attempts. The slot is held for the refusal only: a
 * database read at most.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { ApplicationFailure, ApplicationFailureCategory } from '@temporalio/common';
import { ACTIVITY_NOT_ADMITTED } from '../workflows/contract.ts';
import { curableBudgetRefusal } from './errors.ts';
import { inlineNotAdmitted, REFUSED_BY_ANSWER_BUDGET, type InlineAdmission } from './inline-admission.ts';
import { holdingAnswers } from './providers/answer-budget.ts';
import { activityContext } from './outbound.ts';

export { ACTIVITY_NOT_ADMITTED };

/** The details of an ActivityNotAdmitted failure: attempts the activity made before the refused one. */
export interface ActivityNotAdmittedDetails {
  attemptsMade: number;
  /**
   * Asking again after the run's wait would fall past the activity's schedule-to-close deadline:
   * the run gives the step up, and the refused activity, which said so, counted it.
   */
  last?: boolean;
  /** Set when the worker's answer budget refused one of its provider answers, after the calls it made (REFUSED_BY_ANSWER_BUDGET); absent, it was refused a place before any call. */
  refusedBy?: typeof REFUSED_BY_ANSWER_BUDGET;
}

/**
 * The refused activity says "last" when asking again is due this long before its schedule-to-close
 * deadline, so that the run, whose clock reads the deadline later, does not give up a step the
 * activity did not count (as activities/dispatch.ts decides a failed attempt is the last).
 */
const LAST_REFUSAL_MARGIN_MS = 1000;

type ActivityFunctions = Record<string, (...args: never[]) => Promise<unknown>>;

/** The places the running call of a holdingAdmission activity took. */
const placesOfCall = new AsyncLocalStorage<(() => void)[]>();

/**
 * Activities that may ask for admission (admitActivity): each call gives back the place it took when
 * it ends, however it ends, and the provider answers it parsed (their reservations in the worker's
 * answer budget, activities/providers/answer-budget.ts: what the call keeps of them, a hook listing
 * across a hook's save, is kept until it ends).
 *
 * A call whose input asks admission and whose provider answer the budget refused while full of
 * others' answers (curableBudgetRefusal) is refused as the admissions refuse one: inside a workflow
 * task INLINE_NOT_ADMITTED (its run runs the step as an activity), as an activity
 * ACTIVITY_NOT_ADMITTED with the attempts made before (its run asks again after its jittered wait,
 * from the same attempt, and gives up after REFUSED_FOR_AT_MOST_MS, workflows/activity-slot.ts),
 * never spending an attempt on the worker's load. Only workflow code that takes a refusal asks; the
 * steps are safe to run again (as for a retry). With `budgetRefusals: 'retried'` (a repository
 * listing: a refusal would list its chunk again from its start; its pages so refused wait for room
 * inside the chunk instead, activities/repository-cache.ts) what reaches here stays `WorkerBusy`.
 */
export function holdingAdmission<T extends ActivityFunctions>(activities: T, { budgetRefusals = 'refused' }: { budgetRefusals?: 'refused' | 'retried' } = {}): T {
  const wrapped = Object.entries(activities).map(([name, run]) => [
    name,
    async (...args: unknown[]) => {
      const places: (() => void)[] = [];
      try {
        return await placesOfCall.run(places, () => holdingAnswers(() => run(...(args as never[]))));
      } catch (error) {
        throw (budgetRefusals === 'refused' && budgetRefusal(error, args[0])) || error;
      } finally {
        for (const release of places) release();
      }
    },
  ]);
  return Object.fromEntries(wrapped) as T;
}

/** The admission refusal a budget refusal of a step asking admission becomes (holdingAdmission), if it is one. */
function budgetRefusal(error: unknown, input: unknown): ApplicationFailure | undefined {
  const info = activityContext()?.info;
  const asks = typeof input === 'object' && input !== null && (input as { askAdmission?: unknown }).askAdmission === true;
  const why = info && asks ? curableBudgetRefusal(error) : undefined;
  if (!info || why === undefined) return undefined;
  const organizationId = String((input as { organizationId?: unknown }).organizationId);
  if (info.isLocal) return inlineNotAdmitted(organizationId, `the worker's answer budget is full (${why})`);
  const details: ActivityNotAdmittedDetails = { attemptsMade: info.attempt - 1, refusedBy: REFUSED_BY_ANSWER_BUDGET };
  return ApplicationFailure.create({
    type: ACTIVITY_NOT_ADMITTED,
    message: `the worker's answer budget is full (${why}): scheduled again after a timer`,
    nonRetryable: true,
    category: ApplicationFailureCategory.BENIGN,
    details: [details],
  });
}

/**
 * Admits the running activity for the organization, if it runs as a regular activity whose input
 * asks for admission: it then holds one place until its call ends (holdingAdmission gives it
 * back). Not admitted, it throws ACTIVITY_NOT_ADMITTED, not retried, before any call. The places
 * are counted as the inline admission counts them (activities/inline-admission.ts), one per call.
 */
export function admitActivity(
  admission: InlineAdmission | undefined,
  input: {
    organizationId: string;
    askAdmission?: boolean;
    /** How long the run waits before it asks again when this one is refused (none: the run decides alone). */
    refusedWaitMs?: number;
  },
  /** Called when the activity is refused, before the failure is thrown (a metric), with whether the run then gives the step up. */
  onRefused?: (last: boolean) => void,
): void {
  const info = activityContext()?.info;
  if (!admission || !input.askAdmission || !info || info.isLocal) return;
  const places = placesOfCall.getStore();
  if (!places) throw new Error('admitActivity runs only in an activity wrapped by holdingAdmission: its place would never be given back');
  const release = admission.tryAdmit(input.organizationId);
  if (!release) {
    const deadline = info.scheduleToCloseTimeoutMs ? info.scheduledTimestampMs + info.scheduleToCloseTimeoutMs : Infinity;
    const last = input.refusedWaitMs !== undefined && Date.now() + input.refusedWaitMs + LAST_REFUSAL_MARGIN_MS >= deadline;
    onRefused?.(last);
    const details: ActivityNotAdmittedDetails = { attemptsMade: info.attempt - 1, ...(last ? { last } : {}) };
    throw ApplicationFailure.create({
      type: ACTIVITY_NOT_ADMITTED,
      message: `this worker already runs as many tenant-facing activities as it admits (organization ${input.organizationId}): scheduled again after a timer`,
      nonRetryable: true,
      // Expected, and frequent while an organization's share is full: the SDK logs it at DEBUG, not as a WARN with its stack (activities/not-admitted.ts counts it and logs one line).
      category: ApplicationFailureCategory.BENIGN,
      details: [details],
    });
  }
  places.push(release);
}
