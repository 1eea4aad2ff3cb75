import { AsyncLocalStorage } from 'node:async_hooks';
import type { Provider } from '../../lib/domain.ts';
import { parseCost } from '../../lib/parse-cost.ts';
import { DEFAULT_MAX_BODY_BYTES } from '../outbound.ts';
import { getHeapStatistics } from 'node:v8';
import { containerMemoryLimit } from '../../lib/container-memory.ts';
import { answerBudgetLimits, createAnswerBudget, currentAnswerCall, currentAnswerHold, type AnswerBudget, type AnswerBudgetSizing } from './answer-budget.ts';

const MiB = 1024 * 1024;

/**
 * The most heap one provider answer may take once parsed, as parseCost counts it from its bytes
 * (lib/parse-cost.ts, the webhook receivers' count) before JSON.parse runs on the worker's main
 * thread: 5 times the answer's byte cap, 40 MiB. A tenant chooses its GitLab, Bitbucket Data Center
 * and Azure DevOps server (GitHub's base URL is the operator's, its answers counted all the same), and an 8 MiB answer built to be costly (`[[[…]]]`) took 232 MiB of heap
 * and stalled the worker 4.7-15 s in JSON.parse, every other tenant's activities, workflow tasks and
 * heartbeats with it. The count stops once past the bound.
 *
 * From legitimate answers (bench/provider-answer-cost.ts over the fakes' wire shapes, 2026-12-07):
 * pages count 2.4-3.6 per byte (their heap 1.1-1.9 times less). The largest are one Azure DevOps
 * project's repositories, unpaged: ~10,500 fill the 8 MiB cap and count 21.1 MiB (16.8 of heap);
 * with non-ASCII names 3.6 a byte, 29 MiB at the cap. Paged ones are far below: Bitbucket's 1,000
 * repositories 2.6 MiB, GitHub's 100 1.3, GitLab's 100 projects 0.4 and 100 hooks 0.1. Text counts at
 * most 4 a byte (a non-ASCII string held two bytes a character, and the decoded text), so 5 a byte of
 * the cap (40 MiB) passes any answer of mostly text the cap lets through: 1.4 times the largest
 * measured. `[[[…]]]` counts 29 a byte, `[{},…]` 22, `[[],…]` 19: refused from ~1.4-2.1 MiB.
 *
 * What it bounds on the worker (chart: --max-old-space-size=1024; 20 activity slots, 15 of them
 * tenant-facing, and 5 inline places in workflow tasks, each of which may carry an Azure DevOps
 * attach's 3 hook steps side by side: 30 tenant-facing calls at once): a call parses and keeps at
 * most 40 MiB of answer at a time, a hook listing across its pages at most 16 MiB (cappedPages;
 * Azure DevOps' one-answer subscription query too, its subscriptions kept as strings only), and
 * JSON.parse runs one at a time. The sum over the worker's calls (15 activities × 40 + 15 inline
 * hook steps × 16 = 840 MiB at these bounds, against 232 MiB for one answer and 907 MiB, a crash, for
 * one listing before any count) is bounded by the worker's answer budget
 * (activities/providers/answer-budget.ts): every answer counted here also reserves its count there
 * before it is parsed, held until what holds its value ends (the activity or inline step, a
 * repository listing's page until written), 652 MiB for the worker under the chart's 1 GiB heap and
 * 163 MiB for one organization (less in a container limited below its heap; worker.answerBudgetBytes sets it). An answer that does not fit is not parsed: AnswerBudgetFullError;
 * the step that asked admission is refused as by the admissions (no attempt spent, asked again after
 * a wait: activities/activity-admission.ts), others retried (`WorkerBusy`).
 */
export const MAX_ANSWER_PARSE_COST = 5 * DEFAULT_MAX_BODY_BYTES;

/**
 * An answer (or a listing's answers together) that JSON.parse would make larger than its bound:
 * refused before it is parsed, and never retried (the same server answers the same). Its message
 * names the provider's origin and the bound, nothing of the answer.
 */
export class AnswerTooCostlyError extends Error {
  override name = 'AnswerTooCostlyError';
  constructor(
    readonly provider: Provider,
    readonly origin: string,
    readonly limit: number,
    listing: boolean,
  ) {
    super(
      `${origin} (${provider}) answered ${listing ? 'a listing whose pages' : 'JSON that'} would take more than ${Math.round(limit / MiB)} MiB of memory once parsed: refused unparsed`,
    );
  }
}

/**
 * An answer the worker's answer budget (activities/providers/answer-budget.ts) could not take when it
 * came: the worker (or the organization's share of it) already holds as many parsed answers as it
 * admits, or the step that would have held it has ended. Refused before it is parsed, and retried:
 * the worker is busy, the tenant not wrong (`WorkerBusy`). Its message names the provider's origin
 * and the budget, nothing of the answer.
 */
export class AnswerBudgetFullError extends Error {
  override name = 'AnswerBudgetFullError';
  constructor(
    readonly provider: Provider,
    readonly origin: string,
    readonly organizationId: string,
    reason: 'worker' | 'organization' | 'ended',
    budget: AnswerBudget,
    /**
     * Whether waiting can let the answer in: the budget is full of others' answers (what the step
     * itself holds and this answer fit in its organization's share). False for a step that holds
     * too much itself, or that has ended: asking again after a wait would be refused the same.
     */
    readonly waitCures = false,
  ) {
    super(
      reason === 'ended'
        ? `${origin} (${provider}) answered after the step that would hold its answer had ended: refused unparsed`
        : reason === 'organization'
          ? `this worker already holds ${Math.round(budget.perOrganization / MiB)} MiB of parsed provider answers for organization ${organizationId}, its share: ${origin} (${provider})'s answer refused unparsed, retried`
          : `this worker already holds ${Math.round(budget.limit / MiB)} MiB of parsed provider answers, all it admits: ${origin} (${provider})'s answer refused unparsed, retried`,
    );
  }
}

/** Whether a provider's answer was refused before it was parsed (too costly, or no room in the worker's budget): an error answer's status then decides. */
export const refusedUnparsed = (error: unknown): error is AnswerTooCostlyError | AnswerBudgetFullError =>
  error instanceof AnswerTooCostlyError || error instanceof AnswerBudgetFullError;

/**
 * The sizes of this process's answer budget (answerBudgetLimits): `configured` (worker.answerBudgetBytes)
 * when set, else from its V8 heap limit and its container's memory limit.
 */
export function workerAnswerBudgetSizing(configured?: number): AnswerBudgetSizing {
  return answerBudgetLimits(MAX_ANSWER_PARSE_COST, { heapLimit: getHeapStatistics().heap_size_limit, containerLimit: containerMemoryLimit(), configured });
}

let processBudget: AnswerBudget | undefined;
/** An answer budget for the process (its memory is), sized from its heap and container when first asked for: for a provider factory given none (worker/main.ts gives the configured one). */
export function workerAnswerBudget(): AnswerBudget {
  processBudget ??= createAnswerBudget(workerAnswerBudgetSizing());
  return processBudget;
}

/** What a listing's answers may still take, shared by its pages' parses (cappedPages). */
interface ListingBudget {
  remaining: number;
  limit: number;
}
const listingBudgets = new AsyncLocalStorage<ListingBudget>();

/**
 * Runs `fn` (one page of a listing) with the listing's budget: every answer parsed inside it counts
 * against what the listing's earlier pages took, and one that would take more than is left is
 * refused before it is parsed. The pages' values are held until the listing ends, so the budget is
 * the most a listing holds.
 */
export function withinListingBudget<T>(budget: ListingBudget, fn: () => Promise<T>): Promise<T> {
  return listingBudgets.run(budget, fn);
}

export const listingBudget = (limit: number): ListingBudget => ({ remaining: limit, limit });

/**
 * An answer's JSON value, once its count (parseCost) is within the bound: MAX_ANSWER_PARSE_COST, or
 * less inside a listing that has spent part of its budget. Throws AnswerTooCostlyError before
 * parsing otherwise, AnswerBudgetFullError before parsing when the worker's answer budget cannot
 * take the count (reserve), and JSON.parse's SyntaxError for text that is not JSON. `bytes` are the
 * answer's as read (UTF-8).
 */
export function parseAnswer(provider: Provider, origin: string, bytes: Uint8Array): unknown {
  // Decoded as fetch's response.json() decodes (UTF-8, a byte-order mark dropped).
  return parseCounted(provider, origin, bytes, () => JSON.parse(new TextDecoder().decode(bytes)));
}

/** The count alone (and its reservation), for an answer a client library parses itself (Octokit): throws as parseAnswer does before it parses. */
export function checkAnswer(provider: Provider, origin: string, bytes: Uint8Array): void {
  parseCounted(provider, origin, bytes, () => undefined);
}

/** The same for an answer a client library read as text (the Azure DevOps SDK): counted over its UTF-8. */
export function checkAnswerText(provider: Provider, origin: string, text: string): void {
  checkAnswer(provider, origin, Buffer.from(text, 'utf8'));
}

function parseCounted<T>(provider: Provider, origin: string, bytes: Uint8Array, parse: () => T): T {
  const budget = listingBudgets.getStore();
  const limit = budget ? Math.min(MAX_ANSWER_PARSE_COST, budget.remaining) : MAX_ANSWER_PARSE_COST;
  const cost = parseCost(bytes, limit);
  if (cost > limit) {
    // A listing whose budget was the tighter bound names the listing's limit, else the answer's.
    const byListing = budget !== undefined && budget.remaining < MAX_ANSWER_PARSE_COST;
    throw new AnswerTooCostlyError(provider, origin, byListing ? budget.limit : limit, byListing);
  }
  reserve(provider, origin, cost);
  if (budget) budget.remaining -= cost;
  return parse();
}

/**
 * Reserves an answer's count in its call's worker budget, held by the call's hold (set by the
 * provider factory, activities/providers/index.ts); throws AnswerBudgetFullError, before the parse,
 * when it does not fit. A call not made through the factory (the API's GitHub check, adapters built
 * directly) has no worker budget: counted against its own bounds only, as before.
 */
function reserve(provider: Provider, origin: string, cost: number): void {
  const call = currentAnswerCall();
  if (!call) return;
  const { budget, organizationId } = call;
  const hold = currentAnswerHold();
  if (!hold || hold.released) throw new AnswerBudgetFullError(provider, origin, organizationId, 'ended', budget);
  const release = budget.tryReserve(organizationId, cost);
  if (!release) {
    const byOrganization = budget.held(organizationId) + cost > budget.perOrganization;
    throw new AnswerBudgetFullError(provider, origin, organizationId, byOrganization ? 'organization' : 'worker', budget, hold.held + cost <= budget.perOrganization);
  }
  hold.take(release, cost);
}

/** Characters of a provider's error message kept (messageExcerpt). */
export const MAX_MESSAGE_CHARS = 500;

/**
 * A provider's error message as at most MAX_MESSAGE_CHARS characters: a string cut to it, any other
 * value rendered shallowly (3 levels, `[…]`/`{…}` below, stopping once long enough), never
 * JSON.stringify or String of a tenant's structure whole: a 400 whose `message` was `[[[…]]]` 700,000
 * deep (37 MiB counted, under the answer bound) overflowed the stack there, and the RangeError made a
 * permanent refusal a retried ProviderUnavailable, each retry parsing it again.
 */
export function messageExcerpt(value: unknown): string {
  if (typeof value === 'string') return value.length > MAX_MESSAGE_CHARS ? `${value.slice(0, MAX_MESSAGE_CHARS)}…` : value;
  let out = '';
  const full = () => out.length > MAX_MESSAGE_CHARS;
  const render = (v: unknown, depth: number): void => {
    if (typeof v === 'string') out += JSON.stringify(v.slice(0, MAX_MESSAGE_CHARS));
    else if (v === null || typeof v !== 'object') out += String(v);
    else if (Array.isArray(v)) {
      if (depth === 0) return void (out += '[…]');
      out += '[';
      for (let i = 0; i < v.length && !full(); i++) {
        if (i > 0) out += ',';
        render(v[i], depth - 1);
      }
      out += ']';
    } else {
      if (depth === 0) return void (out += '{…}');
      out += '{';
      let first = true;
      for (const key in v) {
        if (full()) break;
        if (!first) out += ',';
        first = false;
        out += `${JSON.stringify(key.slice(0, MAX_MESSAGE_CHARS))}:`;
        render((v as Record<string, unknown>)[key], depth - 1);
      }
      out += '}';
    }
  };
  render(value, 3);
  return full() ? `${out.slice(0, MAX_MESSAGE_CHARS)}…` : out;
}
