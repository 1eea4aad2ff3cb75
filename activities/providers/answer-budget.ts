/**
 * The worker's budget for parsed provider answers: what all of its calls may hold at once.
 *
 * Each provider answer is counted before it is parsed (activities/providers/answer.ts): one at most
 * MAX_ANSWER_PARSE_COST (40 MiB), a hook listing's pages together at most 16 MiB. Those bound a
 * call, not the worker: 15 tenant-facing activities and 15 inline hook steps at their bounds hold
 * 840 MiB at once against a 1 GiB heap, and several tenants (or one with several organizations)
 * whose servers answer costly JSON under the bounds at once could run the worker, and every other
 * tenant's work on it, out of memory. So every counted answer also reserves its count here before
 * it is parsed, and gives it back when what holds its value ends (an AnswerHold: the activity or
 * inline step, or a repository listing's page until it is written). An answer the budget cannot take
 * is not parsed: the call fails (AnswerBudgetFullError). A step that asked admission is then refused
 * as the admissions refuse it (activities/activity-admission.ts, holdingAdmission): no attempt spent,
 * asked again after its run's wait; others fail retryably (`WorkerBusy`).
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const MiB = 1024 * 1024;

export interface AnswerBudgetLimits {
  /** Counted answer cost the worker holds at once, all organizations together. */
  limit: number;
  /** Of it, what one organization's calls hold at once. */
  perOrganization: number;
}

export interface AnswerBudget extends AnswerBudgetLimits {
  /** Counted cost held now: the worker's, or one organization's. */
  held(organizationId?: string): number;
  /** A release function (idempotent) when `cost` fits the worker's and the organization's budget, else undefined. */
  tryReserve(organizationId: string, cost: number): (() => void) | undefined;
}

export function createAnswerBudget({ limit, perOrganization }: AnswerBudgetLimits): AnswerBudget {
  for (const [name, value] of Object.entries({ limit, perOrganization })) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`an answer budget needs a positive integer ${name}, got ${value}`);
  }
  let total = 0;
  const byOrganization = new Map<string, number>();
  return {
    limit,
    perOrganization,
    held: (organizationId) => (organizationId === undefined ? total : (byOrganization.get(organizationId) ?? 0)),
    tryReserve(organizationId, cost) {
      if (cost <= 0) return () => {};
      const mine = byOrganization.get(organizationId) ?? 0;
      if (total + cost > limit || mine + cost > perOrganization) return undefined;
      total += cost;
      byOrganization.set(organizationId, mine + cost);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        total -= cost;
        const left = byOrganization.get(organizationId)! - cost;
        if (left === 0) byOrganization.delete(organizationId);
        else byOrganization.set(organizationId, left);
      };
    },
  };
}

/**
 * What the worker keeps of its memory for everything but held answers: its own peak (267 MiB RSS in
 * the ingest benchmark and 226-230 MiB in a 10,000-repository refresh, with the chart's Node flags;
 * RSS, so more than its heap), one parse's own peak above what it keeps (`[[[…]]]` counted at 299 MiB
 * kept 278 but peaked 515: ~40 MiB more for an answer at MAX_ANSWER_PARSE_COST, and only one parse
 * runs at a time), and room for V8 to collect in. Kept of the V8 heap limit, and of the container's
 * memory limit (its figures are RSS already).
 */
export const WORKER_OWN_HEAP = 384 * MiB;

/** The budget's sizes, and what set them. */
export interface AnswerBudgetSizing extends AnswerBudgetLimits {
  /** worker.answerBudgetBytes; else the V8 heap limit or the container's memory limit, whichever allows less. */
  sizedBy: 'config' | 'heap' | 'container';
  /** What the heap and the container allow (the limit when not configured). */
  allowed: number;
}

/**
 * The budget's sizes: `configured` (worker.answerBudgetBytes) when set, else what the memory allows.
 * That is the lower of the V8 heap limit (`heap_size_limit`: 1,036 MiB under the chart's
 * `--max-old-space-size=1024 --max-semi-space-size=4`) and the container's memory limit (cgroup:
 * the kernel kills the process there, whatever the heap's limit; 1,280 MiB in the chart), less
 * WORKER_OWN_HEAP: 652 MiB under the chart (16 answers at the 40 MiB bound, 22 of the largest
 * legitimate one, 29 MiB), at least two answers at the bound. A container limited below its heap
 * (768 MiB with the chart's flags) gets 384 MiB. One organization a quarter of it (163 MiB under
 * the chart), as it has a quarter of the activity slots, and at least one answer at the bound, so
 * any answer within its own bound can pass. Legitimate calls hold far less: a page of repositories
 * 0.4-2.6 MiB, a hook listing 1-2 MiB, an Azure DevOps project's repositories 21-29 MiB at the byte cap.
 */
export function answerBudgetLimits(
  maxAnswer: number,
  { heapLimit, containerLimit, configured }: { heapLimit: number; containerLimit?: number | undefined; configured?: number | undefined },
): AnswerBudgetSizing {
  const byContainer = containerLimit !== undefined && containerLimit < heapLimit;
  const allowed = Math.max(2 * maxAnswer, Math.floor((byContainer ? containerLimit : heapLimit) - WORKER_OWN_HEAP));
  const limit = configured ?? allowed;
  return { limit, perOrganization: Math.min(limit, Math.max(maxAnswer, Math.floor(limit / 4))), sizedBy: configured !== undefined ? 'config' : byContainer ? 'container' : 'heap', allowed };
}

/**
 * What holds the values of the answers parsed inside it: each answer's reservation is given back
 * when its hold is released, once. A reservation offered to a released hold is given back at once
 * and refused (`take` answers false): whatever would hold that value has ended.
 */
export class AnswerHold {
  #releases: (() => void)[] = [];
  #released = false;
  #cost = 0;
  #adopted: AnswerHold[] = [];
  get released(): boolean {
    return this.#released;
  }
  /** The counted cost this hold keeps now, the holds it adopted included. */
  get held(): number {
    return this.#cost + this.#adopted.reduce((sum, other) => sum + other.held, 0);
  }
  /** Keeps `release` (of a reservation of `cost`) until this hold is released; false (and released now) when it already is. */
  take(release: () => void, cost = 0): boolean {
    if (this.#released) {
      release();
      return false;
    }
    this.#releases.push(release);
    this.#cost += cost;
    return true;
  }
  /** Releases `other` with this hold (at once if this one already is). */
  adopt(other: AnswerHold): void {
    if (this.take(() => other.release())) this.#adopted.push(other);
  }
  /** Runs `fn` so that the answers parsed inside it (its async continuations included) are held by this hold. */
  run<T>(fn: () => T): T {
    return scopes.run({ hold: this, call: scopes.getStore()?.call }, fn);
  }
  /** Gives back every reservation it took. Idempotent. */
  release(): void {
    this.#released = true;
    const releases = this.#releases;
    this.#releases = [];
    this.#cost = 0;
    this.#adopted = [];
    for (const release of releases) release();
  }
}

/**
 * The hold the caller runs in, and the provider call if it runs in one: one AsyncLocalStorage for
 * both (on Node 20 every one in use costs each promise created in the process a propagation).
 */
const scopes = new AsyncLocalStorage<{ hold?: AnswerHold | undefined; call?: AnswerCall | undefined }>();

/** The hold the caller runs in (the innermost), if any. */
export const currentAnswerHold = (): AnswerHold | undefined => scopes.getStore()?.hold;

/** Runs `fn` in a hold of its own, released when `fn` settles, however it ends. */
export async function holdingAnswers<T>(fn: () => Promise<T> | T): Promise<T> {
  const hold = new AnswerHold();
  try {
    return await hold.run(fn);
  } finally {
    hold.release();
  }
}

/** Whose budget a provider call's answers count against: set by the provider factory for each adapter call. */
export interface AnswerCall {
  budget: AnswerBudget;
  organizationId: string;
}

/** The provider call the caller runs in, if it runs in one the factory made. */
export const currentAnswerCall = (): AnswerCall | undefined => scopes.getStore()?.call;

/**
 * Runs one adapter call with its budget: inside the caller's hold when it has one still open (the
 * activity or step, which holds what the call returns), else in a hold of its own, released when the
 * call ends (a caller without a hold, or a call whose step has ended).
 */
export function withinAnswerBudget<T>(call: AnswerCall, fn: () => Promise<T>): Promise<T> {
  const hold = currentAnswerHold();
  if (hold && !hold.released) return scopes.run({ hold, call }, fn);
  const own = new AnswerHold();
  return scopes.run({ hold: own, call }, async () => {
    try {
      return await fn();
    } finally {
      own.release();
    }
  });
}
