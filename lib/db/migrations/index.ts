import type { Migration } from 'kysely';
import * as initial from './2026-11-25T00-initial.ts';
import * as eventsPerOrganization from './2026-11-25T20-events-per-organization.ts';
import * as repositoryListing from './2026-11-25T31-repository-listing.ts';
import * as listingPageLinks from './2026-11-26T10-listing-page-links.ts';
import * as disconnectRequested from './2026-11-26T20-disconnect-requested.ts';
import * as pickerIndex from './2026-11-26T30-picker-index.ts';
import * as listingPageContentHash from './2026-11-26T40-listing-page-content-hash.ts';
import * as apiTokenLifeCycle from './2026-12-06T1058-api-token-life-cycle.ts';
import * as webhookCredentials from './2026-12-06T1105-webhook-credentials.ts';
import * as credentialRotation from './2026-12-06T1116-credential-rotation.ts';
import * as attachmentHookHealth from './2026-12-06T1125-attachment-hook-health.ts';
import * as webhookDeliveries from './2026-12-06T1127-webhook-deliveries.ts';
import * as githubInstallStates from './2026-12-06T1132-github-install-states.ts';
import * as intakeRelay from './2026-12-06T1210-intake-relay.ts';
import * as deliveriesPerConnection from './2026-12-06T1215-deliveries-per-connection.ts';
import * as intakeRetryState from './2026-12-06T1400-intake-retry-state.ts';
import * as eventDispatches from './2026-12-06T1440-event-dispatches.ts';
import * as intakeWakeupInProcess from './2026-12-06T2000-intake-wakeup-in-process.ts';
import * as repositoryListings from './2026-12-06T2030-repository-listings.ts';
import * as eventsHookConnection from './2026-12-07T0810-events-hook-connection.ts';
import * as repositoryConnectionKey from './2026-12-07T0720-repository-connection-key.ts';
import * as vanishedRepositoriesIndex from './2026-12-07T0830-vanished-repositories-index.ts';
import * as dispatchAttemptRetryAfter from './2026-12-07T1300-dispatch-attempt-retry-after.ts';
import * as intakeFairClaim from './2026-12-07T2300-intake-fair-claim.ts';
import * as attachmentHooksSwept from './2026-12-07T2350-attachment-hooks-swept.ts';
import * as attachmentHooksSweepTried from './2026-12-08T0000-attachment-hooks-sweep-tried.ts';
import * as connectionsOrganizationIndex from './2026-12-08T0010-connections-organization-index.ts';

/**
 * Every migration, by name (ISO-dated; the Migrator applies them in name order). Listed statically
 * rather than read from the folder so they load the same under tsx, vitest and a bundler.
 */
export const migrations: Record<string, Migration> = {
  '2026-11-25T00-initial': initial,
  '2026-11-25T20-events-per-organization': eventsPerOrganization,
  '2026-11-25T31-repository-listing': repositoryListing,
  '2026-11-26T10-listing-page-links': listingPageLinks,
  '2026-11-26T20-disconnect-requested': disconnectRequested,
  '2026-11-26T30-picker-index': pickerIndex,
  '2026-11-26T40-listing-page-content-hash': listingPageContentHash,
  '2026-12-06T1058-api-token-life-cycle': apiTokenLifeCycle,
  '2026-12-06T1105-webhook-credentials': webhookCredentials,
  '2026-12-06T1116-credential-rotation': credentialRotation,
  '2026-12-06T1125-attachment-hook-health': attachmentHookHealth,
  '2026-12-06T1127-webhook-deliveries': webhookDeliveries,
  '2026-12-06T1132-github-install-states': githubInstallStates,
  '2026-12-06T1210-intake-relay': intakeRelay,
  '2026-12-06T1215-deliveries-per-connection': deliveriesPerConnection,
  '2026-12-06T1400-intake-retry-state': intakeRetryState,
  '2026-12-06T1440-event-dispatches': eventDispatches,
  '2026-12-06T2000-intake-wakeup-in-process': intakeWakeupInProcess,
  '2026-12-06T2030-repository-listings': repositoryListings,
  '2026-12-07T0720-repository-connection-key': repositoryConnectionKey,
  '2026-12-07T0810-events-hook-connection': eventsHookConnection,
  '2026-12-07T0830-vanished-repositories-index': vanishedRepositoriesIndex,
  '2026-12-07T1300-dispatch-attempt-retry-after': dispatchAttemptRetryAfter,
  '2026-12-07T2300-intake-fair-claim': intakeFairClaim,
  '2026-12-07T2350-attachment-hooks-swept': attachmentHooksSwept,
  '2026-12-08T0000-attachment-hooks-sweep-tried': attachmentHooksSweepTried,
  '2026-12-08T0010-connections-organization-index': connectionsOrganizationIndex,
};
