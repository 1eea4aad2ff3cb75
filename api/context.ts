import type { BodyPool } from './webhooks/body-thread.ts';
import type { Outbound } from '../activities/outbound.ts';
import type { Client } from '@temporalio/client';
import type { EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import type { Provider } from '../lib/domain.ts';
import type { Logger, LogLevel } from '../lib/logger.ts';
import type { ApiMetrics } from '../lib/metrics.ts';
import type { AckTrace } from './ack-trace.ts';
import type { IntakeSignal } from './intake-relay.ts';

export interface ApiDeps {
  db: Db;
  temporal: Client;
  keys: EncryptionKeys;
  logger: Logger;
  /** tracing.enabled: each request gets a server span (the Temporal client carries the OpenTelemetry interceptor then too). */
  tracing?: boolean;
  /** The level of the one line logged per request (logging.accessLogLevel; default info, 'silent' for none). */
  accessLogLevel?: LogLevel;
  adminToken: string;
  taskQueue: string;
  namespace: string;
  /**
   * How long the Temporal calls made for one request may take together (temporal.requestDeadlineSeconds;
   * default 5 s, api/temporal-deadline.ts): past it the request answers 503. Not the intake relay's starts.
   */
  temporalDeadlineMs?: number;
  /** Base URL of the Temporal UI, for links to runs. */
  temporalUiUrl: string;
  allowHttpHosts: string[];
  /** security.allowPrivateNetworks: loopback and private networks provider and subscriber URLs may reach. */
  allowPrivateNetworks?: string[];
  webhooks: WebhookSecrets;
  /** api.maxBodyBytes: the largest body /api/v1/* reads (default API_MAX_BODY_BYTES); a larger one answers 413. */
  maxBodyBytes?: number;
  /** Providers enabled in config (gitProviders.*.enabled); connecting another answers 400. */
  enabledProviders: Provider[];
  /**
   * The GitHub App, for the install redirect and the setup callback's proof (its OAuth client,
   * exchanged at `webUrl`); undefined when GitHub is not configured.
   */
  githubApp?: { appName: string; webUrl: string; clientId?: string; clientSecret?: string };
  /** publicUrl: where browsers reach forgelink; an http one (a local stack) gets cookies without `Secure`. */
  publicUrl?: string;
  /** GitHub REST base URL stored on GitHub connections (GHES: https://HOST/api/v3). */
  githubApiUrl?: string;
  /** The guarded HTTP layer, for the one provider call the API makes itself: proving a GitHub installation. */
  outbound: Outbound;
  /** True once the process is shutting down: /readyz answers 503 so load balancers stop sending. */
  draining?: () => boolean;
  /** Prometheus metrics of this API process (requests, webhook deliveries, the intake relay). */
  metrics?: ApiMetrics;
  /** Where the API's own listener serves `metrics` (metrics.api.path), unless they have a port of their own. */
  metricsPath?: string;
  /** The receivers tell this process's intake relay of each delivery they store (createIntakeSignal). */
  intake: IntakeSignal;
  /** The ingest benchmark's acknowledgement trace (FORGELINK_ACK_TRACE; api/ack-trace.ts): absent in production. */
  ackTrace?: AckTrace;
  /** Resolves host names when checking provider URLs; tests may substitute it. */
  resolveHost?: (host: string) => Promise<string[]>;
}

export type Principal = { kind: 'admin' } | { kind: 'organization'; organizationId: string };

export type AppEnv = { Variables: { deps: ApiDeps; principal: Principal; requestId: string } };

/** Secrets the webhook receivers verify against; each list is [current, previous?] for rotation. */
export interface WebhookSecrets {
  github: string[];
  /** The global secrets legacy hooks carry (GitLab, Bitbucket, Azure DevOps): empty unless webhooks.acceptLegacyHooks is on. */
  gitlab: string[];
  bitbucket: string[];
  azureDevOps: { user: string; passwords: string[] } | undefined;
  maxBodyBytes: number;
  /** Bytes of bodies not verified yet held at once (default 64 MiB or two bodies of maxBodyBytes); see api/webhooks/unverified-budget.ts. */
  unverifiedBodyBytes?: number;
  /** Bytes verified deliveries in flight hold at once, bodies and events' JSON (default 256 MiB or 10 times maxBodyBytes); see api/webhooks/unverified-budget.ts heldBudgetSizes. */
  verifiedDeliveryBytes?: number;
  /** Bodies of at least this many bytes are read on a thread (api/webhooks/body-thread.ts). */
  threadBodyBytes?: number;
  /** An organization's deliveries stored and not started yet (count, bytes, its connections' hooks) past which they are answered 503 (api/webhooks/backlog-bound.ts; defaults in lib/config.ts). */
  maxBacklogDeliveries?: number;
  maxBacklogBytes?: number;
  /** Threads large bodies are read on. */
  bodyThreads?: number;
  /** The pool of those threads (the API's composition root makes it, to close it on shutdown); without it the receivers make their own. */
  bodyPool?: BodyPool;
  /** How long a repository found attached is remembered by the receivers (0: always look it up). */
  attachedCacheSeconds?: number;
  /** How long the receivers keep a connection's opened webhook credentials (default 60; a dropped one stays accepted that long). */
  credentialCacheSeconds?: number;
}
