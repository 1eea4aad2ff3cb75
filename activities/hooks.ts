import { ApplicationFailure } from '@temporalio/common';
import type { ActivitySettings } from './index.ts';
import { classified, curableBudgetRefusal, toActivityFailure } from './errors.ts';
import { ProviderHttpError, RepositoryNameTakenError, type HookSpec, type NameCheck, type ProviderAdapter, type ProviderFactory, type ProviderHook, type RepositoryRef } from './providers/port.ts';
import { open, type EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import {
  attachRefusal,
  attachmentIdOf,
  attachmentOf,
  forgetHooks,
  forgetHooksExcept,
  hookSweepDue,
  hooksRecordedElsewhere,
  legacyHooksInUseElsewhere,
  listUndetachedRepositories,
  loadRepositoryTarget,
  markHooksSwept,
  markHookSweepTried,
  recordedCredentialVersions,
  recordedHookIds,
  recordHookHealth,
  setAttachmentStatus,
  type UnattachedSweptStatus,
} from '../lib/db/repositories/attachments.ts';
import { markRepositoriesVanished, missedByLastListing } from '../lib/db/repositories/repository-cache.ts';
import { dropUnusedWebhookCredentials, ensureWebhookCredential, recordHookCarrying, type WebhookCredential } from '../lib/db/repositories/webhook-credentials.ts';
import type { HookHealth, Provider } from '../lib/domain.ts';
import type { Logger } from '../lib/logger.ts';
import type { HookOperation, HookOutcome, WorkerMetrics } from '../lib/metrics.ts';
import { admitActivity, holdingAdmission } from './activity-admission.ts';
import { callScope, ownActivityContext } from './call-scope.ts';
import { AnswerHold, currentAnswerHold } from './providers/answer-budget.ts';
import { withAdmission, type InlineAdmission, type InlineStep } from './inline-admission.ts';
import { activityContext } from './outbound.ts';

export interface HookActivityDeps {
  /** Admission of tenant-facing calls into workflow tasks (activities/inline-admission.ts), one per worker. */
  inline?: InlineAdmission;
  /** Admission of tenant-facing activities into activity slots (activities/activity-admission.ts), one per worker. */
  activitySlots?: InlineAdmission;
  db: Db;
  keys: EncryptionKeys;
  providers: ProviderFactory;
  logger: Logger;
  settings: ActivitySettings;
  metrics?: WorkerMetrics;
}

/** Which repository of which organization an activity acts on: ids only, never a secret. */
export interface RepositoryKey {
  organizationId: string;
  repositoryId: string;
}

/** What the sweep of a repository that is not attached did (reconcileHooks). */
export interface UnattachedSweep {
  /** The attachment's status when swept (an `attaching` or `detaching` one is now `failed`). */
  status: UnattachedSweptStatus;
  /** Hooks at the delivery URL deleted. */
  removed: string[];
  /** Why the sweep could not be completed (it is not tried again until the status changes). */
  failure?: string;
  /** Hooks at the delivery URL left for a later night (SWEEP_MAX_DELETIONS, SWEEP_DELETE_UNTIL_MS): the sweep stays due. */
  left?: number;
}

/** Attempts of the step (across its schedules after refusals of an activity slot) before a sweep that keeps failing transiently is given up (recorded as done). */
const SWEEP_ATTEMPTS = 4;
/**
 * One sweep deletes at most this many hooks, and starts no deletion once this long has passed since
 * the activity started: hooks at our delivery URL (which is not secret) are the tenant's to create,
 * and each deletion is a call its server may answer slowly (up to the 30-second call timeout, plus
 * as long again for the repository read of a 404's confirmation). 45 s + 30 s + 30 s stays under
 * the step's 2-minute timeout (workflows/reconcile.ts). The rest is left for a later night. A test
 * shortens the 45 s with the worker's settings.sweepDeletionWindowMs.
 */
export const SWEEP_MAX_DELETIONS = 20;
export const SWEEP_DELETE_UNTIL_MS = 45_000;

/** Failure types of attach and detach steps, as an operator reads them in the Temporal UI. */
export const HookFailureTypes = {
  repositoryNotFound: 'RepositoryNotFound',
  repositoryNotVisible: 'RepositoryNotVisible',
  connectionNotActive: 'ConnectionNotActive',
  connectionUnavailable: 'ConnectionUnavailable',
  providerNotConfigured: 'ProviderNotConfigured',
  unknownHook: 'UnknownHook',
  hookPresenceUnknown: 'HookPresenceUnknown',
  credentialRotated: 'WebhookCredentialRotated',
} as const;

/**
 * Where a connection's hooks deliver: the provider's receiver under the public URL, naming the
 * connection (opaque, not a secret) so the receiver verifies against that connection's credential
 * only. Each connection's hooks have their own URL: attach adopts a hook of this connection, never
 * another's.
 */
export function deliveryUrl(publicUrl: string, provider: Provider, connectionId: string): string {
  return `${publicUrl.replace(/\/+$/, '')}/api/events-handler/v1/events/${provider}?c=${connectionId}`;
}

export const AZURE_DEVOPS_HOOK_EVENT_TYPES = ['git.push', 'git.pullrequest.created', 'git.pullrequest.updated'] as const;
export const GITLAB_HOOK_EVENTS = ['push_events', 'tag_push_events', 'merge_requests_events'] as const;
export const BITBUCKET_HOOK_EVENTS = ['repo:refs_changed', 'pr:opened', 'pr:from_ref_updated', 'pr:modified', 'pr:merged', 'pr:declined'] as const;

/** How long an attach's steps may reuse what an earlier step reached the repository with: well past the workflow task they share. */
const RUN_TARGET_TTL_MS = 60_000;
/** A bound on the runs remembered at once (an attach's last step forgets its own). */
const RUN_TARGETS_KEPT = 1000;
/**
 * How long a read made ahead waits for its step to take it before it is aborted and its admission
 * place given back. The hand-over it waits for takes milliseconds (the GitLab attach benchmark's
 * three hand-overs: 14-93 ms together under load); one never taken (the run went on elsewhere)
 * holds its place this long at most.
 */
export const READ_AHEAD_CLAIM_MS = 2_000;

/** Why a read still running was aborted (it is never awaited then: nobody sees these but a trace). */
const STEP_ENDED = 'the step that started this read has ended';
const READ_DROPPED = 'a read made ahead was dropped: the step it was made for is not the one that ran';
const READ_UNCLAIMED = `a read made ahead was not taken by its step within ${READ_AHEAD_CLAIM_MS} ms`;
const READ_UNUSED = 'the row no longer names the target this read was made for';
/** The reason a read is aborted with: an AbortError, as an aborted fetch fails. */
const abortError = (why: string) => new DOMException(why, 'AbortError');

/** What the ensure and the prune ask readingTarget for, naming the read a step before them may have made ahead. */
const ensureListing = (projectId: string | undefined) => `ensureHook listHooks ${projectId ?? ''}`;
const PRUNE_LISTING = 'pruneHooks listHooks';

/** `promise`, marked handled: a step that fails before awaiting it does not leave it rejecting unhandled. */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

function nonRetryable(type: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

/**
 * The hooks forgelink keeps on one repository, by key. Azure DevOps: one Service Hook subscription
 * per event type, scoped to the repository (never global). GitLab: one project hook. Bitbucket DC:
 * one repository webhook. GitHub: none, the App delivers.
 */
function hookKeys(provider: Provider): string[] {
  switch (provider) {
    case 'github':
      return [];
    case 'gitlab':
      return ['project-hook'];
    case 'bitbucket':
      return ['repository-webhook'];
    case 'azure-devops':
      return [...AZURE_DEVOPS_HOOK_EVENT_TYPES];
  }
}

function requireHookKey(provider: Provider, key: string): void {
  if (!hookKeys(provider).includes(key)) throw nonRetryable(HookFailureTypes.unknownHook, `${provider} has no hook "${key}" in forgelink's hook set`);
}

/**
 * One hook of the set, carrying the connection's webhook credential: GitLab's secret token,
 * Bitbucket's HMAC secret, Azure DevOps' Basic auth (the PR-updated subscription filtered to
 * source-branch pushes). The spec (with the secret) stays in the activity.
 */
function hookSpec(provider: Provider, key: string, url: string, credential: WebhookCredential): HookSpec {
  switch (provider) {
    case 'gitlab':
      return { url, events: [...GITLAB_HOOK_EVENTS], secret: credential.secret };
    case 'bitbucket':
      return { url, events: [...BITBUCKET_HOOK_EVENTS], secret: credential.secret };
    default:
      return {
        url,
        events: [key],
        basicAuthUser: credential.basicAuthUser,
        secret: credential.secret,
        ...(key === 'git.pullrequest.updated' ? { filters: { notificationType: 'PushNotification' } } : {}),
      };
  }
}

/**
 * Providers whose hook calls name the repository by its name, not its id: another repository can
 * take that name once it is deleted or renamed (GitLab: the project id; Azure DevOps: subscriptions
 * filtered by the repository's id).
 */
const ADDRESSED_BY_NAME: ReadonlySet<Provider> = new Set(['bitbucket']);

const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');

/** Whether a provider hook is the one of `key` at `url`: same URL, and for Azure DevOps the same event type (all three share the URL). */
function isHookFor(provider: Provider, key: string, url: string, hook: ProviderHook): boolean {
  if (!sameUrl(hook.url, url)) return false;
  return provider !== 'azure-devops' || hook.events[0] === key;
}

/** Which hook of the set a provider hook stands for, whatever its URL: Azure DevOps by event type; the others keep one hook. */
const isSameHookKey = (provider: Provider, key: string, hook: ProviderHook) => provider !== 'azure-devops' || hook.events[0] === key;

const sameSet = (a: string[] = [], b: string[] = []) => a.length === b.length && a.every((x) => b.includes(x));
const sameFilters = (a: Record<string, string> = {}, b: Record<string, string> = {}) =>
  sameSet(Object.keys(a), Object.keys(b)) && Object.entries(a).every(([k, v]) => b[k] === v);

/** How a provider hook differs from its spec, in words for hookHealth; empty when it is as it should be. */
function driftOf(hook: ProviderHook, spec: HookSpec): string[] {
  const drift: string[] = [];
  if (!hook.healthy) drift.push(hook.disabledReason ?? 'disabled');
  if (!sameUrl(hook.url, spec.url)) drift.push('delivery URL');
  if (!sameSet(hook.events, spec.events)) drift.push('events');
  if (!sameFilters(hook.filters, spec.filters)) drift.push('filters');
  return drift;
}

/**
 * Saves `spec` onto the listed hook `hookId`, or creates the hook when there is none or it was
 * deleted since the listing (404). `checked`: the name's lookup made after the listing (Bitbucket
 * DC), which the adapter compares before either call.
 */
export async function saveHook(adapter: Pick<ProviderAdapter, 'updateHook' | 'createHook'>, ref: RepositoryRef, hookId: string | undefined, spec: HookSpec, checked?: NameCheck): Promise<ProviderHook> {
  if (hookId !== undefined) {
    try {
      return await adapter.updateHook(ref, hookId, spec, checked);
    } catch (error) {
      if (!(error instanceof ProviderHttpError && error.status === 404)) throw error;
      // A 404 on our hook may mean the name moved since `checked` was made (renamed, another
      // repository under it): the creation checks the name afresh, never on that lookup.
      return adapter.createHook(ref, spec);
    }
  }
  return adapter.createHook(ref, spec, checked);
}

/**
 * The input of a step run as a regular activity by a run that can take a refusal of an activity
 * slot (activities/activity-admission.ts); runs of earlier code pass nothing and run it as before.
 */
interface AsksActivitySlot {
  askAdmission?: boolean;
  /**
   * The attempt number this activity's first attempt has: set when the run scheduled the step again
   * after a refusal that came after attempts of it (workflows/activity-slot.ts), whose attempts
   * Temporal counts from 1 again. Absent, 1.
   */
  firstAttempt?: number;
}

export function createHookActivities({ db, keys, providers, logger, settings, metrics, inline, activitySlots }: HookActivityDeps) {
  /** Runs one hook operation at the provider and counts its outcome (a thrown failure counts as `failed`). */
  async function counted<T>(provider: Provider, operation: HookOperation, fn: () => Promise<T>, outcomeOf: (result: T) => HookOutcome): Promise<T> {
    if (!metrics) return fn();
    try {
      const result = await fn();
      metrics.hookOperation(provider, operation, outcomeOf(result));
      return result;
    } catch (error) {
      metrics.hookOperation(provider, operation, 'failed');
      throw error;
    }
  }

  async function repository(key: RepositoryKey, { requireActive }: { requireActive: boolean }) {
    const row = await loadRepositoryTarget(db, key.organizationId, key.repositoryId);
    if (!row) throw nonRetryable(HookFailureTypes.repositoryNotFound, `repository ${key.repositoryId} is not in the repository cache of organization ${key.organizationId}`);
    const refusal = requireActive ? attachRefusal(row) : undefined;
    if (refusal) throw nonRetryable(HookFailureTypes.connectionNotActive, refusal);
    return row;
  }
  type RepositoryRow = Awaited<ReturnType<typeof repository>>;

  function adapterFor(row: RepositoryRow): ProviderAdapter {
    if (row.provider !== 'github' && !row.credential) {
      throw nonRetryable(HookFailureTypes.connectionUnavailable, `connection ${row.connection_id} (${row.connection_status}) has no credential to reach ${row.provider}`);
    }
    const secret = row.credential ? open(keys, row.credential, row.connection_id) : undefined;
    try {
      return providers({ connectionId: row.connection_id, organizationId: row.organization_id, provider: row.provider, baseUrl: row.base_url, externalKey: row.external_key, secret });
    } catch (error) {
      throw nonRetryable(HookFailureTypes.providerNotConfigured, (error as Error).message);
    }
  }

  /**
   * What an attach's local provider steps last reached a repository with on this worker: the row and
   * the adapter built from it, by run, organization and repository. Those steps run one after another
   * inside the run's workflow task, on this worker; a later one starts its first provider read with
   * the earlier step's adapter at once, beside its own read of the row (see readingTarget), instead
   * of after it. Entries are dropped by the attach's last step (pruneHooks) or after RUN_TARGET_TTL_MS.
   */
  const runTargets = new Map<string, RunTarget>();
  interface RunTarget {
    row: RepositoryRow;
    adapter: ProviderAdapter;
    storedAt: number;
    ahead?: ReadAhead;
  }
  /** Aborts the read `entry` holds made ahead, if any, and gives back its place. */
  function dropAhead(entry: RunTarget | undefined, reason: string): void {
    const ahead = entry?.ahead;
    if (!ahead) return;
    entry.ahead = undefined;
    ahead.end(reason);
  }
  function forgetRunTarget(runKey: string): void {
    dropAhead(runTargets.get(runKey), READ_DROPPED);
    runTargets.delete(runKey);
  }
  /** The key of `key`'s entry for the running local activity's run; none for a regular activity (its run's steps may be anywhere). */
  const runTargetKey = (key: RepositoryKey) => {
    const info = activityContext()?.info;
    const runId = info?.isLocal ? info.workflowExecution?.runId : undefined;
    return runId ? JSON.stringify([runId, key.organizationId, key.repositoryId]) : undefined;
  };
  function rememberRunTarget(runKey: string | undefined, row: RepositoryRow, adapter: ProviderAdapter): void {
    if (!runKey) return;
    const now = Date.now();
    // Kept in the order stored (each is deleted before it is set again), so the expired ones come first.
    for (const [k, entry] of runTargets) {
      if (now - entry.storedAt <= RUN_TARGET_TTL_MS) break;
      forgetRunTarget(k);
    }
    forgetRunTarget(runKey);
    runTargets.set(runKey, { row, adapter, storedAt: now });
    if (runTargets.size > RUN_TARGETS_KEPT) forgetRunTarget(runTargets.keys().next().value!);
  }
  /**
   * The run's next step's first read, started by the step before it as soon as that step's own
   * provider work was done (readAhead), so that it is in flight while the run hands over from one
   * step to the next. Made for the step named `step` only, by the local activity `producer` (its
   * activity id as a number), and used only by the activity the run schedules right after it.
   *
   * It counts within the organization's admission like any provider call (the README, "A read made
   * ahead..."): until its step takes it (`claim`) it holds a place of the worker's inline admission,
   * shared with its run's steps inside the workflow task (taken without waiting: none free, no read
   * ahead), so the next step of the run is admitted beside it; once taken, it is that step's call,
   * and ends with it (aborted if the step ends first). Dropped, or not taken within
   * READ_AHEAD_CLAIM_MS, it is aborted (`end`: its socket closed) and its place given back.
   */
  interface ReadAhead {
    step: string;
    producer: number;
    answer: Promise<unknown>;
    /** The consumer takes it: its place is given back (the step's own counts it) and it ends with the running step. */
    claim(): void;
    /** Aborts it if still running and gives back its place. Idempotent. */
    end(reason: string): void;
  }
  /**
   * The running local activity's place in its run's schedule: the workflow SDK gives every activity
   * of a run, regular or local, the id `${seq}` from one sequence (@temporalio/workflow
   * scheduleActivity, scheduleLocalActivity; workflows/attach.ts sets no activityId), so the
   * activity a run schedules right after activity n has id n + 1. None for anything else.
   */
  const scheduledAs = (): number | undefined => {
    const info = activityContext()?.info;
    return info?.isLocal && /^[1-9][0-9]{0,15}$/.test(info.activityId) ? Number(info.activityId) : undefined;
  };
  /**
   * Starts the read the run's next step begins with (`step`, as that step names it to readingTarget)
   * with what this step reached the repository with. Only for a provider whose hook set is one hook:
   * its steps (the lookup, the one ensure, the prune) follow one another, so the step before knows
   * which comes next and that nothing of the run acts on the hooks in between. The next step keeps
   * the answer only as readingTarget keeps an early read: when the row still names the same target,
   * checked as always before the step acts on anything.
   */
  function readAhead(runKey: string | undefined, step: string, read: (row: RepositoryRow, adapter: ProviderAdapter) => Promise<unknown>): void {
    const entry = runKey ? runTargets.get(runKey) : undefined;
    const producer = scheduledAs();
    if (!entry || producer === undefined || hookKeys(entry.row.provider).length !== 1) return;
    dropAhead(entry, READ_DROPPED);
    const activity = ownActivityContext();
    // The run's place (held by this step when it was admitted): no place free, no read ahead.
    const release = inline ? inline.tryAdmit(entry.row.organization_id, activity?.info.workflowExecution?.runId) : () => undefined;
    if (!release) return;
    // Under the activity's own context, not this step's scope: it outlives the step that starts it.
    const scope = callScope(activity);
    // Its answers are held by a hold of its own, not this step's: given back when it is dropped, or with the step that takes it.
    const held = new AnswerHold();
    const unclaimed = setTimeout(() => {
      if (entry.ahead === ahead) entry.ahead = undefined;
      ahead.end(READ_UNCLAIMED);
    }, READ_AHEAD_CLAIM_MS);
    unclaimed.unref();
    const ahead: ReadAhead = {
      step,
      producer,
      answer: handled(scope.run(() => held.run(() => read(entry.row, entry.adapter)))),
      claim() {
        clearTimeout(unclaimed);
        release();
        const takenBy = currentAnswerHold();
        if (takenBy) takenBy.adopt(held);
        else held.release();
        const consumer = activityContext()?.cancellationSignal;
        if (consumer?.aborted) scope.end(consumer.reason);
        else consumer?.addEventListener('abort', () => scope.end(consumer.reason), { once: true });
      },
      end(reason) {
        clearTimeout(unclaimed);
        scope.end(abortError(reason));
        release();
        held.release();
      },
    };
    entry.ahead = ahead;
  }
  /** Whether an adapter built from `earlier` reaches the provider as one built from `row` would, on the same repository. */
  const sameTarget = (row: RepositoryRow, earlier: RepositoryRow) =>
    row.id === earlier.id &&
    row.organization_id === earlier.organization_id &&
    row.provider === earlier.provider &&
    row.external_id === earlier.external_id &&
    row.connection_id === earlier.connection_id &&
    row.base_url === earlier.base_url &&
    row.external_key === earlier.external_key &&
    row.credential === earlier.credential;

  /**
   * The repository's row (checked as `repository` checks it, then by `check`), its adapter, and
   * `read`, the step's first provider call, a read: made with the adapter an earlier local step of
   * this run left (runTargets) beside the row's read, and kept only when the row names the same
   * target (else made again with the row's adapter); without one, made after the row's read as
   * before. So every check of the row still comes before the step acts on anything, and only a read
   * goes out before it. `answer` is returned unawaited (a step awaits it where its failure counts).
   * When the step before started this read already (readAhead, for this step's `ahead`), that read
   * is the early one, but only if that step is the very activity the run scheduled before this one
   * (activity id one less): a step between them run as a regular activity (refused admission; it
   * neither uses nor clears the run's entry) may have changed the hooks since, as may another
   * attach or detach of the same run. Any other read made ahead is dropped, as is an entry older
   * than RUN_TARGET_TTL_MS.
   */
  async function readingTarget<T>(
    key: RepositoryKey,
    { requireActive, check, ahead }: { requireActive: boolean; check?: (row: RepositoryRow) => void; ahead?: string },
    read: (row: RepositoryRow, adapter: ProviderAdapter) => Promise<T>,
  ): Promise<{ row: RepositoryRow; adapter: ProviderAdapter; answer: Promise<T> }> {
    const runKey = runTargetKey(key);
    let earlier = runKey ? runTargets.get(runKey) : undefined;
    if (earlier && Date.now() - earlier.storedAt > RUN_TARGET_TTL_MS) {
      forgetRunTarget(runKey!);
      earlier = undefined;
    }
    const madeAhead = earlier?.ahead;
    if (earlier) earlier.ahead = undefined;
    const consumer = scheduledAs();
    const usable = madeAhead && ahead !== undefined && madeAhead.step === ahead && consumer !== undefined && consumer === madeAhead.producer + 1;
    // Taken, the read made ahead is this step's; dropped, it is aborted before this step reads again.
    if (usable) madeAhead.claim();
    else madeAhead?.end(READ_DROPPED);
    let early: { answer: Promise<T>; end: (reason: string) => void } | undefined;
    if (earlier && usable) early = { answer: madeAhead.answer as Promise<T>, end: (reason) => madeAhead.end(reason) };
    else if (earlier) {
      const scope = callScope();
      early = { answer: handled(scope.run(() => read(earlier.row, earlier.adapter))), end: (reason) => scope.end(abortError(reason)) };
    }
    const row = await repository(key, { requireActive });
    check?.(row);
    if (earlier && early && sameTarget(row, earlier.row)) return { row, adapter: earlier.adapter, answer: early.answer };
    // Not used: aborted before the read with the row's adapter goes out (a check that threw above ends it with the step).
    early?.end(READ_UNUSED);
    const adapter = adapterFor(row);
    rememberRunTarget(runKey, row, adapter);
    return { row, adapter, answer: handled(read(row, adapter)) };
  }

  const refOf = (row: RepositoryRow, projectId?: string): RepositoryRef => ({ externalId: row.external_id, fullName: row.full_name, ...(projectId ? { projectId } : {}) });
  const urlOf = (row: RepositoryRow) => deliveryUrl(settings.publicUrl, row.provider, row.connection_id);

  /**
   * A 404 proves a hook gone only when the repository itself answers: providers answer 404, not
   * 403, for what the credential cannot see, so a token that lost access gets 404 for a hook that
   * still delivers. The repository missing too is either gone or hidden from us: not counted as
   * deleted. Addressed by name (Bitbucket DC), a name another repository took proves it too when
   * the connection's last complete listing did not find this one (nameHolder: `gone`). The name is
   * looked up afresh, never taken from a lookup made before the 404: a repository renamed since
   * answers 404 at its old name for a hook that still delivers under its new one.
   */
  async function confirmGone(row: RepositoryRow, adapter: ProviderAdapter, what: string): Promise<void> {
    if (ADDRESSED_BY_NAME.has(row.provider)) {
      const at = await nameHolder(row, adapter);
      if (at.holder === 'this' || at.holder === 'gone') return;
      if (at.holder === 'other') throw nameTaken(row, at.id, `${row.provider} answered 404 for ${what}`);
    } else if (await classified(() => adapter.getRepository(refOf(row)))) return;
    // Addressed by name, a 404 there is also a repository renamed: its hooks deliver under the new name.
    const renamed = ADDRESSED_BY_NAME.has(row.provider);
    throw nonRetryable(
      HookFailureTypes.hookPresenceUnknown,
      `${row.provider} answered 404 for ${what} and for repository ${row.full_name} itself: the repository is gone${renamed ? ' or renamed' : ''}, or connection ${row.connection_id} can no longer see it and the hook may still deliver; ${renamed ? "refresh the repository list (a renamed repository is picked up) or restore the connection's access" : "restore the connection's access"} and detach again, or delete the hook at the provider`,
    );
  }

  /**
   * Addressed by name (Bitbucket DC: /projects/K/repos/slug), what the name answers now: the id the
   * adapter compares with the row's before each DELETE (its guard: a repository deleted or renamed
   * leaves its name to another, whose hooks at our URL, the connection's, are that one's). Made
   * after the listing that found the hooks to delete, once for all of them: the ids listed were that
   * name's before the lookup, and a DELETE of one under another repository's path finds nothing
   * (webhook ids belong to their repository). None for the others.
   */
  async function lookUpName(row: RepositoryRow, adapter: ProviderAdapter): Promise<NameCheck | undefined> {
    if (!ADDRESSED_BY_NAME.has(row.provider)) return undefined;
    return { idAtName: await classified(() => adapter.repositoryIdAtName!(refOf(row))) };
  }

  /**
   * Whom a repository addressed by its name (Bitbucket DC) finds at that name now (looked up),
   * checked by id: itself (`this`), nobody (`none`: 404, gone or hidden from us), or
   * another repository, which took the name when this one was deleted or renamed. Which of the two
   * the connection's last complete listing tells: it did not find this one's id (the row vanished),
   * so it was deleted, its hooks with it (`gone`: nothing at the name is its); renamed, the listing
   * finds it by id and gives the row its new name. Not vanished yet (`other`): a refresh tells.
   */
  async function nameHolder(row: RepositoryRow, adapter: ProviderAdapter): Promise<{ holder: 'this' | 'none' | 'gone' | 'other'; id?: string }> {
    const id = (await lookUpName(row, adapter))!.idAtName;
    if (id === null) return { holder: 'none' };
    if (id === row.external_id) return { holder: 'this' };
    return { holder: (await missedByLastListing(db, row.id)) ? 'gone' : 'other', id };
  }

  /** The failure of a deletion whose repository's name another repository has now (nameHolder `other`): its hooks there are that one's. */
  const nameTaken = (row: RepositoryRow, otherId: string | undefined, what: string) =>
    nonRetryable(
      HookFailureTypes.hookPresenceUnknown,
      `${row.provider} shows no repository ${row.full_name} with id ${row.external_id}: the name is repository ${otherId}'s now (this one renamed, or deleted, since connection ${row.connection_id}'s last complete listing); ${what}; refresh the repository list (a renamed repository is picked up), then detach again`,
    );

  /**
   * Deletes one hook through the adapter (for Bitbucket DC, its guard: no DELETE unless the name
   * answers this repository's id). Refused there, the hook at the name is another repository's and
   * stays: when this one is known deleted (nameHolder `gone`), the holder's id is returned (nothing
   * at the name was this one's); otherwise the step fails advising a refresh.
   */
  async function deleteOneHook(row: RepositoryRow, adapter: ProviderAdapter, hookId: string, checked: NameCheck | undefined): Promise<'deleted' | 'gone' | { nameHolder: string }> {
    let deleted: boolean;
    try {
      // A lookup that found nothing at the name is not trusted to skip the DELETE: the adapter looks
      // again (a 404 that flapped back to this repository) rather than count a hook gone unasked.
      deleted = await adapter.deleteHook(refOf(row), hookId, checked?.idAtName === null ? undefined : checked);
    } catch (error) {
      if (!(error instanceof RepositoryNameTakenError)) throw toActivityFailure(error);
      if (await missedByLastListing(db, row.id)) return { nameHolder: error.idAtName };
      throw nameTaken(row, error.idAtName, `hook ${hookId} left alone`);
    }
    if (deleted) return 'deleted';
    // `checked` may predate a rename: the 404 is weighed against the name as it answers now.
    await confirmGone(row, adapter, `hook ${hookId}`);
    return 'gone';
  }

  /**
   * Deletes hooks at the provider (one proven gone counts as deleted) and forgets them; returns
   * those deleted or proven gone. A legacy hook (the global secret, from before per-connection
   * hooks) may still serve another organization's attachment of the same repository: that one is
   * only forgotten here. Addressed by name (Bitbucket DC), the name is looked up once for them all
   * (or `checked`, the lookup the caller's step made after its listing) and the adapter compares
   * it before each DELETE: where another repository has the name and this one is known deleted,
   * nothing is deleted and `nameHolder` names that repository.
   */
  async function deleteHooks(row: RepositoryRow, adapter: ProviderAdapter, hookIds: string[], checked?: NameCheck): Promise<{ deleted: string[]; nameHolder?: string }> {
    const inUse = new Set(await legacyHooksInUseElsewhere(db, row.id, hookIds));
    if (inUse.size > 0) logger.info({ repositoryId: row.id, provider: row.provider, hookIds: [...inUse] }, 'legacy hooks left in place: another attachment still relies on them');
    const toDelete = hookIds.filter((id) => !inUse.has(id));
    const check = checked ?? (toDelete.length > 0 ? await lookUpName(row, adapter) : undefined);
    const deleted: string[] = [];
    let nameHolder: string | undefined;
    for (const hookId of toDelete) {
      const outcome = await counted(row.provider, 'delete', () => deleteOneHook(row, adapter, hookId, check), (outcome) => (typeof outcome === 'object' ? 'name_taken' : outcome));
      if (typeof outcome === 'object') {
        nameHolder = outcome.nameHolder;
        break;
      }
      deleted.push(hookId);
    }
    await forgetHooks(db, row.id, hookIds);
    return { deleted, ...(nameHolder !== undefined ? { nameHolder } : {}) };
  }

  /**
   * Records a hook just saved with `credential`. A rotation that dropped that credential meanwhile
   * (it was current when this step read it) makes the step fail, to be retried: the retry saves the
   * hook again with the current one, so no hook is left carrying a credential no longer accepted.
   */
  async function recordSavedHook(row: RepositoryRow, attachmentId: string, hook: { providerHookId: string; events: string[] }, credential: WebhookCredential): Promise<void> {
    if (await recordHookCarrying(db, { ...hook, attachmentId, connectionId: row.connection_id, credentialVersion: credential.version })) return;
    throw ApplicationFailure.create({
      type: HookFailureTypes.credentialRotated,
      message: `webhook credential version ${credential.version} of connection ${row.connection_id} was dropped while hook ${hook.providerHookId} was saved with it; saving it again with the current one`,
      nonRetryable: false,
    });
  }

  /**
   * The sweep of a repository that is not attached (reconcileHooks, asked by the hook-health pass),
   * once per unattached status: when the attachment is due (hookSweepDue: `failed`, `attaching` or
   * `detaching` for an hour, not swept since), every hook at the connection's delivery URL on the
   * repository is deleted, and the sweep recorded. It runs in the repository's workflow, so no
   * attach or detach of it is under way: an `attaching` or `detaching` seen here was left by a run
   * an operator terminated, and becomes `failed`. A hook created at the provider after its attach
   * gave up on it (cancelled, timed out: the undo listed before the provider stored it) is removed
   * here; so are hooks a failed undo or detach left recorded.
   *
   * The repository is looked up first (Bitbucket by name, its id checked): a repository the provider
   * no longer shows as this row's is not swept; a listing by name is looked up again after it, and
   * each deletion compares that (deleteHooks). A hook another attachment of the connection records is never deleted.
   * Transient provider failures are retried by the activity a few times (SWEEP_ATTEMPTS of the step,
   * counted from `firstAttempt` when the run scheduled it again after a refusal; the worker's answer
   * budget full of others' answers is never one: the step is refused and asks again); after that, or
   * after a permanent one, the sweep is recorded as done with its failure logged (once per
   * status: a provider that keeps refusing costs one attempt, not one per night). At most
   * SWEEP_MAX_DELETIONS hooks are deleted, none after SWEEP_DELETE_UNTIL_MS: hooks left stay for a
   * later night (not recorded as swept; an `attaching` / `detaching` still becomes `failed`). Never
   * throws a provider failure: the repository workflow would read the failed check as an attached
   * repository's. A sweep that fails anyway (every attempt timed out) is not recorded either: the
   * attempt recorded itself first (markHookSweepTried): the pick (pendingHookSweepsPage) puts it
   * behind the connection's other due repositories.
   */
  async function sweepUnattached(key: RepositoryKey & AsksActivitySlot, row: RepositoryRow): Promise<{ swept?: UnattachedSweep }> {
    if (row.provider === 'github' || attachRefusal(row)) return {};
    const due = await hookSweepDue(db, row.id);
    if (!due) return {};
    admitActivity(activitySlots, key);
    const startedAt = Date.now();
    // Before any provider call: an attempt that times out has put the repository behind the connection's other due ones.
    await markHookSweepTried(db, row.id);
    const removed: string[] = [];
    let left = 0;
    let failure: string | undefined;
    try {
      const adapter = adapterFor(row);
      const found = await classified(() => adapter.getRepository(refOf(row)));
      if (found) {
        const url = urlOf(row);
        const atOurUrl = (await classified(() => adapter.listHooks(refOf(row, found.projectId)))).filter((hook) => sameUrl(hook.url, url)).map((hook) => hook.id);
        const elsewhere = new Set(await hooksRecordedElsewhere(db, row.connection_id, row.id, atOurUrl));
        const unrecorded = atOurUrl.filter((id) => !elsewhere.has(id));
        // Listed by name (Bitbucket DC): the name is looked up once after the listing, and each
        // deletion compares it (the adapter's guard), instead of a lookup each.
        const checked = unrecorded.length > 0 ? await lookUpName(row, adapter) : undefined;
        // One by one, within the sweep's bounds: a tenant's many slow hooks cannot make the step overrun.
        let tried = 0;
        for (const hookId of unrecorded) {
          if (tried >= SWEEP_MAX_DELETIONS || Date.now() - startedAt >= (settings.sweepDeletionWindowMs ?? SWEEP_DELETE_UNTIL_MS)) break;
          tried += 1;
          const { deleted, nameHolder } = await deleteHooks(row, adapter, [hookId], checked);
          removed.push(...deleted);
          if (nameHolder !== undefined) {
            // A name another repository took from this deleted one: what it lists there is that one's, none left for later.
            tried = unrecorded.length;
            break;
          }
        }
        left = unrecorded.length - tried;
      }
    } catch (error) {
      const activityFailure = toActivityFailure(error);
      // The step's attempt, not its schedule's: a run refused an activity slot schedules the step again, counted from 1 by Temporal.
      const attempt = (activityContext()?.info.attempt ?? SWEEP_ATTEMPTS) + (key.firstAttempt ?? 1) - 1;
      const retryable = activityFailure instanceof ApplicationFailure ? !activityFailure.nonRetryable : true;
      // The worker's answer budget full of others' answers is its load, not the provider's failure:
      // thrown on any attempt, so the step is refused (holdingAdmission) and asks again, never given up for it.
      if (retryable && (attempt < SWEEP_ATTEMPTS || curableBudgetRefusal(activityFailure) !== undefined)) throw activityFailure;
      failure = activityFailure.message;
    }
    const stopped = `the ${due === 'attaching' ? 'attach' : 'detach'} of this repository stopped half-way (its run was terminated)`;
    // Hooks left (and no failure): the sweep stays due, behind the connection's other due repositories (pendingHookSweepsPage).
    const unfinished = !failure && left > 0;
    const failWith =
      due === 'failed'
        ? undefined
        : failure
          ? `${stopped}; the hook-health pass could not remove forgelink's hooks from it (${failure}): attach or detach it again`
          : unfinished
            ? `${stopped}; the hook-health pass is removing forgelink's hooks from it (${left} left for a later night): attach or detach it again`
            : `${stopped}; the hook-health pass removed forgelink's hooks from it: attach or detach it again`;
    if (!unfinished) await markHooksSwept(db, row.id, due, failWith);
    else if (failWith !== undefined) await markHooksSwept(db, row.id, due, failWith, { done: false });
    const swept: UnattachedSweep = { status: due, removed, ...(failure ? { failure } : {}), ...(unfinished ? { left } : {}) };
    if (failure) logger.warn({ repositoryId: row.id, provider: row.provider, ...swept }, 'sweep of an unattached repository failed; not tried again until its status changes');
    else if (unfinished) logger.info({ repositoryId: row.id, provider: row.provider, ...swept }, 'unattached repository partly swept; the rest on a later night');
    else logger.info({ repositoryId: row.id, provider: row.provider, ...swept }, 'unattached repository swept');
    return { swept };
  }

  async function markAttached(key: RepositoryKey): Promise<void> {
    await setAttachmentStatus(db, { organizationId: key.organizationId, repositoryId: key.repositoryId, status: 'attached' });
    logger.info({ repositoryId: key.repositoryId }, 'repository attached');
  }

  /**
   * An attach's provider step, run once admitted (withAdmission), in a scope of its own: a read it
   * started and did not await (an early read it did not use, a read made ahead it took) is aborted
   * when it ends, so none runs on past the admission that counted the step.
   */
  function admittedStep<T>(input: { organizationId: string } & InlineStep, step: () => Promise<T>): Promise<T> {
    return withAdmission(inline, input, async () => {
      const scope = callScope();
      try {
        return await scope.run(step);
      } finally {
        scope.end(abortError(STEP_ENDED));
      }
    });
  }

  /** pruneHooks' work once admitted. */
  async function pruning(input: RepositoryKey & { keepHookIds: string[]; completeAttachment?: boolean }): Promise<{ removed: string[]; attachmentCompleted?: true }> {
    const { row, adapter, answer: listing } = await readingTarget(input, { requireActive: true, ahead: PRUNE_LISTING }, (row, adapter) => classified(() => adapter.listHooks(refOf(row))));
    const [listed, versions] = await Promise.all([listing, recordedCredentialVersions(db, row.id)]);
    const stray = listed.filter((hook) => sameUrl(hook.url, urlOf(row)) && !input.keepHookIds.includes(hook.id)).map((hook) => hook.id);
    // A recorded hook outside the set is deleted wherever its URL points, never only forgotten: once
    // forgotten, nothing reaches it (a detach's sweep finds hooks at our URL only). Legacy ones go
    // even unlisted, as before; a legacy hook another attachment records is only forgotten (deleteHooks).
    const listedIds = new Set(listed.map((hook) => hook.id));
    const recordedOutside = [...versions].filter(([id, version]) => !input.keepHookIds.includes(id) && (version === null || listedIds.has(id))).map(([id]) => id);
    const removed = [...new Set([...stray, ...recordedOutside])];
    const { nameHolder } = await deleteHooks(row, adapter, removed);
    // The repository known deleted and its name another's (deleteHooks deleted nothing): what this
    // attach made went with it, and a deleted repository is never marked attached.
    if (nameHolder !== undefined) throw toActivityFailure(new RepositoryNameTakenError(row.provider, refOf(row), nameHolder, 'completing the attach (the repository was deleted)'));
    // Only the repository's workflow records its hooks, and its ensures have all settled: when
    // every record read above is kept, there is nothing to forget and no query to make.
    if ([...versions.keys()].some((id) => !input.keepHookIds.includes(id))) await forgetHooksExcept(db, row.id, input.keepHookIds);
    if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, removed }, 'stray hooks at the delivery URL removed');
    if (!input.completeAttachment) return { removed };
    await markAttached(input);
    return { removed, attachmentCompleted: true };
  }

  return holdingAdmission({
    /** Marks the repository attaching (an attached one stays attached while reconciled); returns the keys of its hook set. */
    async beginAttachment(key: RepositoryKey): Promise<{ provider: Provider; fullName: string; hookKeys: string[]; recordedHookIds: string[] }> {
      const row = await repository(key, { requireActive: true });
      const [, recorded] = await Promise.all([setAttachmentStatus(db, { ...key, status: 'attaching', keepAttached: true }), recordedHookIds(db, row.id)]);
      return { provider: row.provider, fullName: row.full_name, hookKeys: hookKeys(row.provider), recordedHookIds: recorded };
    },

    /**
     * Proves the connection can see the repository (for GitHub, that the App installation covers it); Azure DevOps also needs its project id.
     * This, ensureHook and pruneHooks call the tenant's provider: run inside a workflow task, they ask for admission first (`askAdmission`).
     */
    async verifyRepository(key: RepositoryKey & InlineStep): Promise<{ projectId?: string }> {
      // Run as a regular activity (refused inline) by a run that asks, it asks for an activity slot; inside the workflow task, for a place there.
      admitActivity(activitySlots, key);
      return admittedStep(key, async () => {
        const row = await repository(key, { requireActive: true });
        const adapter = adapterFor(row);
        const runKey = runTargetKey(key);
        rememberRunTarget(runKey, row, adapter);
        const found = await classified(() => adapter.getRepository(refOf(row)));
        if (!found) {
          throw nonRetryable(
            HookFailureTypes.repositoryNotVisible,
            `${row.provider} repository ${row.full_name} (id ${row.external_id}) is gone or connection ${row.connection_id} cannot see it`,
          );
        }
        if (row.provider === 'azure-devops' && !found.projectId) throw nonRetryable(HookFailureTypes.repositoryNotVisible, `Azure DevOps gave no project for repository ${row.full_name}`);
        // The hook's ensure, next, lists the repository's hooks first.
        readAhead(runKey, ensureListing(found.projectId || undefined), (row, adapter) => classified(() => adapter.listHooks(refOf(row, found.projectId))));
        return found.projectId ? { projectId: found.projectId } : {};
      });
    },

    /**
     * Makes one hook of the set exist, and records it. The repository's hooks are listed first: the
     * hook of this key we recorded, wherever its URL now points (publicUrl moved, someone edited it),
     * or else a hook already pointing at our delivery URL (left by a run that crashed between
     * creating and recording it, or deleted from our records) is adopted and saved with our full
     * settings (which points it back at our URL, re-enables it and restores the secret, write-only
     * at every provider) instead of duplicated; further copies at our URL are deleted.
     */
    async ensureHook(input: RepositoryKey & InlineStep & { hookKey: string; projectId?: string }): Promise<{ providerHookId: string; outcome: 'created' | 'adopted'; duplicatesRemoved: number }> {
      admitActivity(activitySlots, input);
      return admittedStep(input, async () => {
        const runKey = runTargetKey(input);
        const { row, adapter, answer: listing } = await readingTarget(
          input,
          { requireActive: true, check: (row) => requireHookKey(row.provider, input.hookKey), ahead: ensureListing(input.projectId || undefined) },
          (row, adapter) => classified(() => adapter.listHooks(refOf(row, input.projectId))),
        );
        return counted(
          row.provider,
          'ensure',
          async () => {
            const ref = refOf(row, input.projectId);
            // The provider's listing does not wait for the database's answers: they are independent.
            const [credential, attachmentId, recordedIds, listed] = await Promise.all([
              ensureWebhookCredential(db, keys, { id: row.connection_id, provider: row.provider }),
              attachmentIdOf(db, row.id),
              recordedHookIds(db, row.id),
              listing,
            ]);
            if (!attachmentId) throw nonRetryable(HookFailureTypes.repositoryNotFound, `repository ${row.id} has no attachment to record hooks on`);
            const spec = hookSpec(row.provider, input.hookKey, urlOf(row), credential);
            const recorded = new Set(recordedIds);
            const matching = listed.filter((hook) => isHookFor(row.provider, input.hookKey, spec.url, hook));
            // The hook we already know wins over any copy.
            matching.sort((a, b) => Number(recorded.has(b.id)) - Number(recorded.has(a.id)));
            // A hook we recorded is ours wherever its URL now points (publicUrl moved, someone edited
            // it): saved back in place, as the hook-health check does, instead of being forgotten
            // beside a new one while it goes on delivering our secret elsewhere. A legacy hook another
            // attachment still records is left to it: ours is made beside it (the prune forgets it).
            const recordedElsewhere = matching.some((hook) => recorded.has(hook.id))
              ? []
              : listed.filter((hook) => recorded.has(hook.id) && !sameUrl(hook.url, spec.url) && isSameHookKey(row.provider, input.hookKey, hook));
            const shared = new Set(await legacyHooksInUseElsewhere(db, row.id, recordedElsewhere.map((hook) => hook.id)));
            const drifted = recordedElsewhere.find((hook) => !shared.has(hook.id));
            const [existing, ...duplicates] = drifted ? [drifted, ...matching] : matching;
            // Listed by name (Bitbucket DC): the name is looked up once after the listing, and the
            // adapter compares it before the save and before each DELETE of a duplicate
            // (RepositoryNameTaken, nothing saved or deleted, when another repository has it: renamed
            // or deleted since the repository was verified, our hook would be made on that one).
            const checked = await lookUpName(row, adapter);
            const hook = await classified(() => saveHook(adapter, ref, existing?.id, spec, checked));
            // The prune, next, lists the hooks: with nothing more to change at the provider, its
            // listing goes out now, beside this hook's record, instead of after the hand-over.
            if (duplicates.length === 0) readAhead(runKey, PRUNE_LISTING, (row, adapter) => classified(() => adapter.listHooks(refOf(row))));
            try {
              await recordSavedHook(row, attachmentId, { providerHookId: hook.id, events: spec.events }, credential);
              for (const duplicate of duplicates) await classified(() => adapter.deleteHook(ref, duplicate.id, checked));
              await forgetHooks(db, row.id, duplicates.map((d) => d.id));
            } catch (error) {
              // Retried, this step saves the hook again: the prune's listing must come after that.
              dropAhead(runKey ? runTargets.get(runKey) : undefined, READ_DROPPED);
              throw error;
            }
            const outcome = existing?.id === hook.id ? 'adopted' : 'created';
            logger.info({ repositoryId: row.id, provider: row.provider, hookKey: input.hookKey, providerHookId: hook.id, outcome, duplicatesRemoved: duplicates.length }, 'hook ensured');
            return { providerHookId: hook.id, outcome, duplicatesRemoved: duplicates.length };
          },
          (result) => result.outcome,
        );
      });
    },

    /**
     * Compensation for ensureHook: deletes the hook of that key unless it was recorded before this
     * attach began. Found by listing, so it also undoes a creation whose answer never arrived.
     * Bitbucket DC lists by name: where the name answers another repository now (this one deleted
     * or renamed since the attach's lookup), what it lists is that one's and nothing is deleted
     * (deleteHooks, the adapter's guard). This one known deleted (missed by the connection's last
     * listing), its hook went with it: the undo ends, reporting the name's holder. Otherwise it
     * fails for good (HookPresenceUnknown, naming both ids): a renamed repository keeps the hook
     * under its new name until a refresh finds it and a detach (or the nightly sweep) removes it.
     */
    async removeHook(input: RepositoryKey & AsksActivitySlot & { hookKey: string; keepHookIds: string[] }): Promise<{ removed: string[] }> {
      admitActivity(activitySlots, input);
      const row = await repository(input, { requireActive: false });
      requireHookKey(row.provider, input.hookKey);
      const adapter = adapterFor(row);
      const removed = (await classified(() => adapter.listHooks(refOf(row))))
        .filter((hook) => isHookFor(row.provider, input.hookKey, urlOf(row), hook) && !input.keepHookIds.includes(hook.id))
        .map((hook) => hook.id);
      const { nameHolder } = await deleteHooks(row, adapter, removed);
      if (nameHolder !== undefined) {
        logger.warn(
          { repositoryId: row.id, provider: row.provider, hookKey: input.hookKey, externalId: row.external_id, nameHolder, leftAlone: removed },
          "nothing removed (compensation): the repository was deleted, and its name is another repository's now, whose hooks these are",
        );
        return { removed: [] };
      }
      if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, hookKey: input.hookKey, removed }, 'hook removed (compensation)');
      return { removed };
    },

    /**
     * Deletes hooks at the connection's delivery URL outside the hook set (e.g. an event type no
     * longer used), the hooks recorded outside it wherever they point (listed; legacy ones the
     * attachment had before even unlisted: the new set replaces them), and forgets records of hooks
     * no longer there. With `completeAttachment` (the attach's last step),
     * then marks the repository attached, as completeAttachment does, and says so in its result: a
     * worker from before this option, which may take the step run as an activity, leaves it to the
     * workflow.
     */
    async pruneHooks(input: RepositoryKey & InlineStep & { keepHookIds: string[]; completeAttachment?: boolean }): Promise<{ removed: string[]; attachmentCompleted?: true }> {
      admitActivity(activitySlots, input);
      return admittedStep(input, async () => {
        // The attach's last step: what its steps reached the repository with is no longer needed here.
        const runKey = runTargetKey(input);
        try {
          return await pruning(input);
        } finally {
          if (runKey) forgetRunTarget(runKey);
        }
      });
    },

    async completeAttachment(key: RepositoryKey): Promise<void> {
      await markAttached(key);
    },

    /**
     * Records why an attach or a detach failed; a repository gone from the cache has nothing to
     * record on. A failed re-attach (reconcile) of an attached repository leaves it attached, with
     * the failure as its reason: its hooks are still in place and deliver, so its events stay routed.
     */
    async failAttachment(input: RepositoryKey & { reason: string }): Promise<void> {
      if (!(await loadRepositoryTarget(db, input.organizationId, input.repositoryId))) return;
      await setAttachmentStatus(db, { organizationId: input.organizationId, repositoryId: input.repositoryId, status: 'failed', reason: input.reason, keepAttached: true });
      logger.warn({ repositoryId: input.repositoryId, reason: input.reason }, 'attach or detach failed');
    },

    /** Marks the repository detaching; returns the hooks recorded for it. */
    async beginDetachment(key: RepositoryKey): Promise<{ provider: Provider; fullName: string; recordedHookIds: string[] }> {
      const row = await repository(key, { requireActive: false });
      await setAttachmentStatus(db, { ...key, status: 'detaching' });
      return { provider: row.provider, fullName: row.full_name, recordedHookIds: await recordedHookIds(db, row.id) };
    },

    /**
     * Deletes one recorded hook; a hook already gone counts as deleted. This and sweepHooks call the
     * tenant's provider and hold an activity slot while it answers: run by a detach that can take a
     * refusal (`askAdmission`), they ask the worker's admission for the organization before anything
     * else (activities/activity-admission.ts); refused, they call nothing and fail
     * ActivityNotAdmitted, and the run schedules them again after a timer, from the same attempt.
     */
    async deleteRecordedHook(input: RepositoryKey & AsksActivitySlot & { providerHookId: string }): Promise<void> {
      admitActivity(activitySlots, input);
      const row = await repository(input, { requireActive: false });
      await deleteHooks(row, adapterFor(row), [input.providerHookId]);
    },

    /**
     * Deletes every other hook pointing at the connection's delivery URL: copies our records never
     * knew about. Found by a listing by name (Bitbucket DC), they are deleted only while the name
     * still answers this repository's id (deleteHooks, the adapter's guard): a stale row's detach must not
     * sweep the hook of the repository that took its name, and deletes nothing once its repository
     * is known deleted.
     */
    async sweepHooks(key: RepositoryKey & AsksActivitySlot): Promise<{ removed: string[] }> {
      admitActivity(activitySlots, key);
      const row = await repository(key, { requireActive: false });
      const adapter = adapterFor(row);
      const url = urlOf(row);
      let hooks: ProviderHook[];
      try {
        hooks = await adapter.listHooks(refOf(row));
      } catch (error) {
        if (!(error instanceof ProviderHttpError && error.status === 404)) throw toActivityFailure(error);
        await confirmGone(row, adapter, 'its hooks');
        throw toActivityFailure(error);
      }
      const atUrl = hooks.filter((hook) => sameUrl(hook.url, url)).map((hook) => hook.id);
      // A name another repository took from this deleted one: what it lists there is that one's (none deleted).
      const removed = (await deleteHooks(row, adapter, atUrl)).nameHolder === undefined ? atUrl : [];
      if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, removed }, 'unrecorded hooks at the delivery URL removed');
      return { removed };
    },

    async finishDetachment(key: RepositoryKey): Promise<void> {
      await forgetHooksExcept(db, key.repositoryId, []);
      await setAttachmentStatus(db, { ...key, status: 'detached' });
      logger.info({ repositoryId: key.repositoryId }, 'repository detached');
    },

    /**
     * The hook-health check of one attached repository: each hook of its set must exist, be enabled,
     * deliver to our URL with our events (and filters) and carry the current credential. Drift is
     * repaired in place (a save re-enables and rewrites the hook; a missing one is re-created) and
     * what was found is recorded as the attachment's hookHealth. A healthy set costs two reads and
     * no write at the provider. A repository the provider no longer shows is flagged vanished, never
     * detached. Returns no hookHealth when the repository is not attached (nothing to check).
     */
    async reconcileHooks(key: RepositoryKey & AsksActivitySlot): Promise<{ hookHealth?: HookHealth; hookIds: string[]; swept?: UnattachedSweep }> {
      const row = await repository(key, { requireActive: false });
      const attachment = await attachmentOf(db, row.id);
      // Never a hookHealth here: the repository workflow reads one as "attached".
      if (attachment?.status !== 'attached') return { hookIds: [], ...(attachment ? await sweepUnattached(key, row) : {}) };
      // Asked once there is a check to make, before any call to the provider (as deleteRecordedHook does).
      admitActivity(activitySlots, key);
      return counted(
        row.provider,
        'health_check',
        async () => {
          const recorded = await recordedHookIds(db, row.id);
          const finish = async (hookHealth: HookHealth, hookIds: string[]) => {
            await recordHookHealth(db, row.id, hookHealth);
            logger.info({ repositoryId: row.id, provider: row.provider, ...hookHealth }, 'hook health checked');
            return { hookHealth, hookIds };
          };
          const refusal = attachRefusal(row);
          if (refusal) return finish({ status: 'failing', reason: refusal }, recorded);
          const adapter = adapterFor(row);
          const found = await classified(() => adapter.getRepository(refOf(row)));
          if (!found) {
            await markRepositoriesVanished(db, row.connection_id, [row.external_id]);
            return finish({ status: 'failing', reason: `${row.provider} no longer shows ${row.full_name}: flagged vanished, not detached` }, recorded);
          }
          const ref = refOf(row, found.projectId);
          const hooks = await classified(() => adapter.listHooks(ref));
          const credential = await ensureWebhookCredential(db, keys, { id: row.connection_id, provider: row.provider });
          const versions = await recordedCredentialVersions(db, row.id);
          // A legacy hook another attachment still records is left to it (it would otherwise flip between the two): ours is made beside it.
          const sharedLegacy = new Set(await legacyHooksInUseElsewhere(db, row.id, recorded));
          const repaired: string[] = [];
          const hookIds: string[] = [];
          for (const hookKey of hookKeys(row.provider)) {
            const spec = hookSpec(row.provider, hookKey, urlOf(row), credential);
            // The hook we recorded is ours even where its URL drifted; otherwise one at our URL is adopted.
            const current =
              hooks.find((hook) => recorded.includes(hook.id) && !sharedLegacy.has(hook.id) && isSameHookKey(row.provider, hookKey, hook)) ??
              hooks.find((hook) => isHookFor(row.provider, hookKey, spec.url, hook));
            const drift = current ? driftOf(current, spec) : ['missing'];
            // Secrets are write-only at every provider: a hook carries the current credential when we last saved it with it.
            if (current && versions.get(current.id) !== credential.version) drift.push('credential');
            let hook = current;
            if (drift.length > 0) {
              hook = await classified(() => saveHook(adapter, ref, current?.id, spec));
              repaired.push(`${hookKey} ${current?.id === hook.id ? 'updated' : 're-created'} (${drift.join(', ')})`);
            }
            if (drift.length > 0) await recordSavedHook(row, attachment.id, { providerHookId: hook!.id, events: spec.events }, credential);
            hookIds.push(hook!.id);
          }
          if (recorded.some((id) => !hookIds.includes(id))) await forgetHooksExcept(db, row.id, hookIds);
          // Every hook of this set now carries the current credential: an older one no hook of the
          // connection carries any more is dropped (this finishes a rotation that left hooks behind).
          const { dropped } = await dropUnusedWebhookCredentials(db, row.connection_id, credential.version);
          if (dropped.length > 0) logger.info({ connectionId: row.connection_id, dropped, current: credential.version }, 'older webhook credentials no hook carries dropped');
          return finish(repaired.length > 0 ? { status: 'repaired', reason: repaired.join('; ') } : { status: 'healthy' }, hookIds);
        },
        (result): HookOutcome => result.hookHealth.status,
      );
    },

    /** Repositories of a connection that still need a detach (for disconnect). */
    async listUndetachedRepositories({ connectionId }: { connectionId: string }): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
      return listUndetachedRepositories(db, connectionId);
    },
  });
}
