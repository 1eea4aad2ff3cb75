import { activityCallsPerOrganization, activityCallsPerWorker, inlineCallsPerWorker, legacyHookWindow, LISTING_CONCURRENCY_DEFAULTS, WORKER_SIZING_DEFAULTS, type Config } from '../lib/config.ts';
import type { EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import type { Provider } from '../lib/domain.ts';
import { createKeyedLimiter } from '../lib/limiter.ts';
import type { Logger } from '../lib/logger.ts';
import type { WorkerMetrics } from '../lib/metrics.ts';
import { createConnectionActivities } from './connections.ts';
import { createDispatchActivities, createFirstAttempts } from './dispatch.ts';
import { createEventActivities, DEFAULT_DELIVERY_DEADLINE_SECONDS } from './events.ts';
import { createHookHealthActivities } from './hook-health.ts';
import { heartbeating } from './heartbeat.ts';
import { createHookActivities } from './hooks.ts';
import { createInlineAdmission, type InlineAdmission } from './inline-admission.ts';
import { createRepositoryCacheActivities } from './repository-cache.ts';
import { createWebhookCredentialActivities } from './webhook-credentials.ts';
import type { Outbound } from './outbound.ts';
import type { ProviderFactory } from './providers/port.ts';

export interface ActivityDeps {
  db: Db;
  keys: EncryptionKeys;
  providers: ProviderFactory;
  /** The guarded HTTP layer subscribers are called through (providers' adapters hold their own reference). */
  outbound: Outbound;
  logger: Logger;
  settings: ActivitySettings;
  /** The worker's Prometheus metrics (hook operations, listing pages, subscriber dispatch). */
  metrics?: WorkerMetrics;
}

/** Configuration activities need; secrets here stay in activity memory, never in workflow history. */
export interface ActivitySettings {
  /** Base of webhook delivery URLs: `${publicUrl}/api/events-handler/v1/events/${provider}?c=${connectionId}`. */
  publicUrl: string;
  /** How long the event workflow retries a subscriber (subscribers.deliveryDeadlineSeconds). */
  subscriberDeliveryDeadlineSeconds?: number;
  /** repositoryCache.callsPerConnection / callsPerWorker: listing calls in flight at once. */
  listingCallsPerConnection?: number;
  listingCallsPerWorker?: number;
  /** repositoryCache.maxRepositoriesPerConnection / maxPagesPerConnection: where one listing fails. */
  listingMaxRepositories?: number;
  listingMaxPages?: number;
  /** repositoryCache.vanishedRetentionDays: how long a vanished, unreferenced repository row is kept. */
  listingVanishedRetentionDays?: number;
  /** worker.inlineCallsPerWorker (resolved) / inlineCallsPerOrganization: tenant-facing calls inside workflow tasks at once. */
  inlineCallsPerWorker?: number;
  inlineCallsPerOrganization?: number;
  /** worker.activityCallsPerWorker / activityCallsPerOrganization (resolved): tenant-facing activities at once. */
  activityCallsPerWorker?: number;
  activityCallsPerOrganization?: number;
  /** Providers whose legacy hooks' deliveries (no connection) are recorded: webhooks.acceptLegacyHooks with their global secret (lib/config.ts legacyHookWindow); none by default. */
  legacyHookProviders?: Provider[];
  /** How long after it starts one sweep of an unattached repository may still start a hook deletion (default SWEEP_DELETE_UNTIL_MS, 45 s; not configured: a test shortens it). */
  sweepDeletionWindowMs?: number;
}

export function settingsFromConfig(config: Config): ActivitySettings {
  return {
    publicUrl: config.publicUrl.replace(/\/+$/, ''),
    subscriberDeliveryDeadlineSeconds: config.subscribers.deliveryDeadlineSeconds,
    listingCallsPerConnection: config.repositoryCache.callsPerConnection,
    listingCallsPerWorker: config.repositoryCache.callsPerWorker,
    listingMaxRepositories: config.repositoryCache.maxRepositoriesPerConnection,
    listingMaxPages: config.repositoryCache.maxPagesPerConnection,
    listingVanishedRetentionDays: config.repositoryCache.vanishedRetentionDays,
    inlineCallsPerWorker: inlineCallsPerWorker(config.worker),
    inlineCallsPerOrganization: config.worker.inlineCallsPerOrganization,
    activityCallsPerWorker: activityCallsPerWorker(config.worker),
    activityCallsPerOrganization: activityCallsPerOrganization(config.worker),
    legacyHookProviders: legacyHookWindow(config).open,
  };
}

/** Every activity the worker registers; workflows import only this function's type. */
export function createActivities(deps: ActivityDeps) {
  // One per worker: every connection listed by this worker shares it, a freed place going to the organization with the fewest calls going.
  const listingLimiter = createKeyedLimiter(deps.settings.listingCallsPerWorker ?? LISTING_CONCURRENCY_DEFAULTS.callsPerWorker);
  // One per worker: it bounds the workflow task slots that tenant-facing calls hold at once.
  const inline: InlineAdmission = createInlineAdmission({
    perWorker: deps.settings.inlineCallsPerWorker ?? inlineCallsPerWorker(WORKER_SIZING_DEFAULTS),
    perOrganization: deps.settings.inlineCallsPerOrganization ?? WORKER_SIZING_DEFAULTS.inlineCallsPerOrganization,
  });
  // One per worker: it bounds the activity slots that tenant-facing activities hold at once.
  const activitySlots: InlineAdmission = createInlineAdmission({
    perWorker: deps.settings.activityCallsPerWorker ?? activityCallsPerWorker(WORKER_SIZING_DEFAULTS),
    perOrganization: deps.settings.activityCallsPerOrganization ?? activityCallsPerOrganization(WORKER_SIZING_DEFAULTS),
  });
  return {
    // These wait on providers and subscribers: they heartbeat so a lost worker is noticed in seconds.
    ...heartbeating(createConnectionActivities({ ...deps, activitySlots })),
    ...createEventActivities({
      ...deps,
      deliveryDeadlineSeconds: deps.settings.subscriberDeliveryDeadlineSeconds ?? DEFAULT_DELIVERY_DEADLINE_SECONDS,
      legacyHookProviders: deps.settings.legacyHookProviders ?? [],
      // The same admissions as dispatchEvent's: a first attempt inside the recording asks the inline one.
      firstAttempts: createFirstAttempts({ ...deps, inline, activitySlots }),
    }),
    ...heartbeating(createDispatchActivities({ ...deps, inline, activitySlots })),
    ...heartbeating(createHookActivities({ ...deps, inline, activitySlots })),
    ...createHookHealthActivities(deps),
    ...createWebhookCredentialActivities(deps),
    ...createRepositoryCacheActivities({ ...deps, activitySlots }, {
      callsPerConnection: deps.settings.listingCallsPerConnection ?? LISTING_CONCURRENCY_DEFAULTS.callsPerConnection,
      limiter: listingLimiter,
      // Each undefined one is the repository cache's default.
      caps: { maxRepositories: deps.settings.listingMaxRepositories, maxPages: deps.settings.listingMaxPages },
      vanishedRetentionDays: deps.settings.listingVanishedRetentionDays,
    }),
  };
}

export type Activities = ReturnType<typeof createActivities>;
