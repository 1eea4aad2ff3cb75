import * as azdev from 'azure-devops-node-api';
import { CoreApi, CoreApi as CoreApiClient } from 'azure-devops-node-api/CoreApi.js';
import { GitApi, GitApi as GitApiClient } from 'azure-devops-node-api/GitApi.js';
import type { IRequestHandler, IRequestOptions } from 'azure-devops-node-api/interfaces/common/VsoBaseInterfaces.js';
import type { GitRepository } from 'azure-devops-node-api/interfaces/GitInterfaces.js';
import {
  HOOK_LISTING_CAPS,
  ProviderHttpError,
  parseRetryAfter,
  type HookSpec,
  type ProviderAdapter,
  type ProviderHook,
  type ProviderRepository,
  type ProviderTarget,
  type RepositoryPage,
  type RepositoryRef,
  type ValidationOutcome,
  storableRepositories,
  storableRepository,
} from './port.ts';
import { unlessCancelled, type Outbound } from '../outbound.ts';
import { guardSdkClient } from './azure-devops-http.ts';
import { listingBudget, messageExcerpt, parseAnswer, refusedUnparsed, withinListingBudget } from './answer.ts';

const API_VERSION = '7.1';
const REQUEST_TIMEOUT_MS = 30_000;
/** An SDK read's headers within 30 s, its body silent 30 s at most and complete within 120 s (a project's repositories are one unpaged answer). */
const SDK_CALL_LIMITS = { answerMs: REQUEST_TIMEOUT_MS, completeMs: 120_000 };
/**
 * Projects per repository page. Azure DevOps lists a project's repositories unpaged, so a page is a
 * batch of projects: small enough that each page (and its heartbeat) stays quick in large organizations.
 */
const DEFAULT_PROJECTS_PER_PAGE = 100;
/** The git area's "repositories" route, which GitApi.getRepositories/getRepository resolve. */
const GIT_REPOSITORIES_LOCATION_ID = '225f7195-f9c7-4d14-ab28-a83f7ff77e1f';
/**
 * A repository id no repository has (the nil GUID): subscriptions scoped to it are none, so
 * validate's query proves the hooks permission with an empty answer, however many subscriptions
 * the organization holds (the query is not paged).
 */
const NO_REPOSITORY = '00000000-0000-0000-0000-000000000000';
/** Publisher inputs that identify the scope or are added by the service, not filters we asked for. */
const SCOPE_INPUTS = new Set(['projectId', 'repository', 'hostId', 'tfsSubscriptionId']);

/** The wire shape of a service hook subscription (the SDK ships no ServiceHooks types). */
interface Subscription {
  id: string;
  status?: string;
  eventType: string;
  publisherInputs?: Record<string, string>;
  consumerInputs?: Record<string, string>;
}

interface StatusCarrier {
  statusCode?: unknown;
  message?: string;
  responseHeaders?: Record<string, string | string[] | undefined>;
  rateLimit?: { retryAfter?: number };
}

/** typed-rest-client rejects with an Error carrying statusCode/responseHeaders; make it ours. */
function fromSdkError(error: unknown): unknown {
  const e = error as StatusCarrier;
  if (typeof e?.statusCode !== 'number') return error;
  const header = e.responseHeaders?.['retry-after'];
  const retryAfter = parseRetryAfter(Array.isArray(header) ? header[0] : header) ?? e.rateLimit?.retryAfter;
  return new ProviderHttpError('azure-devops', e.statusCode, e.message ?? `HTTP ${e.statusCode}`, retryAfter);
}

/** An SDK call, given up when the activity is cancelled (the SDK takes no abort signal; guardSdkClient closes its request). */
async function sdk<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await unlessCancelled(call());
  } catch (error) {
    throw fromSdkError(error);
  }
}

/** Runs `load` once; a failure is not remembered, so the next call tries again. */
function once<T>(load: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | undefined;
  return () => {
    pending ??= load().catch((error: unknown) => {
      pending = undefined;
      throw error;
    });
    return pending;
  };
}

/** The repository as it can be stored; undefined when its id cannot be (storableRepository). */
function toRepository(repo: GitRepository): ProviderRepository | undefined {
  const project = repo.project?.name;
  return storableRepository({
    externalId: repo.id!,
    fullName: `${project}/${repo.name}`,
    project,
    projectId: repo.project?.id,
    defaultBranch: repo.defaultBranch?.replace(/^refs\/heads\//, ''),
    webUrl: repo.webUrl,
  });
}

/** A string the answer gave, or undefined for any other value: nothing of a tenant-shaped structure is kept. */
const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);

/**
 * The hook as forgelink uses it, made only of strings copied out of the answer: a listing is held
 * across the attach's save call, and a subscription's inputs are the tenant's server's to shape
 * (`{"a":[[[…]]]}` kept by reference held its whole parse). Filters keep their string values only;
 * any other value is dropped (we only ever send strings, so none of ours is lost).
 */
function toHook(subscription: Subscription): ProviderHook {
  const filters: Record<string, string> = {};
  const inputs: unknown = subscription.publisherInputs;
  if (inputs && typeof inputs === 'object' && !Array.isArray(inputs)) {
    for (const [key, value] of Object.entries(inputs)) {
      if (!SCOPE_INPUTS.has(key) && typeof value === 'string' && value !== '') filters[key] = value;
    }
  }
  // Lists leave `status` out for enabled subscriptions; probation and any disabled state are unhealthy.
  const status = subscription.status === undefined ? 'enabled' : (text(subscription.status) ?? 'unknown');
  const eventType = text(subscription.eventType);
  return {
    id: text(subscription.id) ?? '',
    url: text((subscription.consumerInputs as { url?: unknown } | undefined)?.url) ?? '',
    events: eventType === undefined ? [] : [eventType],
    healthy: status === 'enabled',
    ...(status === 'enabled' ? {} : { disabledReason: `status ${status}` }),
    ...(Object.keys(filters).length > 0 ? { filters } : {}),
  };
}

/**
 * Azure DevOps (Services or Server) through a PAT. Identity, projects and repositories go through
 * azure-devops-node-api; service hook subscriptions through raw REST, since the SDK has no hooks client.
 * The SDK resolves 404 as null and drops continuation tokens, so projects are paged with $top/$skip.
 */
export function createAzureDevOpsAdapter(target: ProviderTarget, options: { outbound: Outbound; projectsPerPage?: number }): ProviderAdapter {
  const pat = target.secret;
  if (!pat) throw new Error('an Azure DevOps connection needs a personal access token');
  const organizationUrl = target.baseUrl.replace(/\/+$/, '');
  const projectsPerPage = options.projectsPerPage ?? DEFAULT_PROJECTS_PER_PAGE;
  const { outbound } = options;
  const organizationOrigin = new URL(organizationUrl).origin;
  const guarded = <T extends object>(client: T) => guardSdkClient(client, organizationUrl, outbound.agents, SDK_CALL_LIMITS);
  // Retries are off in every SDK client (guardSdkClient): the activity's retry policy decides,
  // honouring Retry-After. A redirect is an answer, never followed: the PAT would go wherever it
  // points. The PAT handler may not authenticate to another host (its default does).
  const webApi = guarded(
    new azdev.WebApi(organizationUrl, azdev.getPersonalAccessTokenHandler(pat, false), { socketTimeout: REQUEST_TIMEOUT_MS, keepAlive: true, allowRedirects: false }),
  );
  // The SDK makes a locations client of its own (connect's connectionData): it is guarded too.
  const getLocationsApi = webApi.getLocationsApi.bind(webApi);
  webApi.getLocationsApi = async (...args) => guarded(await getLocationsApi(...args));
  /**
   * The core and git clients are made at the organization's URL, not where its resource areas say
   * (the SDK's getCoreApi/getGitApi ask ResourceAreas first and build the client at the answer's
   * locationUrl): that answer is the tenant's server's, and it names the organization's *primary*
   * URL (Services: {org}.visualstudio.com for an organization made before 2018-09 and reached as
   * dev.azure.com/{org}, or the reverse; Server: its public access mapping), so following it sent
   * the PAT to another host, and refusing another origin refused real organizations reached by
   * their other URL. Azure DevOps serves organization-level REST at either URL; Server at the
   * collection URL it was reached on. One discovery call less, and the SDK's HTTP layer still
   * refuses any origin but the organization's (guardSdkClient).
   */
  const client = <T>(Api: new (baseUrl: string, handlers: IRequestHandler[], options?: IRequestOptions, userAgent?: string) => T) =>
    guarded(new Api(organizationUrl, [webApi.authHandler], webApi.options) as T & object);
  const coreApi = once<CoreApi>(async () => client(CoreApiClient));
  const gitApi = once<GitApi>(async () => {
    const git = client(GitApiClient);
    // The SDK learns the git area's routes with one OPTIONS request, but caches it only once answered:
    // resolving it here, once, keeps parallel first calls (the projects' fan-out) from each sending it.
    await sdk(() => git.vsoClient.beginGetLocation('git', GIT_REPOSITORIES_LOCATION_ID));
    return git;
  });
  const authorization = `Basic ${Buffer.from(`:${pat}`).toString('base64')}`;

  async function hooksRequest<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await outbound.fetch(`${organizationUrl}/_apis/hooks/${path}?api-version=${API_VERSION}`, {
      method,
      headers: {
        authorization,
        accept: 'application/json',
        // Without it a refused PAT gets a 203 sign-in page instead of a 401.
        'x-tfs-fedauthredirect': 'Suppress',
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      timeoutMs: REQUEST_TIMEOUT_MS,
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    let text = new TextDecoder().decode(bytes);
    let parsed: unknown;
    try {
      // Counted first: an answer too costly to parse is refused unparsed (AnswerTooCostlyError).
      parsed = text ? parseAnswer('azure-devops', new URL(organizationUrl).origin, bytes) : undefined;
    } catch (error) {
      // An error status wins over its body: one too costly to parse is left unparsed and the status
      // decides (a 429/503 stays throttled/unavailable and is retried), as the SDK's calls.
      if (refusedUnparsed(error) && response.ok) throw error;
      parsed = undefined;
      if (refusedUnparsed(error)) text = '';
    }
    if (!response.ok) {
      const message = (parsed as { message?: unknown } | undefined)?.message;
      throw new ProviderHttpError(
        'azure-devops',
        response.status,
        typeof message === 'string' ? messageExcerpt(message) : text.trim().slice(0, 500) || `HTTP ${response.status}`,
        parseRetryAfter(response.headers.get('retry-after')),
      );
    }
    if (response.status === 203 || (text && parsed === undefined)) {
      throw new ProviderHttpError('azure-devops', 401, 'Azure DevOps answered with a sign-in page: the PAT was not accepted');
    }
    return parsed as T;
  }

  /**
   * Our kind of webhook subscriptions scoped to one repository. Always filtered: query results are
   * not paged, and the organization's all can be more than an answer may hold (activities/outbound.ts).
   * The answer is the whole hook listing, so it is counted against a hook listing's budget
   * (HOOK_LISTING_CAPS, 16 MiB), not one answer's (40 MiB), as GitLab's and Bitbucket's pages are.
   */
  async function webhookSubscriptions(repositoryId: string): Promise<Subscription[]> {
    const query = () => hooksRequest<{ results?: Subscription[] }>('POST', 'subscriptionsquery', {
      publisherId: 'tfs',
      consumerId: 'webHooks',
      consumerActionId: 'httpRequest',
      publisherInputFilters: [{ conditions: [{ inputId: 'repository', operator: 'equals', inputValue: repositoryId, caseSensitive: false }] }],
    });
    const body = await withinListingBudget(listingBudget(HOOK_LISTING_CAPS.maxParseCost), query);
    return Array.isArray(body?.results) ? body.results : [];
  }

  function subscriptionBody(ref: RepositoryRef, spec: HookSpec) {
    if (!ref.projectId) throw new Error(`repository ${ref.fullName} has no Azure DevOps project id`);
    if (spec.events.length !== 1) throw new Error(`an Azure DevOps subscription carries exactly one event type, got ${spec.events.length}`);
    return {
      publisherId: 'tfs',
      eventType: spec.events[0],
      resourceVersion: '1.0',
      consumerId: 'webHooks',
      consumerActionId: 'httpRequest',
      publisherInputs: { ...spec.filters, projectId: ref.projectId, repository: ref.externalId },
      consumerInputs: {
        url: spec.url,
        ...(spec.basicAuthUser !== undefined ? { basicAuthUsername: spec.basicAuthUser } : {}),
        ...(spec.secret !== undefined ? { basicAuthPassword: spec.secret } : {}),
        resourceDetailsToSend: 'all',
        messagesToSend: 'none',
        detailedMessagesToSend: 'none',
      },
    };
  }

  /** The reason a refused permission check gives, or undefined when the step passed. */
  async function refusal(step: () => Promise<unknown>, reason: string): Promise<string | undefined> {
    try {
      await step();
      return undefined;
    } catch (error) {
      if (error instanceof ProviderHttpError && (error.status === 401 || error.status === 403)) return `${reason} (Azure DevOps said ${error.status}: ${error.message})`;
      throw error;
    }
  }

  return {
    provider: 'azure-devops',

    async validate(): Promise<ValidationOutcome> {
      let connection;
      try {
        connection = await sdk(() => webApi.connect());
      } catch (error) {
        if (error instanceof ProviderHttpError && (error.status === 401 || error.status === 403)) {
          return { ok: false, reason: `PAT rejected by Azure DevOps (${error.status}): ${error.message}` };
        }
        throw error;
      }
      // A 404 (unknown organization) or a sign-in page both resolve to null in the SDK.
      const user = connection?.authenticatedUser;
      if (!user?.id) return { ok: false, reason: `Azure DevOps did not identify the PAT's owner at ${organizationUrl}: check the organization URL and the token` };
      // Each step proves a permission with a small answer: validate runs on every connect and
      // rotation, and the organization's whole lists (repositories, subscriptions: both unpaged)
      // can be more than an answer may hold.
      let firstProject: string | undefined;
      const reason =
        (await refusal(async () => {
          const core = await coreApi();
          firstProject = (await sdk(() => core.getProjects(undefined, 1, 0)))?.[0]?.id;
        }, 'PAT cannot read projects: it needs the Project and Team (Read) scope')) ??
        (await refusal(async () => {
          const git = await gitApi();
          // One project's repositories; an organization without projects has no repository, and its list is empty.
          await sdk(() => git.getRepositories(firstProject));
        }, 'PAT cannot read repositories: it needs the Code (Read) scope')) ??
        (await refusal(
          () => webhookSubscriptions(NO_REPOSITORY),
          'PAT cannot manage service hook subscriptions: the owner must be Project Administrator or hold Edit subscriptions, and the PAT needs the Service Hooks (Read & write) scope',
        ));
      if (reason) return { ok: false, reason };
      return { ok: true, identity: { account: user.providerDisplayName ?? user.id, accountId: user.id } };
    },

    /**
     * Two kinds of page: a page of projects (cursor absent or `projects:<skip>`), whose projects
     * fan out, and one project's repositories (`repos:<projectId>`); the listing fetches the
     * projects' repositories in parallel.
     */
    async listRepositoriesPage({ cursor }): Promise<RepositoryPage> {
      const repos = cursor?.startsWith('repos:') ? cursor.slice('repos:'.length) : undefined;
      if (repos !== undefined) {
        if (!repos) throw new Error(`invalid Azure DevOps repository cursor ${cursor}`);
        const git = await gitApi();
        // A project deleted since its page was listed answers 404, which the SDK turns into null.
        const repositories = (await sdk(() => git.getRepositories(repos))) ?? [];
        return { ...storableRepositories(repositories.map(toRepository)), apiCalls: 1 };
      }
      const offset = cursor === undefined ? 0 : Number(cursor.replace(/^projects:/, ''));
      if (!Number.isInteger(offset) || offset < 0) throw new Error(`invalid Azure DevOps repository cursor ${cursor}`);
      const core = await coreApi();
      // One project beyond the batch tells whether another page exists (the SDK hides the continuation token).
      const projects = (await sdk(() => core.getProjects(undefined, projectsPerPage + 1, offset))) ?? [];
      const batch = projects.slice(0, projectsPerPage);
      return {
        repositories: [],
        fanOut: batch.map((project) => `repos:${project.id}`),
        ...(projects.length > projectsPerPage ? { nextCursor: `projects:${offset + projectsPerPage}` } : {}),
        apiCalls: 1,
      };
    },

    async getRepository(ref) {
      const git = await gitApi();
      const repo = await sdk(() => git.getRepository(ref.externalId, ref.projectId));
      return repo ? (toRepository(repo) ?? null) : null;
    },

    async listHooks(ref) {
      return (await webhookSubscriptions(ref.externalId)).map(toHook);
    },

    async createHook(ref, spec) {
      const body = await hooksRequest<Subscription>('POST', 'subscriptions', subscriptionBody(ref, spec));
      return toHook(body);
    },

    async updateHook(ref, hookId, spec) {
      const body = await hooksRequest<Subscription>('PUT', `subscriptions/${encodeURIComponent(hookId)}`, {
        ...subscriptionBody(ref, spec),
        id: hookId,
        // Replacing with status enabled is how a subscription on probation or disabled by the system comes back.
        status: 'enabled',
      });
      return toHook(body);
    },

    async deleteHook(_ref, hookId) {
      try {
        await hooksRequest('DELETE', `subscriptions/${encodeURIComponent(hookId)}`);
        return true;
      } catch (error) {
        if (error instanceof ProviderHttpError && error.status === 404) return false;
        throw error;
      }
    },
  };
}
