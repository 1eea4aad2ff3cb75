/** Domain types shared by api, workflows and activities. No I/O here: workflow code imports this file. */

export const PROVIDERS = ['github', 'gitlab', 'bitbucket', 'azure-devops'] as const;
export type Provider = (typeof PROVIDERS)[number];

export const CONNECTION_STATUSES = ['pending', 'active', 'failed', 'disconnected'] as const;
export type ConnectionStatus = (typeof CONNECTION_STATUSES)[number];

/** A credential rotation's own outcome: the connection stays on its old credential until `succeeded`. */
export const CREDENTIAL_ROTATION_STATUSES = ['validating', 'succeeded', 'failed'] as const;
export type CredentialRotationStatus = (typeof CREDENTIAL_ROTATION_STATUSES)[number];

export const ATTACHMENT_STATUSES = ['attaching', 'attached', 'detaching', 'detached', 'failed'] as const;
export type AttachmentStatus = (typeof ATTACHMENT_STATUSES)[number];

/** What the last hook-health check found: nothing to do, drift it repaired, or drift it could not repair. */
export const HOOK_HEALTH_STATUSES = ['healthy', 'repaired', 'failing'] as const;
export type HookHealthStatus = (typeof HOOK_HEALTH_STATUSES)[number];
export interface HookHealth {
  status: HookHealthStatus;
  /** What was repaired, or why it is failing. */
  reason?: string;
}

export type EventKind =
  | 'push'
  | 'branch.created'
  | 'branch.deleted'
  | 'tag.created'
  | 'tag.updated'
  | 'tag.deleted'
  | 'pull_request.opened'
  | 'pull_request.updated'
  | 'pull_request.merged'
  | 'pull_request.closed'
  | 'repository.added'
  | 'repository.removed';

export interface NormalizedEvent {
  provider: Provider;
  deliveryId: string;
  kind: EventKind;
  repository: { externalId: string; fullName: string; project?: string };
  ref?: { type: 'branch' | 'tag'; name: string; before: string | null; after: string | null };
  pullRequest?: { number: number; sourceBranch: string; targetBranch: string; headSha?: string; title?: string };
  commitCount?: number;
  sender?: string;
}

/** What a connection's validation found out about the credential's owner. */
export interface ConnectionIdentity {
  account: string;
  accountId?: string;
  detail?: string;
}

/** An installation gaining or losing a repository (GitHub): it concerns the connections bound to the installation. */
export const isAccessChange = (event: NormalizedEvent) => event.kind === 'repository.added' || event.kind === 'repository.removed';

/**
 * Where a connection stands in the nightly refresh's order: its `round` (1 for each organization's
 * first active connection by creation, 2 for its second, …), then organization and connection id.
 */
export interface RoundPlace {
  round: number;
  organizationId: string;
  connectionId: string;
}

/** What a complete listing of a connection did: a refresh's result per connection, and kept with the connection's listing lease. */
export interface ListingCounts {
  pages: number;
  apiCalls: number;
  rowsWritten: number;
  notModifiedPages: number;
  /** Absent from listings that ran before it was counted. */
  unchangedPages?: number;
  /** Repositories the provider's answers held (304 pages not counted); absent from listings that ran before it was counted. */
  listed?: number;
  vanished: number;
}
