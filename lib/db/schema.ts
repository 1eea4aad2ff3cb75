import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely';
import type { AttachmentStatus, ConnectionStatus, CredentialRotationStatus, EventKind, HookHealthStatus, ListingCounts, NormalizedEvent, Provider } from '../domain.ts';

type CreatedAt = ColumnType<Date, Date | string | undefined, never>;
type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json<T> = ColumnType<T, string, string>;

export interface OrganizationsTable {
  id: Generated<string>;
  slug: string;
  name: string;
  created_at: CreatedAt;
}

export interface ApiTokensTable {
  id: Generated<string>;
  organization_id: string;
  token_hash: string;
  name: string;
  expires_at: Date | null;
  /** Written at most once a minute per token, not on every request. */
  last_used_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  created_at: CreatedAt;
}

export interface GithubInstallStatesTable {
  state_hash: string;
  organization_id: string;
  expires_at: Date;
  created_at: CreatedAt;
}

export interface ConnectionsTable {
  id: Generated<string>;
  organization_id: string;
  provider: Provider;
  base_url: string;
  external_key: string | null;
  account: string | null;
  credential: string | null;
  pending_credential: string | null;
  status: ColumnType<ConnectionStatus, ConnectionStatus | undefined, ConnectionStatus>;
  reason: string | null;
  refreshed_at: Date | null;
  refresh_error: string | null;
  /** Set when a disconnect began: no new attach from then on. */
  disconnect_requested_at: Date | null;
  /** The last credential rotation: its id (in the connect run's input), outcome and when it was asked for. */
  rotation_id: string | null;
  rotation_status: CredentialRotationStatus | null;
  rotation_reason: string | null;
  rotation_requested_at: Date | null;
  created_at: CreatedAt;
  updated_at: Timestamp;
}

export interface RepositoryListingPagesTable {
  connection_id: string;
  page_key: string;
  etag: string | null;
  external_ids: Json<string[]>;
  next_cursor: string | null;
  fan_out: ColumnType<string[], string | undefined, string>;
  /** Digest of the page's repositories as last written (null for pages stored before it existed). */
  content_hash: ColumnType<string | null, string | null | undefined, string | null>;
}

/** A connection's listing: the lease of the refresh listing it now, and its last complete listing's counts. */
export interface RepositoryListingsTable {
  connection_id: string;
  holder: string | null;
  held_until: Date | null;
  last_listing: ColumnType<ListingCounts | null, string | null, string | null>;
  listed_at: Date | null;
  created_at: Generated<Date>;
}


export interface RepositoriesTable {
  id: Generated<string>;
  organization_id: string;
  connection_id: string;
  provider: Provider;
  external_id: string;
  full_name: string;
  project: string | null;
  default_branch: string | null;
  web_url: string | null;
  last_seen_at: Timestamp;
  vanished_at: Date | null;
  created_at: CreatedAt;
}

export interface AttachmentsTable {
  id: Generated<string>;
  organization_id: string;
  repository_id: string;
  status: AttachmentStatus;
  reason: string | null;
  repository_vanished: Generated<boolean>;
  /** The last hook-health check (the nightly reconcile); null until the first. */
  hook_health_checked_at: Date | null;
  hook_health_status: HookHealthStatus | null;
  hook_health_reason: string | null;
  /** When the hook-health pass last swept hooks at the delivery URL off this repository while not attached; null if never. */
  hooks_swept_at: Date | null;
  /** When the hook-health pass last started that sweep (tried ones go behind the others); null if never. */
  hooks_sweep_tried_at: Date | null;
  created_at: CreatedAt;
  updated_at: Timestamp;
}

export interface HooksTable {
  id: Generated<string>;
  attachment_id: string;
  provider_hook_id: string;
  events: Json<string[]>;
  /** The connection's webhook credential version the hook carries; null: a legacy hook with the global configured secret. */
  credential_version: ColumnType<number | null, number | null | undefined, number | null>;
  created_at: CreatedAt;
}

/** A connection's webhook credentials (GitLab, Bitbucket, Azure DevOps): every row is accepted, the highest version is current. */
export interface WebhookCredentialsTable {
  connection_id: string;
  version: number;
  basic_auth_user: string | null;
  /** Sealed, bound to the connection and version. */
  secret: string;
  created_at: CreatedAt;
}

/** A delivery body's digest, per connection: one recorded again under another delivery id is a replay. */
export interface DeliveryDigestsTable {
  connection_id: string;
  digest: string;
  delivery_id: string;
  received_at: Date;
}

export interface EventsTable {
  id: Generated<string>;
  organization_id: string;
  repository_id: string | null;
  provider: Provider;
  delivery_id: string;
  /** The connection whose own hook delivered it; null for GitHub's App and legacy hooks (its run's workflow id names the same). */
  connection_id: string | null;
  sequence: number;
  kind: EventKind;
  event: Json<NormalizedEvent>;
  received_at: CreatedAt;
}

/** The intake table: a delivery's normalized events, stored by the receiver, read by its event workflow. */
export interface WebhookDeliveriesTable {
  provider: Provider;
  delivery_id: string;
  /** The connection whose own hook delivered; null for GitHub and legacy hooks. */
  connection_id: ColumnType<string | null, string | null | undefined, string | null>;
  events: Json<NormalizedEvent[]>;
  installation_id: string | null;
  instance_url: string | null;
  received_at: CreatedAt;
  /** What the relay's start needs beyond the events; null on rows the receiver started itself. */
  start: Json<DeliveryStart> | null;
  /** When the relay (or, before it, the receiver) started the row's event workflow. */
  started_at: Date | null;
  /** Starts of this row that failed (Temporal unreachable, or refusing this one). */
  attempts: Generated<number>;
  /** When the relay may try the row again after a failure of its own (null: at its next round). */
  next_attempt_at: Date | null;
  /** Why the last start failed: a gRPC status and a short message, never a secret. */
  last_error: string | null;
}

/** The event run's start, as the receiver worked it out: its summary and search attributes. */
export interface DeliveryStart {
  /** The task queue of the deployment that acknowledged it: only its relays start the row. */
  taskQueue: string;
  /** The run's DeliverySummary (workflows/contract.ts), shown in the Temporal UI. */
  summary: object;
  /** Set when the delivery concerns a single organization / repository (Keyword attributes hold one value). */
  organizationId?: string;
  repositoryId?: string;
  /**
   * The run's DeliveryTargets (workflows/run-labels.ts): the slugs, repository names and connection
   * it concerns, for its search attributes and summary. Absent from rows stored before it.
   */
  targets?: object;
  /** The W3C traceparent of the receipt (tracing on): the relay starts the run in that trace. */
  traceparent?: string;
  /**
   * The connection whose own hook delivered it, and, for a provider whose credential signs the body
   * but not the delivery id (Bitbucket DC: api/routes/webhooks.ts BODY_DIGEST_PROVIDERS), the body's
   * digest (a replay under another id is not recorded twice).
   */
  connectionId?: string;
  bodyDigest?: string;
}

export interface SubscribersTable {
  id: Generated<string>;
  organization_id: string;
  url: string;
  secret: string;
  kinds: Json<EventKind[]>;
  ref_globs: Json<string[]>;
  created_at: CreatedAt;
}

export interface DispatchAttemptsTable {
  id: Generated<string>;
  subscriber_id: string;
  event_id: string;
  attempt: number;
  status_code: number | null;
  error: string | null;
  succeeded: boolean;
  duration_ms: number | null;
  /** A failed attempt's write time plus the subscriber's Retry-After (as honoured), when it gave one: not sent again before then. */
  retry_not_before: Date | null;
  attempted_at: CreatedAt;
}

/** Where an (event, subscriber) pair of a large fan-out stands: the event run drains them (activities/dispatch.ts). */
export interface EventDispatchesTable {
  event_id: string;
  subscriber_id: string;
  /** The event run's workflow id. */
  run_key: string;
  status: 'pending' | 'delivered' | 'undelivered';
  attempts: ColumnType<number, number | undefined, number>;
  next_attempt_at: Timestamp;
  /** Why the last attempt failed (or why the pair was not attempted). */
  last_reason: string | null;
}

export interface Database {
  organizations: OrganizationsTable;
  api_tokens: ApiTokensTable;
  github_install_states: GithubInstallStatesTable;
  connections: ConnectionsTable;
  repository_listing_pages: RepositoryListingPagesTable;
  repository_listings: RepositoryListingsTable;
  repositories: RepositoriesTable;
  attachments: AttachmentsTable;
  hooks: HooksTable;
  webhook_credentials: WebhookCredentialsTable;
  delivery_digests: DeliveryDigestsTable;
  events: EventsTable;
  webhook_deliveries: WebhookDeliveriesTable;
  subscribers: SubscribersTable;
  dispatch_attempts: DispatchAttemptsTable;
  event_dispatches: EventDispatchesTable;
}

export type Organization = Selectable<OrganizationsTable>;
export type Connection = Selectable<ConnectionsTable>;
export type NewConnection = Insertable<ConnectionsTable>;
export type ConnectionUpdate = Updateable<ConnectionsTable>;
export type Repository = Selectable<RepositoriesTable>;
export type Attachment = Selectable<AttachmentsTable>;
export type Hook = Selectable<HooksTable>;
export type EventRow = Selectable<EventsTable>;
