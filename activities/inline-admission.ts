/**
 * Which tenant-facing calls may run inside a workflow task.
 *
 * A local activity holds the workflow task slot of its run until it ends (measured with the SDK:
 * with 2 slots, a no-op run waited 3.6 s behind local activities sleeping 4 s). The calls that go
 * to a tenant's endpoint (a subscriber's first attempt, an attach's provider steps) answer in
 * milliseconds when the endpoint is healthy, which is why they run there; but a tenant controls
 * how slowly its endpoint answers. Without a bound, one organization's slow subscriber or provider
 * could take every workflow task slot of a worker for the calls' timeouts and stall every other
 * organization's events on it.
 *
 * So a tenant-facing local activity first asks for admission: at most `perWorker` of them run at
 * once on a worker (by default half its workflow task slots), and at most `perOrganization` of one
 * organization; a run's calls side by side (one workflow task, one slot) count once. One that is not admitted makes no call and says so at once (`InlineNotAdmitted`),
 * and its workflow runs the same step as a regular activity, which holds an activity slot, not a
 * workflow task slot, and is retried durably as before.
 */
import { ApplicationFailure, ApplicationFailureCategory } from '@temporalio/common';
import { INLINE_NOT_ADMITTED } from '../workflows/contract.ts';
import { activityContext } from './outbound.ts';

export { INLINE_NOT_ADMITTED };

export interface InlineAdmission {
  /**
   * A release function when admitted (call it once the call has ended), undefined when not. Calls
   * with the same `holder` (the workflow run they run in: its local activities at once hold one
   * workflow task slot between them) and organization take one place between them, so a run that
   * sends an event to several subscribers side by side counts once.
   */
  tryAdmit(organizationId: string, holder?: string): (() => void) | undefined;
  readonly perWorker: number;
  readonly perOrganization: number;
}

export interface InlineAdmissionLimits {
  perWorker: number;
  perOrganization: number;
}

export function createInlineAdmission({ perWorker, perOrganization }: InlineAdmissionLimits): InlineAdmission {
  for (const [name, value] of Object.entries({ perWorker, perOrganization })) {
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`inline admission needs a positive integer ${name}, got ${value}`);
  }
  let running = 0;
  const byOrganization = new Map<string, number>();
  /** Places taken by a holder, with how many of its calls share each. */
  const shared = new Map<string, { calls: number; release: () => void }>();

  function take(organizationId: string): (() => void) | undefined {
    const mine = byOrganization.get(organizationId) ?? 0;
    if (running >= perWorker || mine >= perOrganization) return undefined;
    running++;
    byOrganization.set(organizationId, mine + 1);
    return () => {
      running--;
      const left = byOrganization.get(organizationId)! - 1;
      if (left === 0) byOrganization.delete(organizationId);
      else byOrganization.set(organizationId, left);
    };
  }
  const once = (release: () => void) => {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      release();
    };
  };

  return {
    perWorker,
    perOrganization,
    tryAdmit(organizationId, holder) {
      if (holder === undefined) {
        const release = take(organizationId);
        return release && once(release);
      }
      const key = JSON.stringify([holder, organizationId]);
      let place = shared.get(key);
      if (!place) {
        const release = take(organizationId);
        if (!release) return undefined;
        place = { calls: 0, release };
        shared.set(key, place);
      }
      place.calls++;
      const taken = place;
      return once(() => {
        if (--taken.calls > 0) return;
        shared.delete(key);
        taken.release();
      });
    },
  };
}

/**
 * What refused a step that made its calls, in a refusal's details (`refusedBy`): the worker's
 * answer budget refused one of its provider answers (activities/activity-admission.ts,
 * holdingAdmission). A refusal without it was refused a place before any call.
 */
export const REFUSED_BY_ANSWER_BUDGET = 'answerBudget';

/** The refusal of a step inside the workflow task: its place, or (`why` given) the worker's answer budget, after its calls (holdingAdmission). */
export function inlineNotAdmitted(organizationId: string, why?: string): ApplicationFailure {
  return ApplicationFailure.create({
    type: INLINE_NOT_ADMITTED,
    message: why
      ? `inside the workflow task, ${why} (organization ${organizationId}): run as an activity`
      : `inside the workflow task, this worker already runs as many tenant-facing calls as it admits (organization ${organizationId}): run as an activity`,
    nonRetryable: true,
    // As ActivityNotAdmitted: logged at DEBUG by the SDK, counted and logged in one line by activities/not-admitted.ts.
    category: ApplicationFailureCategory.BENIGN,
    ...(why ? { details: [{ refusedBy: REFUSED_BY_ANSWER_BUDGET }] } : {}),
  });
}

/**
 * The input of a step that asks for admission when it runs as a local activity. Only workflow code
 * that runs the step as an activity when refused sets it: a run of earlier code replaying or
 * retrying a local step after an upgrade passes nothing and runs it as before.
 */
export interface InlineStep {
  askAdmission?: boolean;
}

/**
 * Runs `step` for the organization: as it is unless it is a local activity whose input asks for
 * admission; then only once admitted (released when the step ends, so none is held across the
 * workflow's waits), or not at all, failing with INLINE_NOT_ADMITTED before any call. Steps of one
 * run side by side (an Azure DevOps attach's three hooks) hold one workflow task slot: one place.
 */
export async function withAdmission<T>(
  inline: InlineAdmission | undefined,
  input: { organizationId: string } & InlineStep,
  step: () => Promise<T>,
  /** Called when the step is refused, before the failure is thrown (a metric). */
  onRefused?: () => void,
): Promise<T> {
  const info = activityContext()?.info;
  if (!inline || !input.askAdmission || !info?.isLocal) return step();
  const release = inline.tryAdmit(input.organizationId, info.workflowExecution?.runId);
  if (!release) {
    onRefused?.();
    throw inlineNotAdmitted(input.organizationId);
  }
  try {
    return await step();
  } finally {
    release();
  }
}
