/** Workflow names, inputs, ids and search attributes shared by api, worker and workflows. No Node imports. */
import { defineSearchAttributeKey } from '@temporalio/common';
import { defineSignal } from '@temporalio/workflow';
import type { ConnectionStatus, EventKind, HookHealth, ListingCounts, NormalizedEvent, Provider, RoundPlace } from '../lib/domain.ts';

export const DEFAULT_TASK_QUEUE = 'forgelink';

/**
 * Heartbeat timeout of the steps that call a provider or a subscriber (they heartbeat every second
 * while they wait): a step whose worker died is retried after this, not after its start-to-close timeout.
 */
export const NETWORK_STEP_HEARTBEAT_TIMEOUT = '5 seconds';

/**
 * The failure type of a tenant-facing local activity that its worker did not admit into the
 * workflow task (activities/inline-admission.ts): it made no call, and the workflow runs the same
 * step as a regular activity.
 */
export const INLINE_NOT_ADMITTED = 'InlineNotAdmitted';

/**
 * The failure type of a tenant-facing activity that its worker did not admit into an activity slot
 * (activities/activity-admission.ts): it made no call, and the workflow schedules it again after a
 * timer, from the same attempt.
 */
export const ACTIVITY_NOT_ADMITTED = 'ActivityNotAdmitted';

export const SA_ORGANIZATION = defineSearchAttributeKey('ForgelinkOrganization', 'KEYWORD');
export const SA_PROVIDER = defineSearchAttributeKey('ForgelinkProvider', 'KEYWORD');
export const SA_REPOSITORY = defineSearchAttributeKey('ForgelinkRepository', 'KEYWORD');
export const SA_CONNECTION = defineSearchAttributeKey('ForgelinkConnection', 'KEYWORD');
/**
 * What an operator types in the Temporal UI (workflows/run-labels.ts sets them): the slugs of the
 * organizations a run concerns and the full names of its repositories. KeywordList, as a delivery
 * can concern several organizations and repositories; `ForgelinkOrgSlugs = 'acme'` matches a run
 * whose list holds `acme`. ForgelinkOrganization and ForgelinkRepository (ids) stay for older runs
 * and queries.
 */
export const SA_ORG_SLUGS = defineSearchAttributeKey('ForgelinkOrgSlugs', 'KEYWORD_LIST');
export const SA_REPOSITORY_NAMES = defineSearchAttributeKey('ForgelinkRepositoryNames', 'KEYWORD_LIST');
export const SEARCH_ATTRIBUTES = [SA_ORGANIZATION, SA_PROVIDER, SA_REPOSITORY, SA_CONNECTION, SA_ORG_SLUGS, SA_REPOSITORY_NAMES];

export interface ConnectInput {
  organizationId: string;
  connectionId: string;
  /** Set for a credential rotation: only that rotation's credential is validated and promoted. */
  rotationId?: string;
}
export interface ConnectResult {
  status: Extract<ConnectionStatus, 'active' | 'failed'>;
  reason?: string;
  account?: string;
}

export interface DisconnectInput {
  organizationId: string;
  connectionId: string;
  /** Delete the credential even when some repositories could not be detached (their hooks may remain). */
  force?: boolean;
}
export interface DisconnectResult {
  status: 'disconnected';
  detachedRepositories: number;
  /** Repositories whose detach failed (their hooks may remain at the provider): only with `force`, or from runs before it existed. */
  notDetached?: { repositoryId: string; reason: string }[];
}
/** How a disconnect that could not detach every repository fails (the credential is kept; DELETE again retries). */
export const DisconnectFailureTypes = { incomplete: 'DisconnectIncomplete' } as const;

/** `reconcile`: the hook-health check of an attached repository (repairs drift in place; skipped when not attached). */
export type AttachmentAction = 'attach' | 'detach' | 'reconcile';
/** A request to the repository workflow, sent with signalWithStart by the API (or by disconnect). */
export interface AttachmentRequest {
  action: AttachmentAction;
  /** Workflows to signal `attachmentSettled` once this request is carried out (disconnect waits on it). */
  replyTo?: string[];
}
/**
 * The repository workflow (id `repository:<org>:<repositoryId>`): carries out attach and detach
 * requests for one repository one at a time, in the order they arrive, and ends when none is left.
 */
export interface RepositoryWorkflowInput {
  organizationId: string;
  repositoryId: string;
  /** Requests not yet carried out: empty from the API (the signal brings the request), carried over by continue-as-new. */
  pending: AttachmentRequest[];
}
export interface RepositoryWorkflowResult {
  /** The state the last request left the repository in. */
  status: 'attached' | 'detached';
  /** Provider hook / subscription ids in place when attached; empty when detached. */
  hookIds: string[];
  /** Requests carried out by this run. */
  requests: number;
  /**
   * Why the last request, a reconcile of the repository while it is not attached (the hook-health
   * pass's sweep of its hooks, or its row gone), failed as a whole; `status` is then `detached` (it is not attached).
   */
  sweepFailed?: string;
}
export interface AttachmentSettled {
  repositoryId: string;
  action: AttachmentAction;
  /** `failed`: the attach or detach failed, or a reconcile failed while the repository was not attached (the sweep of its hooks, or its row gone), nothing recorded; `reason` says why. */
  status: 'attached' | 'detached' | 'failed';
  reason?: string;
  /** A reconcile's finding; absent when the repository was not attached, so nothing was checked. */
  hookHealth?: HookHealth;
}
export const attachmentRequested = defineSignal<[AttachmentRequest]>('attachmentRequested');
export const attachmentSettled = defineSignal<[AttachmentSettled]>('attachmentSettled');

/** How an attach or a detach that could not be carried out fails the repository workflow. */
export const AttachmentFailureTypes = {
  attachFailed: 'RepositoryAttachFailed',
  detachFailed: 'RepositoryDetachFailed',
} as const;

/**
 * One provider delivery, verified and normalized by the webhook receiver. Its events are in the
 * intake table (`webhook_deliveries`, keyed by provider and delivery id); the input names the row
 * and summarizes it for the Temporal UI, so its size does not grow with the delivery.
 */
export interface EventInput {
  provider: Provider;
  deliveryId: string;
  /** ISO time the receiver acknowledged the delivery. */
  receivedAt: string;
  summary?: DeliverySummary;
  /**
   * Runs started before the intake table carry the delivery itself (the events in order, one per
   * ref change: their position is their sequence); newer runs read it from the table.
   */
  events?: NormalizedEvent[];
  /** GitHub App installation the delivery came from: installation events update its connections' cache. */
  installationId?: string;
  /**
   * The connection whose hook delivered (GitLab, Bitbucket, Azure DevOps; verified with its own
   * credential): only its attachments are acted on. Absent: a GitHub delivery, or a legacy hook's
   * (verified with the global secret), which acts only on attachments holding a legacy hook.
   */
  connectionId?: string;
  /**
   * SHA-256 (hex) of the delivery's body: the same body recorded for the connection under another
   * delivery id is a replay. Set for Bitbucket DC connections' deliveries only (api/routes/webhooks.ts
   * BODY_DIGEST_PROVIDERS); runs started before 2026-12-07 19:30 UTC carry it for every connection's.
   */
  bodyDigest?: string;
  /** A URL of the repository on the instance that sent a legacy hook's delivery (GitLab, Bitbucket): ids are unique per instance only. */
  instanceUrl?: string;
  /** Carried over continue-as-new by a run draining its dispatch queue: it goes on draining. */
  queuedDispatch?: QueuedDispatch;
  /** Drain rounds per run before it continues as new (default 100; tests set fewer). */
  drainRoundsPerRun?: number;
}

/** A recorded delivery's dispatch queue (event_dispatches rows under `runKey`), and the run's deadline for it. */
export interface QueuedDispatch {
  runKey: string;
  /** Event rows the delivery recorded. */
  recorded: number;
  /** ISO time after which nothing more is sent. */
  deadlineAt: string;
  /**
   * ISO time of the first of the drain's refusals in a row (admission refused it every pair's
   * organization), carried over continue-as-new so that its waits go on growing (absent: not refused).
   */
  refusedSince?: string;
}

/** What an operator reads in the Temporal UI about a delivery; bounded whatever the delivery's size. */
export interface DeliverySummary {
  events: number;
  kinds: Partial<Record<EventKind, number>>;
  /** The first few repository names (each cut to a readable length). */
  repositories: string[];
  /** How many other repositories the delivery names. */
  moreRepositories?: number;
}

const SUMMARY_REPOSITORIES = 5;
const SUMMARY_NAME_LENGTH = 200;

export function summarizeDelivery(events: readonly NormalizedEvent[]): DeliverySummary {
  const kinds: Partial<Record<EventKind, number>> = {};
  const names = new Set<string>();
  for (const event of events) {
    kinds[event.kind] = (kinds[event.kind] ?? 0) + 1;
    names.add(event.repository.fullName.slice(0, SUMMARY_NAME_LENGTH));
  }
  const repositories = [...names].slice(0, SUMMARY_REPOSITORIES);
  return { events: events.length, kinds, repositories, ...(names.size > repositories.length ? { moreRepositories: names.size - repositories.length } : {}) };
}
export interface EventResult {
  /** Event rows for this delivery, one per organization and ref change. */
  recorded: number;
  /** Subscriber deliveries acknowledged (now or by an earlier run). */
  delivered: number;
  /** Subscriber deliveries given up on when the dispatch deadline passed (a queued fan-out's run names the first 100). */
  undelivered: { eventId: string; subscriberId: string; reason: string }[];
  /** How many were given up on, when the fan-out was queued (more than 16 pairs); absent otherwise (`undelivered` names them all). */
  undeliveredCount?: number;
}

/**
 * Workflow ids are `<kind>:<organizationId>:<subject>[:<suffix>]`: the organization is always the
 * second field so the API can tell which organization a run belongs to from its id alone.
 */
export const workflowIds = {
  connect: (organizationId: string, connectionId: string) => `connect:${organizationId}:${connectionId}`,
  disconnect: (organizationId: string, connectionId: string) => `disconnect:${organizationId}:${connectionId}`,
  /** Attach and detach of one repository, serialized: PUT and DELETE .../attachment and disconnect all use it. */
  repository: (organizationId: string, repositoryId: string) => `repository:${organizationId}:${repositoryId}`,
  /**
   * The exception to the rule above: a delivery can concern several organizations, and its id must
   * be known before any lookup so a redelivery maps onto the same run (exactly once). A connection's
   * own hook names the connection: providers give the deliveries of two hooks for one event the
   * same id (Azure DevOps' event id, older GitLab's event UUID), and each hook's delivery is its own.
   */
  event: (provider: Provider, deliveryId: string, connectionId?: string) => `event:${provider}${connectionId ? `@${connectionId}` : ''}:${deliveryId}`,
  /** One organization's refresh on demand; one run at a time (a second request joins the running one). */
  refreshOrganization: (organizationId: string) => `refresh:${organizationId}:now`,
  /** A connection's listing: one at a time whoever asks (nightly or on demand). */
  refreshConnection: (organizationId: string, connectionId: string) => `refresh:${organizationId}:connection:${connectionId}`,
  /** A connection's webhook-credential rotation: one at a time (a second request joins the running one); another may follow once it is done. */
  webhookCredentialRotation: (organizationId: string, connectionId: string) => `webhook-credential:${organizationId}:${connectionId}`,
  /** A connection's hook-health check: one at a time. */
  hookHealthConnection: (organizationId: string, connectionId: string) => `hook-health:${organizationId}:connection:${connectionId}`,
};

/** The hook-health Schedule (nightly, after the refresh); its runs are `hook-health:all:<scheduled time>`. */
export const HOOK_HEALTH_SCHEDULE_ID = 'forgelink-hook-health';
export const HOOK_HEALTH_ALL_WORKFLOW_ID_PREFIX = 'hook-health:all';

export interface HookHealthInput {
  /** Connections checked at once (hookHealth.connectionsAtOnce). */
  connectionsAtOnce: number;
  /** Absent: every organization (the Schedule's run). */
  organizationId?: string;
  /** Carried over continue-as-new: the last connection id read, and the counts so far. */
  after?: string;
  carried?: HookHealthResult;
}
export interface HookHealthResult {
  connections: number;
  /** Connections whose check another run was doing at the time. */
  alreadyRunning: number;
  failed: number;
  /** The first connections whose check failed. */
  failures: { connectionId: string; reason: string }[];
}
export interface ConnectionHookHealthInput {
  organizationId: string;
  connectionId: string;
  /** Carried over continue-as-new: the last repository id checked, and the counts so far. */
  after?: string;
  counts?: ConnectionHookHealthResult;
}
export interface ConnectionHookHealthResult {
  healthy: number;
  repaired: number;
  failing: number;
  /** The first failing repositories (each one's reason is also on its attachment's hookHealth). */
  failures: { repositoryId: string; reason: string }[];
  /**
   * Repositories not attached (failed, or left attaching/detaching by a terminated run) whose
   * hooks at the delivery URL were swept by the nightly run; absent from runs before the sweep.
   */
  unattachedSwept?: number;
  /** Of those asked, the ones whose sweep failed as a whole (still due: a later night tries again); absent when none. */
  unattachedSweepsFailed?: number;
}

export interface WebhookCredentialRotationInput {
  organizationId: string;
  connectionId: string;
  /**
   * Carried over continue-as-new: the version the rotation makes current, the versions accepted
   * when it began, and where its check of the connection's repositories stands.
   */
  rotation?: { version: number; previous: number[]; after: string; counts: ConnectionHookHealthResult };
}
export interface WebhookCredentialRotationResult {
  /** The connection's credential version now current. */
  version: number;
  /** Older versions no longer accepted. */
  dropped: number[];
  /** Hooks still on an older credential (it stays accepted for them), with why their repository's check failed where known. */
  notUpdated: { repositoryId: string; providerHookId: string; credentialVersion: number; reason?: string }[];
  /** The hook-health check each attached repository got on the way. */
  checked: ConnectionHookHealthResult;
}

/** The nightly Schedule; its runs are `refresh:all:<scheduled time>` (admin only through the API). */
export const REFRESH_SCHEDULE_ID = 'forgelink-repository-refresh';
export const REFRESH_ALL_WORKFLOW_ID_PREFIX = 'refresh:all';

export interface RefreshInput {
  /** Absent: every organization (the nightly run). */
  organizationId?: string;
  /** Connections read and refreshed per batch (default REFRESH_BATCH.connections). */
  batchSize?: number;
  /** Batches per run before it continues as new (default REFRESH_BATCH.perRun). */
  batchesPerRun?: number;
  /** Carried over continue-as-new: the last connection id done, and the counts so far. */
  after?: string;
  /** Carried over continue-as-new by a run of every organization reading in rounds: the last connection's place. */
  afterInRounds?: RoundPlace;
  carried?: RefreshResult;
}
export interface RefreshResult {
  connections: number;
  refreshed: number;
  /** The first REFRESH_BATCH.listed failures (each is also recorded on its connection); failedCount counts them all. */
  failed: { connectionId: string; reason: string }[];
  /** Connections another refresh was listing at the time (the nightly run and an on-demand one met); the first REFRESH_BATCH.listed. */
  alreadyRunning: string[];
  failedCount?: number;
  alreadyRunningCount?: number;
}

/**
 * A refresh of every organization reads the connections in batches and continues as new after a
 * few, so neither its history (a few events per connection) nor a payload grows with the number of
 * connections: 50,000 connections are 100 batches in 25 runs. Results name at most `listed` ids.
 */
export const REFRESH_BATCH = { connections: 500, perRun: 4, listed: 100 } as const;
export interface ConnectionRefreshInput {
  organizationId: string;
  connectionId: string;
  /** Carried over continue-as-new so a long listing goes on where it was. */
  progress?: ListingProgress;
  /** The refresh run holding the connection's listing lease, when that run began the listing itself. */
  leaseHolder?: string;
}

/** A listing's failure type when another refresh holds the connection's lease: counted as already running, not as failed. */
export const LISTING_ALREADY_RUNNING = 'RepositoryListingAlreadyRunning';

/** The page key of a listing's first page, fetched without a cursor. */
export const FIRST_LISTING_PAGE = 'first';

/**
 * How often, at most, a listing heartbeats where it stands while its pages keep coming (and always as
 * its chunk stops). A heartbeat costs the worker ~0.3 ms of CPU (the SDK converts and hands over the
 * details on every call), and the SDK sends the server at most one per 24 s (0.8 × the listing's 30 s
 * heartbeat timeout) whatever it is given: one per page (81 for 10,000 repositories) bought nothing a
 * retry could resume from.
 */
export const LISTING_HEARTBEAT_MS = 1000;

/**
 * Where a connection's listing stands; heartbeated as its pages are written (at most every
 * LISTING_HEARTBEAT_MS, and as its chunk stops) so a retry resumes there. Pages
 * are fetched several at a time where the provider allows it, so the listing is a frontier of
 * cursors rather than one cursor: the pages still to fetch, and those done.
 */
export interface ListingProgress {
  /** Page keys (cursors; FIRST_LISTING_PAGE for the first page) still to fetch. */
  pending: string[];
  pages: number;
  apiCalls: number;
  rowsWritten: number;
  notModifiedPages: number;
  /** Pages answered in full whose repositories were as stored: nothing was written for them. */
  unchangedPages: number;
  /**
   * Repositories the answers held so far (304 pages not counted), checked against
   * repositoryCache.maxRepositoriesPerConnection. Absent until the listing's first chunk has run (the
   * workflows make progress without it, so their code is as it was) and from progress from before it was counted.
   */
  listed?: number;
  /** Page keys visited so far in this listing. */
  visitedPageKeys: string[];
}
export const newListingProgress = (): ListingProgress => ({
  pending: [FIRST_LISTING_PAGE],
  pages: 0,
  apiCalls: 0,
  rowsWritten: 0,
  notModifiedPages: 0,
  unchangedPages: 0,
  visitedPageKeys: [],
});
export interface ConnectionRefreshResult extends ListingCounts {
  connectionId: string;
}

export function parseEventWorkflowId(workflowId: string): { provider: Provider; deliveryId: string; connectionId?: string } | undefined {
  const match = /^event:(github|gitlab|bitbucket|azure-devops)(?:@([0-9a-f-]{36}))?:(.+)$/s.exec(workflowId);
  return match ? { provider: match[1] as Provider, deliveryId: match[3]!, ...(match[2] ? { connectionId: match[2] } : {}) } : undefined;
}

export interface ParsedWorkflowId {
  kind: string;
  organizationId: string;
  subject: string;
}

export function parseWorkflowId(workflowId: string): ParsedWorkflowId | undefined {
  const [kind, organizationId, ...rest] = workflowId.split(':');
  if (!kind || !organizationId || rest.length === 0 || kind === 'event') return undefined;
  return { kind, organizationId, subject: rest.join(':') };
}

