import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { LOG_LEVELS } from './logger.ts';
import { DNS_TIMEOUT_SECONDS_DEFAULT } from './dns.ts';
import { isNetwork } from './url.ts';
import type { Provider } from './domain.ts';

/** config/forgelink.example.yml's key: public, so never a key that seals credentials. */
export const EXAMPLE_ENCRYPTION_KEY = 'MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=';
/**
 * Every secret value config/forgelink.example.yml ships, set or commented out (auth.adminToken and
 * gitProviders.github.webhookSecret, github.clientSecret and .privateKey's placeholder, the legacy
 * hooks' global secrets): everyone can read them, so none is accepted for any secret key (an example
 * admin token is a break-glass token over every tenant). Compared without whitespace.
 */
export const EXAMPLE_SECRETS: readonly string[] = [
  'change-me-to-a-long-random-string',
  'change-me',
  '-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----\n',
  'the-old-gitlab-hook-token',
  'the-old-bitbucket-secret',
  'the-old-password',
  EXAMPLE_ENCRYPTION_KEY,
];
const withoutSpace = (value: string) => value.replace(/\s+/g, '');
const exampleSecrets = new Set(EXAMPLE_SECRETS.map(withoutSpace));
const notExample = (value: string) => !exampleSecrets.has(withoutSpace(value));
const EXAMPLE_SECRET_MESSAGE = 'is the example value from config/forgelink.example.yml, which everyone can read: generate your own';
/** Any secret forgelink holds: never one of the example config's. */
const ownSecret = z.string().refine(notExample, EXAMPLE_SECRET_MESSAGE);
/** A secret forgelink checks deliveries or requests against: long enough not to be guessed, and not the example's. */
const secret = z.string().min(24, 'must be at least 24 characters').refine(notExample, EXAMPLE_SECRET_MESSAGE);
const encryptionKey = z
  .string()
  .refine((v) => Buffer.from(v, 'base64').length === 32, 'must be the base64 of 32 random bytes')
  .refine((v) => v !== EXAMPLE_ENCRYPTION_KEY, 'is the example key from config/forgelink.example.yml: generate your own');
const hostPort = z.coerce.number().int().min(0).max(65535);

const logLevel = z.preprocess((v) => (typeof v === 'string' ? v.toLowerCase() : v), z.enum(LOG_LEVELS));

/** An HTTP path the metrics are served at. */
const metricsPath = z.string().regex(/^\/[A-Za-z0-9._~\/-]*$/, 'must be a path such as /metrics').default('/metrics');

const providerToggle = z.object({ enabled: z.boolean().default(false) });

/**
 * A secured Temporal connection: TLS (server CA, server name) or mTLS (client certificate and key),
 * each as PEM inline or as a file path, and Temporal Cloud's API key (which turns TLS on by itself).
 */
const temporalTls = z
  .object({
    enabled: z.preprocess((v) => ({ true: true, '1': true, false: false, '0': false })[String(v)] ?? v, z.boolean()).default(true),
    caFile: z.string().min(1).optional(),
    ca: z.string().min(1).optional(),
    serverName: z.string().min(1).optional(),
    certFile: z.string().min(1).optional(),
    cert: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    key: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((tls, ctx) => {
    for (const [inline, file] of [['ca', 'caFile'], ['cert', 'certFile'], ['key', 'keyFile']] as const) {
      if (tls[inline] && tls[file]) ctx.addIssue({ code: 'custom', path: [inline], message: `give ${inline} or ${file}, not both` });
    }
    if (Boolean(tls.cert ?? tls.certFile) !== Boolean(tls.key ?? tls.keyFile)) {
      ctx.addIssue({ code: 'custom', path: [tls.cert ?? tls.certFile ? 'key' : 'cert'], message: 'a client certificate and its key go together (mTLS)' });
    }
  });

/** The Temporal SDK's environment variables (the names @temporalio/envconfig reads); FORGELINK_TEMPORAL_* win over them. */
const TEMPORAL_SDK_ENV: Record<string, string[]> = {
  TEMPORAL_ADDRESS: ['temporal', 'address'],
  TEMPORAL_NAMESPACE: ['temporal', 'namespace'],
  TEMPORAL_API_KEY: ['temporal', 'apiKey'],
  TEMPORAL_TLS: ['temporal', 'tls', 'enabled'],
  TEMPORAL_TLS_SERVER_CA_CERT_PATH: ['temporal', 'tls', 'caFile'],
  TEMPORAL_TLS_SERVER_CA_CERT_DATA: ['temporal', 'tls', 'ca'],
  TEMPORAL_TLS_SERVER_NAME: ['temporal', 'tls', 'serverName'],
  TEMPORAL_TLS_CLIENT_CERT_PATH: ['temporal', 'tls', 'certFile'],
  TEMPORAL_TLS_CLIENT_CERT_DATA: ['temporal', 'tls', 'cert'],
  TEMPORAL_TLS_CLIENT_KEY_PATH: ['temporal', 'tls', 'keyFile'],
  TEMPORAL_TLS_CLIENT_KEY_DATA: ['temporal', 'tls', 'key'],
};

/** repositoryCache listing concurrency defaults: the config's, and what code without a config falls back to. */
export const LISTING_CONCURRENCY_DEFAULTS = { callsPerConnection: 4, callsPerWorker: 8 } as const;
/** webhooks.threadBodyBytes' default: a body this large is read on a thread (README: Webhook receivers, Hostile content). */
export const WEBHOOK_THREAD_BODY_BYTES_DEFAULT = 256 * 1024;

/**
 * webhooks.maxBacklogDeliveries' and maxBacklogBytes' defaults: an organization's deliveries stored
 * and not started yet (its connections' own hooks) past which they are answered 503
 * (api/webhooks/backlog-bound.ts; README: Webhook receivers, An organization's backlog). Far above a
 * legitimate backlog: the relays start hundreds of runs a second, and 1,000,000 is a GitLab system
 * hook at 25 deliveries a second through an 11-hour Temporal outage; 4 GiB is ~160 deliveries of
 * the largest body (25 MiB, its events stored compressed), or a million of a few KiB. Per
 * organization, not per connection: a tenant may make 50 connections, and the bound is the intake
 * table's disk one tenant may take.
 */
export const MAX_BACKLOG_DELIVERIES_DEFAULT = 1_000_000;
export const MAX_BACKLOG_BYTES_DEFAULT = 4 * 1024 * 1024 * 1024;

/** webhooks.maxBodyBytes' largest value (100 MiB; see the schema). */
export const MAX_WEBHOOK_BODY_BYTES = 100 * 1024 * 1024;

/** api.maxBodyBytes' default: the largest request the API takes (50 globs of 255 and a 2 KiB URL) is ~15 KiB. */
export const API_MAX_BODY_BYTES_DEFAULT = 64 * 1024;
/**
 * database.*TimeoutSeconds' defaults (the API's pool): a healthy PostgreSQL connects in
 * milliseconds and answers the API's statements in tens of them. A delivery's worst single
 * statement is then 2 s to connect and 5 + 1 s to answer, under the 10 s GitHub waits.
 */
export const DATABASE_DEADLINE_DEFAULTS = { connectTimeoutSeconds: 2, statementTimeoutSeconds: 5, lockTimeoutSeconds: 2 } as const;
/** temporal.requestDeadlineSeconds' default: a healthy frontend answers a start or a describe in tens of milliseconds. */
export const TEMPORAL_REQUEST_DEADLINE_SECONDS_DEFAULT = 5;

/**
 * repositoryCache listing caps: a tenant's server that lists for ever fails its listing there
 * (README: Repository cache). 100,000 repositories; 2,000 pages are 100,000 at GitHub's and
 * GitLab's 100 a page, Bitbucket's at 50 a page, or an Azure DevOps organization of ~1,980 projects.
 */
export const LISTING_CAPS_DEFAULTS = { maxRepositoriesPerConnection: 100_000, maxPagesPerConnection: 2_000 } as const;
/** repositoryCache.vanishedRetentionDays: how long a vanished, unattached repository row is kept before a complete listing deletes it. */
export const VANISHED_RETENTION_DAYS_DEFAULT = 7;

/**
 * The worker's sizing defaults, chosen from the ingest benchmark (README: Performance): the SDK's
 * own defaults cache ~2,300 runs (from a 4 GiB heap) and run 40 workflow tasks and 100 local
 * activities at once, which let one worker grow past 700 MiB for no throughput on 2 cores.
 */
export const WORKER_SIZING_DEFAULTS = {
  maxCachedWorkflows: 100,
  reuseV8Context: true,
  maxConcurrentWorkflowTaskExecutions: 10,
  maxConcurrentLocalActivityExecutions: 20,
  maxConcurrentActivityTaskExecutions: 20,
  inlineCallsPerOrganization: 2,
} as const;

/** How many tenant-facing calls a worker runs inside workflow tasks at once: the configured number, or half its workflow task slots. */
export function inlineCallsPerWorker(sizing: Pick<WorkerSizing, 'inlineCallsPerWorker' | 'maxConcurrentWorkflowTaskExecutions'>): number {
  return Math.min(sizing.inlineCallsPerWorker ?? Math.max(1, Math.floor(sizing.maxConcurrentWorkflowTaskExecutions / 2)), sizing.maxConcurrentWorkflowTaskExecutions - 1);
}

/** The worker.* keys the activity admission follows (spelled out: the schema's refinements use them). */
interface ActivitySlots {
  maxConcurrentActivityTaskExecutions: number;
  activityCallsPerWorker?: number | undefined;
  activityCallsPerOrganization?: number | undefined;
}
/** A quarter of the worker's activity slots (at least 1): the default share of one organization, and the default kept from all tenants' calls. */
const quarterOfActivitySlots = (sizing: ActivitySlots) => Math.max(1, Math.floor(sizing.maxConcurrentActivityTaskExecutions / 4));
/** How many tenant-facing activities a worker runs at once: the configured number, or its activity slots less a quarter (always fewer than them, when it has 2 or more). */
export function activityCallsPerWorker(sizing: ActivitySlots): number {
  const slots = sizing.maxConcurrentActivityTaskExecutions;
  return Math.max(1, Math.min(sizing.activityCallsPerWorker ?? slots - quarterOfActivitySlots(sizing), slots - 1));
}
/**
 * How many of one organization's tenant-facing activities a worker runs at once: the configured
 * number (at most activityCallsPerWorker), or a quarter of its activity slots, fewer than
 * activityCallsPerWorker so that one organization never takes every place (a worker admitting 1
 * has no place to keep: 1 or 2 activity slots do not keep organizations apart).
 */
export function activityCallsPerOrganization(sizing: ActivitySlots): number {
  const perWorker = activityCallsPerWorker(sizing);
  return sizing.activityCallsPerOrganization !== undefined ? Math.min(sizing.activityCallsPerOrganization, perWorker) : Math.max(1, Math.min(quarterOfActivitySlots(sizing), perWorker - 1));
}

/**
 * worker.answerBudgetBytes' least value: two provider answers at their bound (MAX_ANSWER_PARSE_COST,
 * activities/providers/answer.ts, 40 MiB), the least the default sizing gives. Below one, an answer
 * within its bound could never be parsed.
 */
export const ANSWER_BUDGET_MIN_BYTES = 80 * 1024 * 1024;

const workerSizing = z
  .object({
    // Runs kept in memory between their workflow tasks (0: none; each task then replays its history).
    maxCachedWorkflows: z.number().int().min(0).max(100_000).default(WORKER_SIZING_DEFAULTS.maxCachedWorkflows),
    // One V8 context for every run (the SDK's default and far lighter); false: one per run.
    reuseV8Context: z.boolean().default(WORKER_SIZING_DEFAULTS.reuseV8Context),
    // Slots: workflow tasks, local activities (recording and first dispatch attempts) and activities at once.
    maxConcurrentWorkflowTaskExecutions: z.number().int().min(2).max(1000).default(WORKER_SIZING_DEFAULTS.maxConcurrentWorkflowTaskExecutions),
    maxConcurrentLocalActivityExecutions: z.number().int().min(1).max(1000).default(WORKER_SIZING_DEFAULTS.maxConcurrentLocalActivityExecutions),
    maxConcurrentActivityTaskExecutions: z.number().int().min(1).max(1000).default(WORKER_SIZING_DEFAULTS.maxConcurrentActivityTaskExecutions),
    // Tenant-facing calls (a subscriber's first attempt, an attach's provider steps) run inside a
    // workflow task, holding its slot, at most this many at once (default: half the workflow task
    // slots) and this many of one organization; the others run as activities (activities/inline-admission.ts).
    inlineCallsPerWorker: z.number().int().min(1).max(1000).optional(),
    inlineCallsPerOrganization: z.number().int().min(1).max(1000).default(WORKER_SIZING_DEFAULTS.inlineCallsPerOrganization),
    // Tenant-facing activities (a subscriber's retries, a fan-out's drains) hold an activity slot each: at most this
    // many at once (default: the activity slots less a quarter) and this many of one organization
    // (default: a quarter of them); the others wait on a timer in their run (activities/activity-admission.ts).
    activityCallsPerWorker: z.number().int().min(1).max(1000).optional(),
    activityCallsPerOrganization: z.number().int().min(1).max(1000).optional(),
    // Bytes of parsed provider answers the worker holds at once, all organizations together (a
    // quarter each); default the lower of the V8 heap limit and the container's memory limit, less
    // 384 MiB (activities/providers/answer-budget.ts).
    answerBudgetBytes: z
      .number()
      .int()
      .min(ANSWER_BUDGET_MIN_BYTES, { message: `must be at least ${ANSWER_BUDGET_MIN_BYTES} (80 MiB: two provider answers at their bound, 40 MiB once parsed)` })
      .optional(),
  })
  .strict()
  .refine((w) => w.activityCallsPerWorker === undefined || w.activityCallsPerWorker < w.maxConcurrentActivityTaskExecutions, {
    path: ['activityCallsPerWorker'],
    message: 'must be below maxConcurrentActivityTaskExecutions: a slot must stay free for the activities that call no tenant',
  })
  .refine((w) => w.activityCallsPerOrganization === undefined || w.activityCallsPerOrganization < w.maxConcurrentActivityTaskExecutions, {
    path: ['activityCallsPerOrganization'],
    message: "must be below maxConcurrentActivityTaskExecutions: one organization's calls must leave slots to the others",
  })
  .refine((w) => w.activityCallsPerOrganization === undefined || activityCallsPerWorker(w) === 1 || w.activityCallsPerOrganization < activityCallsPerWorker(w), {
    path: ['activityCallsPerOrganization'],
    message: "must be below activityCallsPerWorker (by default the activity slots less a quarter): one organization's calls must leave places to the others",
  })
  .refine((w) => w.inlineCallsPerWorker === undefined || w.inlineCallsPerWorker < w.maxConcurrentWorkflowTaskExecutions, {
    path: ['inlineCallsPerWorker'],
    message: 'must be below maxConcurrentWorkflowTaskExecutions: a slot must stay free for the runs that call no tenant',
  })
  .refine((w) => w.maxCachedWorkflows === 0 || w.maxConcurrentWorkflowTaskExecutions <= w.maxCachedWorkflows, {
    path: ['maxConcurrentWorkflowTaskExecutions'],
    message: 'must not exceed maxCachedWorkflows (a workflow task runs on a cached run) unless the cache is off (0)',
  });

export type WorkerSizing = z.infer<typeof workerSizing>;

export const configSchema = z
  .object({
    publicUrl: z.url({ protocol: /^https?$/ }),
    api: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: hostPort.default(8080),
        // Largest body of an authenticated request (/api/v1/*); the webhook receivers have webhooks.maxBodyBytes.
        maxBodyBytes: z.number().int().positive().default(API_MAX_BODY_BYTES_DEFAULT),
      })
      .prefault({}),
    database: z
      .object({
        url: z.string().min(1).optional(),
        // The API's pool (lib/db/index.ts, DbDeadlines): a connect or a wait for a pooled connection,
        // each statement (PostgreSQL's statement_timeout; the client waits 1 s more, then cuts the
        // connection) and a lock wait (lock_timeout). Past them the request answers 503 with
        // Retry-After. Well under the providers' 10 s webhook timeout. Not migrations nor the worker.
        connectTimeoutSeconds: z.number().min(0.1).max(60).default(DATABASE_DEADLINE_DEFAULTS.connectTimeoutSeconds),
        statementTimeoutSeconds: z.number().min(0.1).max(600).default(DATABASE_DEADLINE_DEFAULTS.statementTimeoutSeconds),
        lockTimeoutSeconds: z.number().min(0.1).max(600).default(DATABASE_DEADLINE_DEFAULTS.lockTimeoutSeconds),
        // Whether PostgreSQL is told the statement and lock deadlines (a `SET` on each new connection,
        // which any pooler passes on). False behind a transaction-pooling pooler: a session's SET
        // would stay on whichever server connection ran it (another client's next) and be missing
        // from the next one; only the client's connect and read deadlines then hold.
        serverDeadlines: z.boolean().default(true),
      })
      .refine((d) => d.lockTimeoutSeconds <= d.statementTimeoutSeconds, { path: ['lockTimeoutSeconds'], message: 'must be at most statementTimeoutSeconds (a lock wait is part of its statement)' })
      .prefault({}),
    temporal: z
      .object({
        address: z.string().min(1).optional(),
        namespace: z.string().min(1).default('default'),
        taskQueue: z.string().min(1).default('forgelink'),
        uiUrl: z.url().optional(),
        tls: temporalTls.optional(),
        apiKey: z.string().min(1).optional(),
        // How long the API's Temporal calls for one request may take together; past it the request answers 503.
        requestDeadlineSeconds: z.number().positive().max(60).default(TEMPORAL_REQUEST_DEADLINE_SECONDS_DEFAULT),
      })
      .prefault({}),
    auth: z.object({ adminToken: secret }),
    encryption: z.object({
      key: encryptionKey,
      keyId: z.string().regex(/^[A-Za-z0-9_-]{1,32}$/).default('k1'),
      previousKeys: z.array(z.object({ id: z.string().regex(/^[A-Za-z0-9_-]{1,32}$/), key: encryptionKey })).default([]),
    }),
    gitProviders: z
      .object({
        github: providerToggle
          .extend({
            appId: z.coerce.string().optional(),
            appName: z.string().optional(),
            clientId: z.string().optional(),
            clientSecret: ownSecret.optional(),
            privateKey: ownSecret.optional(),
            webhookSecret: secret.optional(),
            previousWebhookSecret: secret.optional(),
            baseUrl: z.url().default('https://api.github.com'),
            // Where the App's OAuth code is exchanged: https://github.com, GHES https://HOST (default: from baseUrl).
            webUrl: z.url({ protocol: /^https?$/ }).optional(),
          })
          .superRefine((gh, ctx) => {
            if (!gh.enabled) return;
            for (const key of ['appId', 'privateKey', 'webhookSecret'] as const) {
              if (!gh[key]) ctx.addIssue({ code: 'custom', path: [key], message: 'is required when github is enabled' });
            }
          })
          .prefault({}),
        // The global webhook secrets are optional: hooks carry per-connection credentials, and these
        // are accepted only for hooks made before those, and only while webhooks.acceptLegacyHooks is on.
        gitlab: providerToggle.extend({ webhookSecret: secret.optional(), previousWebhookSecret: secret.optional() }).prefault({}),
        bitbucket: providerToggle.extend({ webhookSecret: secret.optional(), previousWebhookSecret: secret.optional() }).prefault({}),
        azureDevOps: providerToggle
          .extend({
            webhookBasicAuthUser: z.string().optional(),
            webhookBasicAuthPass: secret.optional(),
            previousWebhookBasicAuthPass: secret.optional(),
          })
          .superRefine((ado, ctx) => {
            if (Boolean(ado.webhookBasicAuthUser) === Boolean(ado.webhookBasicAuthPass)) return;
            const missing = ado.webhookBasicAuthUser ? 'webhookBasicAuthPass' : 'webhookBasicAuthUser';
            ctx.addIssue({ code: 'custom', path: [missing], message: 'is required with the other webhookBasicAuth key (legacy hooks deliver with both)' });
          })
          .prefault({}),
      })
      .prefault({}),
    repositoryCache: z
      .object({
        schedule: z.string().min(1).default('0 2 * * *'),
        timeZone: z.string().min(1).default('UTC'),
        // Listing calls in flight at once: for one connection (providers' limits are per credential),
        // and for every listing of one worker.
        callsPerConnection: z.number().int().min(1).max(32).default(LISTING_CONCURRENCY_DEFAULTS.callsPerConnection),
        callsPerWorker: z.number().int().min(1).max(256).default(LISTING_CONCURRENCY_DEFAULTS.callsPerWorker),
        // One listing of one connection fails (ProviderListingTooLong, not retried) past these.
        maxRepositoriesPerConnection: z.number().int().min(1).max(10_000_000).default(LISTING_CAPS_DEFAULTS.maxRepositoriesPerConnection),
        maxPagesPerConnection: z.number().int().min(1).max(1_000_000).default(LISTING_CAPS_DEFAULTS.maxPagesPerConnection),
        // A repository vanished longer than this, with no attachment and no event, is deleted after a complete listing.
        vanishedRetentionDays: z.number().int().min(1).max(3650).default(VANISHED_RETENTION_DAYS_DEFAULT),
      })
      .prefault({}),
    // The hook-health reconcile: by default nightly, two hours after the default repository refresh.
    hookHealth: z
      .object({
        schedule: z.string().min(1).default('0 4 * * *'),
        timeZone: z.string().min(1).default('UTC'),
        // Connections checked at once; each checks its repositories one after another.
        connectionsAtOnce: z.number().int().min(1).max(64).default(4),
      })
      .prefault({}),
    security: z
      .object({
        allowHttpHosts: z.array(z.string()).default([]),
        // Loopback and private networks provider and subscriber URLs may reach (link-local and metadata never).
        allowPrivateNetworks: z.array(z.string().refine(isNetwork, 'must be an IP address or a CIDR range such as 10.0.0.0/8')).default([]),
        // Where provider and subscriber host names are looked up (c-ares, not the threadpool's getaddrinfo;
        // default: the name servers of /etc/resolv.conf), and how long one lookup may take (lib/dns.ts).
        dnsServers: z.array(z.string().min(1)).default([]),
        dnsTimeoutSeconds: z.number().positive().max(60).default(DNS_TIMEOUT_SECONDS_DEFAULT),
      })
      .prefault({}),
    webhooks: z
      .object({
        // At most 100 MiB: a delivery's events are stored up to twice this (serializeEvents), which
        // must stay under PostgreSQL's jsonb limit (255 MB) and, with one more chunk of events being
        // written, V8's longest string (~512 M characters), else a RangeError outside the
        // receiver's guard is a 500. No provider sends more than 25 MB. A large body's JSON may take
        // 12 times it of heap once parsed (lib/parse-cost.ts): more answers 413, unparsed.
        maxBodyBytes: z.number().int().positive().max(MAX_WEBHOOK_BODY_BYTES).default(25 * 1024 * 1024),
        // Bytes of GitHub and Bitbucket bodies not verified yet held at once (default 64 MiB, or two of maxBodyBytes when more).
        unverifiedBodyBytes: z.number().int().positive().optional(),
        // Bytes verified deliveries in flight hold at once, their bodies and events' JSON (default
        // 256 MiB, or 10 times maxBodyBytes when more); a connection a quarter, and always 5 times maxBodyBytes.
        verifiedDeliveryBytes: z.number().int().positive().optional(),
        // Bodies of at least this many bytes are verified, parsed and normalized on a thread, not on
        // the event loop that answers every delivery (more than maxBodyBytes: none is).
        threadBodyBytes: z.number().int().positive().default(WEBHOOK_THREAD_BODY_BYTES_DEFAULT),
        // Threads those bodies are read on (default 1: one parse at a time, as before; each has a heap of its own).
        bodyThreads: z.number().int().min(1).max(16).optional(),
        // How long the receivers remember a repository found attached (0: look it up on every delivery).
        attachedCacheSeconds: z.number().int().min(0).max(3600).default(30),
        // An organization whose connections' own hooks' deliveries stored and not started yet are this
        // many, or take this many bytes (their events, as stored), has them answered 503 with
        // Retry-After, nothing stored, until the relays have started enough of them: one tenant sending
        // faster than its runs start does not fill the disk. Not GitHub's App nor legacy hooks (one hook for all).
        maxBacklogDeliveries: z.number().int().min(1).default(MAX_BACKLOG_DELIVERIES_DEFAULT),
        maxBacklogBytes: z.number().int().min(1).default(MAX_BACKLOG_BYTES_DEFAULT),
        // How long a delivery's stored events (the intake table) are kept after its run was started (by the database's clock).
        deliveryRetentionDays: z.number().int().min(1).default(7),
        // How long the receivers keep a connection's opened webhook credentials (a dropped one stays accepted that long).
        credentialCacheSeconds: z.number().int().min(0).max(3600).default(60),
        // Deliveries of legacy hooks (the bare URL, the global secrets) are accepted only while this is on: a
        // migration window. Every tenant that ran its own GitLab, Bitbucket DC or Azure DevOps Server holds
        // those secrets and can sign with them a delivery naming any organization's repository.
        acceptLegacyHooks: z.boolean().default(false),
      })
      .refine((w) => w.unverifiedBodyBytes === undefined || w.unverifiedBodyBytes >= w.maxBodyBytes, {
        message: 'unverifiedBodyBytes must be at least maxBodyBytes (else a body of the limit is never read)',
        path: ['unverifiedBodyBytes'],
      })
      .refine((w) => w.verifiedDeliveryBytes === undefined || w.verifiedDeliveryBytes >= 5 * w.maxBodyBytes, {
        message: "verifiedDeliveryBytes must be at least 5 times maxBodyBytes (a body of the limit and its events' JSON, counted twice; else such a delivery is never stored)",
        path: ['verifiedDeliveryBytes'],
      })
      .prefault({}),
    // SIGTERM (a rollout): the API answers /readyz 503 for drainDelaySeconds so load balancers stop
    // sending, then stops accepting and gives in-flight requests requestTimeoutSeconds; the worker
    // stops polling, cancels activities after workerGraceSeconds and stops at workerForceSeconds.
    shutdown: z
      .object({
        drainDelaySeconds: z.number().min(0).max(300).default(5),
        requestTimeoutSeconds: z.number().min(1).max(600).default(20),
        workerGraceSeconds: z.number().min(0).max(3600).default(20),
        workerForceSeconds: z.number().min(1).max(3600).default(25),
      })
      .refine((s) => s.workerForceSeconds > s.workerGraceSeconds, { path: ['workerForceSeconds'], message: 'must be longer than workerGraceSeconds' })
      .prefault({}),
    // JSON lines on stdout; `accessLogLevel` is the level of the API's one line per request ('silent': none).
    logging: z
      .object({
        level: logLevel.default('info'),
        accessLogLevel: logLevel.default('info'),
      })
      .prefault({}),
    // The worker's Temporal sizing: how many runs it keeps in memory and how much it runs at once.
    // The defaults are measured (README: Performance, worker sizing); each costs memory or throughput.
    worker: workerSizing.prefault({}),
    // OpenTelemetry traces over OTLP/HTTP, off by default: a delivery's receipt, its event run and
    // activities, and the provider and subscriber calls they make, in one trace.
    tracing: z
      .object({
        enabled: z.preprocess((v) => ({ true: true, '1': true, false: false, '0': false })[String(v)] ?? v, z.boolean()).default(false),
        endpoint: z.url({ protocol: /^https?$/ }).optional(),
        headers: z.record(z.string(), z.string()).default({}),
        sampleRatio: z.number().min(0).max(1).default(1),
      })
      .prefault({}),
    // How long an event is retried (with backoff) towards a subscriber before it is given up on.
    subscribers: z.object({ deliveryDeadlineSeconds: z.number().int().positive().default(24 * 60 * 60) }).prefault({}),
    // Prometheus metrics. The API serves them on its own port at `path` unless `api.port` gives them
    // a listener of their own (keeps them off a public Ingress); the worker serves them (its own and
    // the Temporal SDK's) only where `worker.port` is set. Port 0 picks a free one (logged).
    metrics: z
      .object({
        enabled: z.boolean().default(true),
        // Where the metrics listeners bind (default: api.host).
        host: z.string().min(1).optional(),
        api: z.object({ port: hostPort.optional(), path: metricsPath }).prefault({}),
        worker: z.object({ port: hostPort.optional(), path: metricsPath }).prefault({}),
      })
      .refine((m) => m.api.port !== undefined || !/^\/(api\/|healthz$|readyz$|openapi\.json$)/.test(m.api.path), {
        path: ['api', 'path'],
        message: "is one of the API's own paths: choose another, or give the metrics their own api.port",
      })
      .prefault({}),
  })
  .strict()
  .superRefine((config, ctx) => {
    // Hooks deliver their credentials to publicUrl: plain http only where nothing crosses a network.
    const url = new URL(config.publicUrl);
    if (url.protocol === 'http:' && !isLoopbackHost(url.hostname) && !config.security.allowHttpHosts.includes(url.hostname)) {
      ctx.addIssue({ code: 'custom', path: ['publicUrl'], message: 'must be https (hooks would send their credentials in clear); plain http only for loopback or a host in security.allowHttpHosts' });
    }
    // The window without a global secret it could verify with would accept nothing: refused, so that
    // turning it on says what it does. The keys without the window do not stop the process (an
    // existing deployment may set them; the contract has them optional): they are unused, and the
    // start-up notice (api/legacy-hooks.ts) names them.
    if (config.webhooks.acceptLegacyHooks && legacyHookKeys(config).usable.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['webhooks', 'acceptLegacyHooks'],
        message: "needs the legacy hooks' global secret of an enabled provider (gitProviders.gitlab.webhookSecret, bitbucket.webhookSecret, azureDevOps.webhookBasicAuthUser with webhookBasicAuthPass)",
      });
    }
  });

/**
 * The legacy hooks' global keys set for enabled providers (`gitlab.webhookSecret`, ...), and the
 * providers whose legacy deliveries they can verify: Azure DevOps' passwords only with
 * webhookBasicAuthUser (a delivery carries both).
 */
export function legacyHookKeys(config: Pick<Config, 'gitProviders'>): { keys: string[]; usable: Exclude<Provider, 'github'>[] } {
  const { gitlab, bitbucket, azureDevOps } = config.gitProviders;
  const set = (name: string, enabled: boolean, keys: Record<string, string | undefined>) => (enabled ? Object.entries(keys).filter(([, v]) => Boolean(v)).map(([k]) => `${name}.${k}`) : []);
  const gitlabKeys = set('gitlab', gitlab.enabled, { webhookSecret: gitlab.webhookSecret, previousWebhookSecret: gitlab.previousWebhookSecret });
  const bitbucketKeys = set('bitbucket', bitbucket.enabled, { webhookSecret: bitbucket.webhookSecret, previousWebhookSecret: bitbucket.previousWebhookSecret });
  const azureKeys = set('azureDevOps', azureDevOps.enabled, { webhookBasicAuthPass: azureDevOps.webhookBasicAuthPass, previousWebhookBasicAuthPass: azureDevOps.previousWebhookBasicAuthPass });
  return {
    keys: [...gitlabKeys, ...bitbucketKeys, ...azureKeys],
    usable: [
      ...(gitlabKeys.length > 0 ? (['gitlab'] as const) : []),
      ...(bitbucketKeys.length > 0 ? (['bitbucket'] as const) : []),
      ...(azureKeys.length > 0 && azureDevOps.webhookBasicAuthUser ? (['azure-devops'] as const) : []),
    ],
  };
}

type LegacyProvider = Exclude<Provider, 'github'>;

/** What the config makes of legacy hooks (credential_version null, the global secrets): the API and the worker read the same. */
export interface LegacyHookWindow {
  /** Providers whose legacy hooks' deliveries are accepted and recorded: webhooks.acceptLegacyHooks on, with a global secret that can verify them. */
  open: LegacyProvider[];
  /** Global keys set (for an enabled provider) that verify nothing: all of them while the window is off. */
  unusedKeys: string[];
}

export function legacyHookWindow(config: Pick<Config, 'gitProviders' | 'webhooks'>): LegacyHookWindow {
  const { keys, usable } = legacyHookKeys(config);
  if (!config.webhooks.acceptLegacyHooks) return { open: [], unusedKeys: keys.map((k) => `gitProviders.${k}`) };
  const providerOf = (key: string): LegacyProvider => (key.startsWith('azureDevOps.') ? 'azure-devops' : (key.split('.')[0] as LegacyProvider));
  return { open: usable, unusedKeys: keys.filter((k) => !usable.includes(providerOf(k))).map((k) => `gitProviders.${k}`) };
}

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Environment variables that override single keys; values are strings, coerced by the schema. */
const ENV_OVERRIDES: Record<string, string[]> = {
  PORT: ['api', 'port'],
  LOG_LEVEL: ['logging', 'level'],
  FORGELINK_TRACING_ENABLED: ['tracing', 'enabled'],
  FORGELINK_TRACING_ENDPOINT: ['tracing', 'endpoint'],
  FORGELINK_PUBLIC_URL: ['publicUrl'],
  FORGELINK_API_HOST: ['api', 'host'],
  FORGELINK_DATABASE_URL: ['database', 'url'],
  DATABASE_URL: ['database', 'url'],
  FORGELINK_TEMPORAL_ADDRESS: ['temporal', 'address'],
  FORGELINK_TEMPORAL_NAMESPACE: ['temporal', 'namespace'],
  FORGELINK_TEMPORAL_TASK_QUEUE: ['temporal', 'taskQueue'],
  FORGELINK_ADMIN_TOKEN: ['auth', 'adminToken'],
  FORGELINK_ENCRYPTION_KEY: ['encryption', 'key'],
  FORGELINK_GITHUB_PRIVATE_KEY: ['gitProviders', 'github', 'privateKey'],
  FORGELINK_GITHUB_WEBHOOK_SECRET: ['gitProviders', 'github', 'webhookSecret'],
  FORGELINK_GITHUB_CLIENT_SECRET: ['gitProviders', 'github', 'clientSecret'],
  FORGELINK_GITLAB_WEBHOOK_SECRET: ['gitProviders', 'gitlab', 'webhookSecret'],
  FORGELINK_BITBUCKET_WEBHOOK_SECRET: ['gitProviders', 'bitbucket', 'webhookSecret'],
  FORGELINK_AZURE_DEVOPS_WEBHOOK_PASS: ['gitProviders', 'azureDevOps', 'webhookBasicAuthPass'],
  FORGELINK_METRICS_API_PORT: ['metrics', 'api', 'port'],
  FORGELINK_METRICS_WORKER_PORT: ['metrics', 'worker', 'port'],
};

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

/** Validates a raw config object; throws ConfigError naming every bad key. */
export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv = {}): Config {
  const merged: Record<string, unknown> =
    typeof raw === 'object' && raw !== null ? structuredClone(raw as Record<string, unknown>) : {};
  for (const [name, path] of [...Object.entries(TEMPORAL_SDK_ENV), ...Object.entries(ENV_OVERRIDES)]) {
    const value = env[name];
    if (value !== undefined && value !== '') setPath(merged, path, value);
  }
  const result = configSchema.safeParse(merged);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const key = issue.path.join('.') || '(root)';
      const message =
        issue.code === 'invalid_type' && issue.input === undefined ? 'is required' : issue.message;
      return `  ${key}: ${message}`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  return result.data;
}

/** Reads the YAML file named by FORGELINK_CONFIG (or `path`) and applies environment overrides. */
export function loadConfig(path = process.env.FORGELINK_CONFIG, env: NodeJS.ProcessEnv = process.env): Config {
  let raw: unknown = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (error) {
      throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`);
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (error) {
      throw new ConfigError(`config file ${path} is not valid YAML: ${(error as Error).message}`);
    }
  }
  return parseConfig(raw, env);
}
