import { setImmediate } from 'node:timers/promises';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Db } from '../lib/db/index.ts';
import { ContentRefusedError, contentWrite } from '../lib/db/errors.ts';
import type { Transaction } from 'kysely';
import type { Database } from '../lib/db/schema.ts';
import { loadDelivery } from '../lib/db/repositories/deliveries.ts';
import { queueDispatches } from '../lib/db/repositories/event-dispatches.ts';
import {
  cachedRepositoryIds,
  claimDeliveryDigest,
  deliveryScope,
  findAttachedRepositories,
  findConnectionsByExternalKey,
  insertDeliveryEvents,
  renameCachedRepository,
  type NewEventRow,
  type RecordedEvent,
} from '../lib/db/repositories/events.ts';
import { markRepositoriesVanished, upsertRepositories } from '../lib/db/repositories/repository-cache.ts';
import { listSubscribersForDispatchOf, listSubscribersOf, type PublicSubscriber } from '../lib/db/repositories/subscribers.ts';
import { isAccessChange, type NormalizedEvent, type Provider } from '../lib/domain.ts';
import { attachmentsOfInstallation, attachmentsOfInstance } from '../lib/instance.ts';
import { refGlobMatches } from '../lib/ref-glob.ts';
import type { Logger } from '../lib/logger.ts';
import type { EventInput } from '../workflows/contract.ts';
import type { DispatchTarget, FirstAttempt, FirstAttempts } from './dispatch.ts';

export interface EventActivityDeps {
  db: Db;
  logger: Logger;
  /** subscribers.deliveryDeadlineSeconds. */
  deliveryDeadlineSeconds: number;
  /** The dispatcher's first attempts (activities/dispatch.ts), for recordEventAndDispatch. */
  firstAttempts?: FirstAttempts;
  /** Providers whose deliveries without a connection (legacy hooks) are recorded: those the receivers accept them for (lib/config.ts legacyHookWindow). */
  legacyHookProviders?: readonly Provider[];
}

export const DEFAULT_DELIVERY_DEADLINE_SECONDS = 24 * 60 * 60;

/** recordEventAndDispatch's start-to-close timeout (workflows/event.ts), when its activity info has none. */
const RECORD_AND_DISPATCH_BUDGET_MS = 45_000;

/** One event to send to one subscriber. */
export interface Dispatch {
  eventId: string;
  subscriberId: string;
  /** The attempt number this activity's first attempt has (the inline first attempt is 1). */
  firstAttempt?: number;
  /**
   * Set by workflow code that can take a refusal: it makes the attempt as a regular activity when
   * its inline first attempt is not admitted (activities/inline-admission.ts), and schedules a
   * regular attempt again after a timer when that is not admitted into an activity slot
   * (activities/activity-admission.ts). Without it (a run of earlier code re-executing its activity
   * after an upgrade) the attempt is made as before.
   */
  askAdmission?: boolean;
  /**
   * With askAdmission, as a regular activity: how long the run waits before it asks again if this
   * attempt is refused an activity slot. A refusal that leaves no time for that gives the pair up,
   * counted by the refused activity (forgelink_dispatch_gave_up_total{reason="deadline"}).
   */
  refusedWaitMs?: number;
}

/**
 * A recorded delivery, and what its run dispatches: the (event, subscriber) pairs themselves when
 * there are at most INLINE_DISPATCH_LIMIT (sent from the workflow, first attempts inline), else
 * only how many were queued in event_dispatches under `runKey` (drained by drainDispatches).
 * A queued result has no `dispatches`, so a worker from before the queue fails its workflow task
 * (and leaves it to a newer one) rather than take it for a delivery with no subscriber.
 */
export type RecordedDelivery = RecordedInline | RecordedQueued;

interface RecordedInline {
  recorded: number;
  dispatches: Dispatch[];
  /** How long the workflow keeps retrying each dispatch. */
  deliveryDeadlineSeconds: number;
  /** From recordEventAndDispatch: each pair's first attempt, already made, in the order of `dispatches`. */
  firstAttempts?: FirstAttempt[];
}

export interface RecordedQueued {
  recorded: number;
  /** Pairs queued in event_dispatches. */
  queued: number;
  /** The run's queue: its workflow id. */
  runKey: string;
  deliveryDeadlineSeconds: number;
}

/**
 * The most (event, subscriber) pairs a run sends from the workflow itself; above it they are queued
 * in PostgreSQL, so a run's history does not grow with its fan-out (each inline pair adds a marker,
 * each retried one an activity and a timer: 1,000 pairs made ~490 KB of history).
 */
export const INLINE_DISPATCH_LIMIT = 16;


const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * How long a provider may deliver a body again (days), and so how long a body is remembered per
 * connection: GitLab resends a hook's events of the last 7 days, GitHub Enterprise Server redelivers
 * for 7 days (github.com 3), Azure DevOps retries for about 36 hours, Bitbucket DC does not
 * redeliver; never less than 3 days.
 */
export const REDELIVERY_WINDOW_DAYS: Record<Provider, number> = { github: 7, gitlab: 7, bitbucket: 3, 'azure-devops': 3 };

export function createEventActivities({ db, logger, deliveryDeadlineSeconds, firstAttempts, legacyHookProviders = [] }: EventActivityDeps) {
  /**
   * The recording (see recordEvent). With `firstAttempts`, the subscribers are read with their
   * sealed secrets and, when the pairs go inline, the rows this call inserted come back with their
   * stored events, so that the first attempts need no read of their own.
   */
  async function record(input: EventInput, { forFirstAttempts }: { forFirstAttempts: boolean }) {
    const { provider, deliveryId, connectionId, bodyDigest } = input;
    // The run's queue is keyed by its workflow id (every run of the delivery's id shares it).
    const runKey = Context.current().info.workflowExecution?.workflowId ?? `${provider}:${connectionId ?? ''}:${deliveryId}`;
    type Recorded = { recorded: RecordedEvent[]; dispatches: Dispatch[]; subscribers: Map<string, DispatchTarget['subscriber']> } | { recorded: number; queued: number };
    // A legacy hook's delivery (no connection, the global secret) stored by an older pod during a
    // rolling upgrade, while the window was open, or held through a Temporal outage is acted on only
    // while the window is open for its provider: the receivers would refuse it now, so no tenant
    // holding the global secret gets an event into another organization through an old row.
    if (!connectionId && provider !== 'github' && !legacyHookProviders.includes(provider)) {
      logger.warn({ provider, deliveryId }, "a legacy hook's delivery (no connection) with webhooks.acceptLegacyHooks off for its provider: not recorded");
      return { result: { recorded: [], dispatches: [], subscribers: new Map() } as Recorded, runKey, receivedAt: new Date(input.receivedAt) };
    }
    // A run started before the intake table carries its events in its input.
    const delivery = input.events ? { ...input, events: input.events } : await loadDelivery(db, { provider, deliveryId, connectionId });
    if (!delivery) {
      throw ApplicationFailure.create({ type: 'DeliveryNotStored', nonRetryable: true, message: `delivery ${provider}:${deliveryId} is not in the intake table (removed after the retention period?)` });
    }
    const { events, instanceUrl, installationId } = delivery;
    const receivedAt = new Date(input.receivedAt);
    const result = await db.transaction().execute(async (trx): Promise<Recorded> => {
      // The receiver sends a digest only where the credential signs the body but not the delivery id
      // (Bitbucket DC, api/routes/webhooks.ts BODY_DIGEST_PROVIDERS); a run whose input carries one
      // (a row stored or a run started before that, of any provider) still claims it.
      if (connectionId && bodyDigest) {
        const notBefore = new Date(receivedAt.getTime() - REDELIVERY_WINDOW_DAYS[provider] * DAY_MS);
        if (!(await claimDeliveryDigest(trx, { connectionId, digest: bodyDigest, deliveryId, receivedAt, notBefore }))) {
          logger.warn({ provider, deliveryId, connectionId }, 'the same body was recorded for the connection under another delivery id: a replay, not recorded');
          return { recorded: [], dispatches: [], subscribers: new Map() };
        }
      }
      const found = await findAttachedRepositories(trx, provider, events.map((e) => e.repository.externalId), deliveryScope(provider, connectionId));
      // A connection's hook names its instance; a legacy hook's delivery is placed by the URLs in its payload.
      const { kept: attached, ambiguous } = connectionId ? { kept: found, ambiguous: [] } : attachmentsOfInstance(attachmentsOfInstallation(provider, found, installationId), instanceUrl);
      if (ambiguous.length > 0) {
        logger.warn({ provider, deliveryId, externalIds: ambiguous, instanceUrl }, 'repository id attached on several instances and the delivery matches none: not recorded for them');
      }
      const installationConnections =
        installationId && events.some(isAccessChange) ? await findConnectionsByExternalKey(trx, provider, installationId) : [];
      // Access changes are applied per connection bound to the installation in a few set-based
      // statements, not two queries per repository: an installation event can name ~65,000 of them,
      // which one at a time passed this activity's timeout and was retried for good.
      const accessTargets = await applyAccessChanges(trx, provider, installationConnections, events);
      // The attached rows of each external id, in the order found.
      const attachedById = new Map<string, typeof attached>();
      for (const repository of attached) {
        const same = attachedById.get(repository.externalId);
        if (same) same.push(repository);
        else attachedById.set(repository.externalId, [repository]);
      }
      const renamed = new Set<string>();
      const rows: NewEventRow[] = [];
      for (const [sequence, event] of events.entries()) {
        // Organization → the repository (cache row) the event is about there.
        const targets = new Map<string, string | null>();
        if (isAccessChange(event)) {
          for (const connection of installationConnections) {
            const repositoryId = accessTargets.get(connection.id)?.get(event.repository.externalId) ?? null;
            if (!targets.has(connection.organizationId)) targets.set(connection.organizationId, repositoryId);
          }
        }
        for (const repository of attachedById.get(event.repository.externalId) ?? []) {
          if (event.kind !== 'repository.removed' && !renamed.has(repository.repositoryId)) {
            renamed.add(repository.repositoryId);
            const project = event.repository.project ?? repository.project;
            // The attached row was just read: only a name that differs from it costs a write.
            const differs = repository.fullName !== event.repository.fullName || repository.project !== project;
            if (differs && (await contentWrite(() => renameCachedRepository(trx, repository.repositoryId, event.repository.fullName, project)))) {
              logger.info({ repositoryId: repository.repositoryId, from: repository.fullName, to: event.repository.fullName }, 'repository renamed');
            }
          }
          if (!targets.has(repository.organizationId)) targets.set(repository.organizationId, repository.repositoryId);
        }
        for (const [organizationId, repositoryId] of targets) rows.push({ organizationId, repositoryId, sequence, event });
      }
      // Stored events come back only for a fan-out that may go inline (at most a pair a row), so a large delivery parses none of them.
      const withEvents = forFirstAttempts && rows.length <= INLINE_DISPATCH_LIMIT;
      const recorded = await contentWrite(() => insertDeliveryEvents(trx, { provider, deliveryId, ...(connectionId ? { connectionId } : {}), receivedAt }, rows, { withEvents }));
      const organizationIds = recorded.map((r) => r.organizationId);
      const subscribers: (PublicSubscriber & { secret?: string })[] = forFirstAttempts ? await listSubscribersForDispatchOf(trx, organizationIds) : await listSubscribersOf(trx, organizationIds);
      const dispatches = await wantedPairs(recorded, subscribers, events);
      if (dispatches.length <= INLINE_DISPATCH_LIMIT) {
        const withSecrets = new Map<string, DispatchTarget['subscriber']>();
        for (const { id, organizationId, url, secret } of subscribers) if (secret !== undefined) withSecrets.set(id, { id, organization_id: organizationId, url, secret });
        return { recorded, dispatches, subscribers: withSecrets };
      }
      await queueDispatches(trx, runKey, dispatches, new Date());
      return { recorded: recorded.length, queued: dispatches.length };
    }).catch((error: unknown) => {
      // A write of the delivery's content (the events, a repository's name) refused for that
      // content (lib/db/errors.ts) would be refused on every retry, a minute apart for good: the
      // run fails instead, saying why. Anything else (a connect, a lookup, a foreign key whose row
      // was just removed, the database unavailable) stays retryable.
      if (error instanceof ContentRefusedError) {
        throw ApplicationFailure.create({ type: 'DeliveryNotStorable', nonRetryable: true, message: `PostgreSQL refused the delivery's events (${error.sqlState}): ${error.message}` });
      }
      throw error;
    });
    const dispatched = 'queued' in result ? { queued: result.queued } : { dispatches: result.dispatches.length };
    logger.info({ provider, deliveryId, events: events.length, recorded: typeof result.recorded === 'number' ? result.recorded : result.recorded.length, ...dispatched }, 'event recorded');
    return { result, runKey, receivedAt };
  }

  return {
    /**
     * Records a delivery's events once per organization they concern and applies the repository
     * cache changes they carry, in one transaction so the cache and the event log agree: an
     * installation gaining or losing a repository upserts it or marks it vanished for every
     * connection bound to the installation; any event naming an attached repository under a new
     * name renames it. Returns the (event, subscriber) pairs to dispatch, or, for a larger fan-out,
     * queues them in the same transaction and returns their number. Safe to repeat: a second run
     * finds the rows already there and returns (or queues) the same pairs. The runs of workflow
     * code from before recordEventAndDispatch.
     */
    async recordEvent(input: EventInput): Promise<RecordedDelivery> {
      const { result, runKey } = await record(input, { forFirstAttempts: false });
      if ('queued' in result) return { ...result, runKey, deliveryDeadlineSeconds };
      return { recorded: result.recorded.length, dispatches: result.dispatches, deliveryDeadlineSeconds };
    },

    /**
     * recordEvent, then, when the pairs go inline, their first attempts, side by side in this
     * same local activity (activities/dispatch.ts createFirstAttempts: each asks the worker's
     * inline admission, each is attempt 1, each outcome or failure comes back in `firstAttempts`
     * in the order of `dispatches`): one local activity and one workflow activation per run fewer
     * than a recording followed by a local activity per first attempt. A pair whose event this
     * call inserted is sent without a read (nothing can have delivered an event that did not exist;
     * its subscriber was read in the recording's transaction); a repeat (the activity retried after
     * a failure past the commit, a redelivery) reads each pair as dispatchEvent does, so an
     * acknowledged event is not sent again, and a pair whose recorded attempt failed is not sent
     * inline but comes back as that failure, with what is left of its Retry-After (the run makes
     * attempt 2 after it, as after any failed first attempt). Failures of the recording fail the activity, retried as
     * recordEvent is; a first attempt's failure never does.
     */
    async recordEventAndDispatch(input: EventInput): Promise<RecordedDelivery> {
      if (!firstAttempts) throw new Error('recordEventAndDispatch needs the dispatcher (activities/index.ts)');
      const started = performance.now();
      // The local activity's start-to-close timeout (workflows/event.ts: 45 s) covers the recording and the attempts together.
      const budgetMs = Context.current().info.startToCloseTimeoutMs || RECORD_AND_DISPATCH_BUDGET_MS;
      const { result, runKey, receivedAt } = await record(input, { forFirstAttempts: true });
      if ('queued' in result) return { ...result, runKey, deliveryDeadlineSeconds };
      const { recorded, dispatches, subscribers } = result;
      const inserted = new Map(recorded.filter((r) => r.event !== undefined).map((r) => [r.id, r]));
      const made = await firstAttempts(
        dispatches.map((dispatch) => {
          const row = inserted.get(dispatch.eventId);
          const subscriber = subscribers.get(dispatch.subscriberId);
          if (!row || !subscriber) return { dispatch };
          return { dispatch, known: { subscriber, event: { id: row.id, receivedAt, event: row.event! }, delivered: false } };
        }),
        budgetMs - (performance.now() - started),
      );
      return { recorded: recorded.length, dispatches, deliveryDeadlineSeconds, firstAttempts: made };
    },
  };
}

/** Ids a statement is given at most, one parameter each (markRepositoriesVanished): PostgreSQL takes 65,535 parameters. */
const VANISHED_BATCH = 10_000;

/**
 * Applies an installation's access changes to the cache of every connection bound to it, as the
 * events say them in order (a run of additions is one upsert, a run of removals a few updates), and
 * returns each connection's cached repository id of every external id they name. The same writes
 * as one upsert or mark per event and connection, in a few statements however many repositories.
 */
async function applyAccessChanges(
  trx: Transaction<Database>,
  provider: Provider,
  connections: readonly { id: string; organizationId: string }[],
  events: readonly NormalizedEvent[],
): Promise<Map<string, Map<string, string>>> {
  const changes = events.filter(isAccessChange);
  const result = new Map<string, Map<string, string>>();
  if (changes.length === 0 || connections.length === 0) return result;
  // Runs of the same kind, in the events' order (one delivery carries one kind; older input may not).
  const runs: { kind: NormalizedEvent['kind']; events: NormalizedEvent[] }[] = [];
  for (const event of changes) {
    const last = runs[runs.length - 1];
    if (last?.kind === event.kind) last.events.push(event);
    else runs.push({ kind: event.kind, events: [event] });
  }
  const externalIds = [...new Set(changes.map((e) => e.repository.externalId))];
  for (const connection of connections) {
    for (const run of runs) {
      if (run.kind === 'repository.added') {
        const repositories = run.events.map(({ repository: { externalId, fullName, project } }) => ({ externalId, fullName, project }));
        await contentWrite(() => upsertRepositories(trx, { organizationId: connection.organizationId, connectionId: connection.id, provider }, repositories, { partial: true }));
      } else {
        const removed = [...new Set(run.events.map((e) => e.repository.externalId))];
        for (let start = 0; start < removed.length; start += VANISHED_BATCH) {
          await contentWrite(() => markRepositoriesVanished(trx, connection.id, removed.slice(start, start + VANISHED_BATCH)));
        }
      }
    }
    result.set(connection.id, await cachedRepositoryIds(trx, connection.id, externalIds));
  }
  return result;
}

/**
 * A subscriber's filters: an empty list lets everything through. Ref globs match the branch or tag
 * name (`main`, `release/*`, `v*`), or a pull request's target branch; `*` stays within one path
 * segment, `**` crosses them (lib/ref-glob.ts, linear in the name; a name over MAX_REF_NAME_LENGTH matches none). Events
 * without a ref (repository access) pass only when no glob is set.
 */
export function subscriberWants(subscriber: Pick<PublicSubscriber, 'kinds' | 'refGlobs'>, event: NormalizedEvent): boolean {
  if (subscriber.kinds.length > 0 && !subscriber.kinds.includes(event.kind)) return false;
  if (subscriber.refGlobs.length === 0) return true;
  const ref = event.ref?.name ?? event.pullRequest?.targetBranch;
  return ref !== undefined && subscriber.refGlobs.some((glob) => refGlobMatches(glob, ref));
}

/** The longest the matching runs before it lets the worker's other activities and workflow tasks in. */
const MATCHING_SLICE_MS = 10;

/**
 * The (event, subscriber) pairs to dispatch: each recorded row against its organization's
 * subscribers. One event costs at most its organization's globs × the longest name's word steps
 * (lib/ref-glob.ts); a delivery of many refs costs that many times over, so the loop yields to the
 * event loop every MATCHING_SLICE_MS rather than hold the worker's thread for all of it.
 */
export async function wantedPairs(
  recorded: readonly { id: string; organizationId: string; sequence: number }[],
  subscribers: readonly Pick<PublicSubscriber, 'id' | 'organizationId' | 'kinds' | 'refGlobs'>[],
  events: readonly NormalizedEvent[],
): Promise<Dispatch[]> {
  const pairs: Dispatch[] = [];
  const byOrganization = new Map<string, (typeof subscribers)[number][]>();
  for (const subscriber of subscribers) {
    const own = byOrganization.get(subscriber.organizationId);
    if (own) own.push(subscriber);
    else byOrganization.set(subscriber.organizationId, [subscriber]);
  }
  let sliceStarted = performance.now();
  for (const row of recorded) {
    for (const subscriber of byOrganization.get(row.organizationId) ?? []) {
      if (subscriberWants(subscriber, events[row.sequence]!)) pairs.push({ eventId: row.id, subscriberId: subscriber.id });
      if (performance.now() - sliceStarted >= MATCHING_SLICE_MS) {
        await setImmediate();
        sliceStarted = performance.now();
      }
    }
  }
  return pairs;
}
