import { randomUUID } from 'node:crypto';
import { FakeHttpServer, type FakeHandler, type FakeRequest, type FakeResponse } from './base.ts';

/**
 * An Azure DevOps Services organization (`https://dev.azure.com/{org}`) on loopback, following
 * provider-contracts.md §4 and the §5 checklist: PAT Basic auth, the discovery calls that
 * azure-devops-node-api makes before each area, api-version negotiation, projects with
 * $top/$skip, repositories, and service hook subscriptions.
 */

export type SubscriptionStatus = 'enabled' | 'onProbation' | 'disabledByUser' | 'disabledBySystem' | 'disabledByInactiveIdentity';

export const SUPPORTED_EVENT_TYPES = ['git.push', 'git.pullrequest.created', 'git.pullrequest.updated', 'git.pullrequest.merged'] as const;
export const NOTIFICATION_TYPES = ['PushNotification', 'ReviewersUpdateNotification', 'StatusUpdateNotification', 'ReviewerVoteNotification'] as const;

/** A stored subscription, with the consumer inputs as given (the real basicAuthPassword). */
export interface StoredSubscription {
  id: string;
  status: SubscriptionStatus;
  publisherId: string;
  eventType: string;
  resourceVersion: string;
  consumerId: string;
  consumerActionId: string;
  publisherInputs: Record<string, string>;
  consumerInputs: Record<string, string>;
  probationRetries: number;
  lastProbationRetryDate?: string;
  createdBy: { id: string };
  createdDate: string;
  modifiedBy: { id: string };
  modifiedDate: string;
}

export interface FakeAzureDevOps {
  /** The organization URL, e.g. http://127.0.0.1:PORT/myorg. */
  url: string;
  server: FakeHttpServer;
  addPat(pat: { pat: string; displayName: string; canManageHooks?: boolean; canReadCode?: boolean }): { id: string };
  addProject(project: { id?: string; name: string }): { id: string; name: string };
  addRepository(repo: { projectName: string; name: string; id?: string; defaultBranch?: string }): { id: string; name: string; projectId: string };
  removeRepository(id: string): void;
  renameRepository(id: string, newName: string): void;
  subscriptions(): StoredSubscription[];
  /**
   * Stores a subscription as POST subscriptions would (same checks; throws on a refusal), without a
   * request: for organizations holding thousands.
   */
  addSubscription(body: unknown): { id: string };
  setSubscriptionStatus(id: string, status: SubscriptionStatus): void;
  deleteSubscriptionByHand(id: string): void;
  /**
   * Fault mode: the projects listing never ends. Each $top/$skip page is full (the real projects,
   * then made-up ones, which have no repositories: 404) with a continuation token. false turns it off.
   */
  listEndlessly(on: boolean): void;
  /** The `locationUrl` ResourceAreas names for an area (the organization's URL unless set): a server naming another host. */
  locateArea(area: 'core' | 'git', locationUrl: string): void;
  close(): Promise<void>;
}

/** The API version this fake serves (a Services organization answers up to 7.1 GA here). */
const MAX_API_VERSION = 7.1;
const CONFIDENTIAL_CONSUMER_INPUTS = ['basicAuthPassword'];
const MASK = '********';

/** Location GUIDs the Node SDK looks up (provider-contracts.md §4.6). */
const LOCATIONS = {
  Location: [
    { id: '00d9565f-ed9c-4a06-9a50-00e7896ccab4', resourceName: 'ConnectionData', routeTemplate: '_apis/{resource}', resourceVersion: 1 },
    { id: 'e81700f7-3be2-46de-8624-2eb35882fcaa', resourceName: 'ResourceAreas', routeTemplate: '_apis/{resource}/{areaId}', resourceVersion: 1 },
  ],
  core: [{ id: '603fe2ac-9723-48b9-88ad-09305aa6c6e1', resourceName: 'projects', routeTemplate: '_apis/{resource}/{*projectId}', resourceVersion: 4 }],
  git: [{ id: '225f7195-f9c7-4d14-ab28-a83f7ff77e1f', resourceName: 'repositories', routeTemplate: '{project}/_apis/{area}/{resource}/{repositoryId}', resourceVersion: 1 }],
};
const RESOURCE_AREAS = [
  { id: '79134c72-4a58-4b42-976c-04e7115f32bf', name: 'core' },
  { id: '4e080c62-fa21-4fbc-8fef-2a10a2b38049', name: 'git' },
];

/** The VSS error envelope every Azure DevOps REST error uses. */
export function vssError(status: number, message: string, typeKey: string, headers?: Record<string, string>): FakeResponse {
  return {
    status,
    headers,
    body: { $id: '1', innerException: null, message, typeName: `Microsoft.VisualStudio.Services.WebApi.${typeKey}, Microsoft.VisualStudio.Services.WebApi`, typeKey, errorCode: 0, eventId: 3000 },
  };
}

/** A blocked request (rate limits doc): for `server.failNext(operation, n, tooManyRequests(30))`. */
export function tooManyRequests(retryAfterSeconds: number): FakeResponse {
  return vssError(
    429,
    'TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource \'Global\' in namespace \'User\'.',
    'RequestBlockedException',
    { 'Retry-After': String(retryAfterSeconds), 'X-RateLimit-Resource': 'Global', 'X-RateLimit-Remaining': '0' },
  );
}

const SUBSCRIPTION_STATUSES: readonly SubscriptionStatus[] = ['enabled', 'onProbation', 'disabledByUser', 'disabledBySystem', 'disabledByInactiveIdentity'];

/** What a create or replace body carries once validated. */
type SubscriptionInput = Pick<StoredSubscription, 'publisherId' | 'eventType' | 'resourceVersion' | 'consumerId' | 'consumerActionId' | 'publisherInputs' | 'consumerInputs'> & {
  status?: SubscriptionStatus;
};

interface Pat {
  token: string;
  id: string;
  displayName: string;
  canManageHooks: boolean;
  canReadCode: boolean;
}
interface Project {
  id: string;
  name: string;
  lastUpdateTime: string;
}
interface Repository {
  id: string;
  name: string;
  projectId: string;
  defaultBranch?: string;
}

/** api-version from the query or the Accept header; undefined when absent. */
function requestedApiVersion(req: FakeRequest): string | undefined {
  const fromQuery = req.query.get('api-version');
  if (fromQuery) return fromQuery;
  return /api-version=([^;,\s]+)/i.exec(String(req.headers.accept ?? ''))?.[1];
}

function versionProblem(req: FakeRequest): FakeResponse | undefined {
  const version = requestedApiVersion(req);
  if (!version) {
    return vssError(
      400,
      `No api-version was supplied for the "${req.method}" request. The version must be supplied either as part of the Accept header (e.g. "application/json; api-version=1.0") or as a query parameter (e.g. '?api-version=1.0').`,
      'VssVersionNotSpecifiedException',
    );
  }
  const match = /^(\d+\.\d+)(-preview(\.\d+)?)?$/.exec(version);
  if (!match) return vssError(400, `The requested version "${version}" of the resource is not valid.`, 'VssInvalidApiVersionException');
  if (Number(match[1]) > MAX_API_VERSION) {
    return vssError(
      400,
      `The requested REST API version of ${match[1]} is out of range for this server. The latest REST API version for this server is ${MAX_API_VERSION}.`,
      'VssVersionOutOfRangeException',
    );
  }
  return undefined;
}

export async function startFakeAzureDevOps(options: { organization?: string } = {}): Promise<FakeAzureDevOps> {
  const organization = options.organization ?? 'myorg';
  const hostId = randomUUID();
  const pats = new Map<string, Pat>();
  const projects: Project[] = [];
  let endless = false;
  const areaLocations = new Map<string, string>();
  const repositories = new Map<string, Repository>();
  const subscriptions = new Map<string, StoredSubscription>();

  const server = new FakeHttpServer(() => vssError(404, 'The resource cannot be found.', 'ResourceNotFoundException'));
  await server.start();
  const orgUrl = `${server.url}/${organization}`;
  const prefix = `/${organization}`;

  const projectByNameOrId = (key: string) => projects.find((p) => p.id === key.toLowerCase() || p.name.toLowerCase() === key.toLowerCase());
  const projectOf = (repo: Repository) => projects.find((p) => p.id === repo.projectId)!;

  /** The PAT of the request, or the refusal Azure DevOps gives without one. */
  function authenticate(req: FakeRequest): Pat | FakeResponse {
    const header = String(req.headers.authorization ?? '');
    const decoded = header.startsWith('Basic ') ? Buffer.from(header.slice(6), 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    const pat = colon >= 0 ? pats.get(decoded.slice(colon + 1)) : undefined;
    if (pat) return pat;
    // Without the Suppress header a browser-style client gets the sign-in page with 203.
    if (String(req.headers['x-tfs-fedauthredirect'] ?? '').toLowerCase() !== 'suppress') {
      return { status: 203, headers: { 'content-type': 'text/html; charset=utf-8' }, text: '<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head><body></body></html>' };
    }
    return vssError(
      401,
      'TF400813: The user \'\' is not authorized to access this resource.',
      'UnauthorizedRequestException',
      { 'WWW-Authenticate': 'Basic realm="https://tfsprodcus.app.visualstudio.com/"' },
    );
  }

  /** Wraps a handler with authentication and (unless exempt) api-version checks. */
  function api(handler: (req: FakeRequest, pat: Pat) => FakeResponse, { versioned = true } = {}): FakeHandler {
    return (req) => {
      const pat = authenticate(req);
      if (!('token' in pat)) return pat;
      if (versioned) {
        const problem = versionProblem(req);
        if (problem) return problem;
      }
      return handler(req, pat);
    };
  }

  const codeRead = (handler: (req: FakeRequest, pat: Pat) => FakeResponse) =>
    api((req, pat) =>
      pat.canReadCode ? handler(req, pat) : vssError(401, `TF400813: The user '${pat.id}' is not authorized to access this resource.`, 'UnauthorizedRequestException'),
    );

  const hooksAdmin = (handler: (req: FakeRequest, pat: Pat) => FakeResponse) =>
    api((req, pat) =>
      pat.canManageHooks
        ? handler(req, pat)
        : vssError(403, `Access denied. ${pat.displayName} does not have permission to view or edit service hook subscriptions.`, 'UnauthorizedRequestException'),
    );

  function projectJson(p: Project) {
    return { id: p.id, name: p.name, description: '', url: `${orgUrl}/_apis/projects/${p.id}`, state: 'wellFormed', revision: 1, visibility: 'private', lastUpdateTime: p.lastUpdateTime };
  }

  function repositoryJson(r: Repository) {
    const project = projectOf(r);
    const webUrl = `${orgUrl}/${encodeURIComponent(project.name)}/_git/${encodeURIComponent(r.name)}`;
    return {
      id: r.id,
      name: r.name,
      url: `${orgUrl}/${project.id}/_apis/git/repositories/${r.id}`,
      project: projectJson(project),
      ...(r.defaultBranch ? { defaultBranch: r.defaultBranch } : {}),
      size: 0,
      remoteUrl: webUrl,
      sshUrl: `git@ssh.dev.azure.com:v3/${organization}/${encodeURIComponent(project.name)}/${encodeURIComponent(r.name)}`,
      webUrl,
      isDisabled: false,
      isInMaintenance: false,
    };
  }

  /** The wire form: confidential consumer inputs masked; `status` left out of lists when enabled, as Microsoft's examples do. */
  function subscriptionJson(s: StoredSubscription, { inList = false } = {}) {
    const consumerInputs = { ...s.consumerInputs };
    for (const key of CONFIDENTIAL_CONSUMER_INPUTS) if (key in consumerInputs) consumerInputs[key] = MASK;
    const { status, ...rest } = s;
    return {
      ...rest,
      ...(inList && status === 'enabled' ? {} : { status }),
      url: `${orgUrl}/_apis/hooks/subscriptions/${s.id}`,
      eventDescription: s.publisherInputs.repository ? `Repository ${s.publisherInputs.repository}` : 'Any repository',
      actionDescription: `To host ${new URL(s.consumerInputs.url!).host}`,
      publisherInputs: { ...s.publisherInputs },
      consumerInputs,
    };
  }

  const badRequest = (message: string) => vssError(400, message, 'ArgumentException');

  /** Checks a subscription body the way the service does; returns the refusal or the parsed parts. */
  function parseSubscription(body: unknown): FakeResponse | SubscriptionInput {
    if (!body || typeof body !== 'object') return badRequest('Value cannot be null.\r\nParameter name: subscription');
    const b = body as Record<string, unknown>;
    if (b.publisherId !== 'tfs') return badRequest(`Publisher "${String(b.publisherId)}" does not exist.`);
    if (b.consumerId !== 'webHooks') return badRequest(`Consumer "${String(b.consumerId)}" does not exist.`);
    if (b.consumerActionId !== 'httpRequest') return badRequest(`Consumer action "${String(b.consumerActionId)}" does not exist for consumer "webHooks".`);
    if (!SUPPORTED_EVENT_TYPES.includes(b.eventType as (typeof SUPPORTED_EVENT_TYPES)[number])) return badRequest(`Event type "${String(b.eventType)}" is not supported by publisher "tfs".`);
    const publisherInputs = stringRecord(b.publisherInputs);
    const consumerInputs = stringRecord(b.consumerInputs);
    if (!publisherInputs || !consumerInputs) return badRequest('publisherInputs and consumerInputs must be objects of strings.');
    const project = projects.find((p) => p.id === publisherInputs.projectId?.toLowerCase());
    if (!project) return badRequest(`Invalid value "${publisherInputs.projectId ?? ''}" for input "projectId": not a project of this organization.`);
    const repositoryId = publisherInputs.repository;
    if (repositoryId && repositories.get(repositoryId.toLowerCase())?.projectId !== project.id) {
      return badRequest(`Invalid value "${repositoryId}" for input "repository": not a repository of project ${project.name}.`);
    }
    const notificationType = publisherInputs.notificationType;
    if (notificationType && !NOTIFICATION_TYPES.includes(notificationType as (typeof NOTIFICATION_TYPES)[number])) {
      return badRequest(`Invalid value "${notificationType}" for input "notificationType".`);
    }
    const url = consumerInputs.url;
    if (!url || !/^https?:\/\/[^/]+/i.test(url)) return badRequest('Input "url" is required and must be an absolute http(s) URL.');
    const status = b.status as SubscriptionStatus | undefined;
    if (status !== undefined && !SUBSCRIPTION_STATUSES.includes(status)) return badRequest(`Invalid subscription status "${String(status)}".`);
    return {
      publisherId: 'tfs',
      eventType: b.eventType as string,
      resourceVersion: typeof b.resourceVersion === 'string' ? b.resourceVersion : '1.0',
      consumerId: 'webHooks',
      consumerActionId: 'httpRequest',
      publisherInputs,
      consumerInputs,
      ...(status ? { status } : {}),
    };
  }

  function matchesFilters(inputs: Record<string, string>, filters: unknown): boolean {
    if (!Array.isArray(filters) || filters.length === 0) return true;
    // Filters are alternatives; the conditions inside one filter must all hold.
    return filters.some((filter: { conditions?: Array<{ inputId: string; operator?: string; inputValue?: string; caseSensitive?: boolean }> }) =>
      (filter.conditions ?? []).every((c) => {
        const actual = inputs[c.inputId] ?? '';
        const expected = c.inputValue ?? '';
        const equal = c.caseSensitive ? actual === expected : actual.toLowerCase() === expected.toLowerCase();
        return c.operator === 'notEquals' ? !equal : equal;
      }),
    );
  }

  function storeSubscription(parsed: SubscriptionInput, creatorId: string): StoredSubscription {
    const id = randomUUID();
    const now = new Date().toISOString();
    const stored: StoredSubscription = {
      ...parsed,
      id,
      status: 'enabled',
      publisherInputs: { ...parsed.publisherInputs, hostId, tfsSubscriptionId: randomUUID() },
      probationRetries: 0,
      createdBy: { id: creatorId },
      createdDate: now,
      modifiedBy: { id: creatorId },
      modifiedDate: now,
    };
    subscriptions.set(id, stored);
    return stored;
  }

  const subscriptionNotFound = (id: string) => vssError(404, `Subscription ${id} does not exist.`, 'SubscriptionNotFoundException');

  server
    .route('OPTIONS', `${prefix}/_apis/Location`, 'discoverLocation', () => locations('Location'))
    .route('OPTIONS', `${prefix}/_apis/core`, 'discoverCore', () => locations('core'))
    .route('OPTIONS', `${prefix}/_apis/git`, 'discoverGit', () => locations('git'))
    .route('GET', `${prefix}/_apis/ResourceAreas`, 'resourceAreas', api(() => ({
      status: 200,
      body: { count: RESOURCE_AREAS.length, value: RESOURCE_AREAS.map((a) => ({ ...a, locationUrl: areaLocations.get(a.name) ?? `${orgUrl}/` })) },
    })))
    // webApi.connect() sends no api-version; the service answers anyway.
    .route('GET', `${prefix}/_apis/connectionData`, 'connectionData', api((_req, pat) => {
      const user = { id: pat.id, descriptor: `Microsoft.IdentityModel.Claims.ClaimsIdentity;${pat.id}`, subjectDescriptor: `aad.${pat.id}`, providerDisplayName: pat.displayName, isActive: true, properties: {}, resourceVersion: 2, metaTypeId: 0 };
      return {
        status: 200,
        body: { authenticatedUser: user, authorizedUser: user, instanceId: hostId, deploymentId: hostId, deploymentType: 'hosted', locationServiceData: { serviceOwner: '00025394-6065-48ca-87d9-7f5672854ef7', defaultAccessMappingMoniker: 'PublicAccessMapping', lastChangeId: 1, lastChangeId64: 1 } },
      };
    }, { versioned: false }))
    .route('GET', `${prefix}/_apis/projects`, 'listProjects', api((req) => {
      const top = Math.max(0, Number(req.query.get('$top') ?? 100));
      const skip = Math.max(0, Number(req.query.get('$skip') ?? req.query.get('continuationToken') ?? 0));
      if (endless) {
        const madeUp = (index: number): Project => ({ id: `00000000-0000-4000-8000-${String(index).padStart(12, '0')}`, name: `endless-${index}`, lastUpdateTime: new Date(0).toISOString() });
        const full = Array.from({ length: top }, (_, i) => projects[skip + i] ?? madeUp(skip + i));
        return { status: 200, headers: { 'x-ms-continuationtoken': String(skip + top) }, body: { count: full.length, value: full.map(projectJson) } };
      }
      const page = projects.slice(skip, skip + top);
      const headers: Record<string, string> = skip + page.length < projects.length ? { 'x-ms-continuationtoken': String(skip + page.length) } : {};
      return { status: 200, headers, body: { count: page.length, value: page.map(projectJson) } };
    }))
    .route('GET', `${prefix}/_apis/projects/:projectId`, 'getProject', api((req) => {
      const project = projectByNameOrId(req.params.projectId!);
      return project ? { status: 200, body: projectJson(project) } : projectNotFound(req.params.projectId!);
    }));

  function locations(area: keyof typeof LOCATIONS): FakeResponse {
    const value = LOCATIONS[area].map((l) => ({ ...l, area, minVersion: '1.0', maxVersion: String(MAX_API_VERSION), releasedVersion: String(MAX_API_VERSION) }));
    return { status: 200, body: { count: value.length, value } };
  }

  function projectNotFound(key: string): FakeResponse {
    return vssError(404, `TF200016: The following project does not exist: ${key}. Verify that the name of the project is correct and that the project exists on the specified Azure DevOps Server.`, 'ProjectDoesNotExistWithNameException');
  }

  const repositoryNotFound = (key: string) =>
    vssError(404, `TF401019: The Git repository with name or identifier ${key} does not exist or you do not have permissions for the operation you are attempting.`, 'GitRepositoryNotFoundException');

  const listRepositories = codeRead((req) => {
    const projectKey = req.params.project;
    const project = projectKey === undefined ? undefined : projectByNameOrId(projectKey);
    if (projectKey !== undefined && !project) return projectNotFound(projectKey);
    const value = [...repositories.values()].filter((r) => !project || r.projectId === project.id).map(repositoryJson);
    return { status: 200, body: { count: value.length, value } };
  });
  const getRepository = codeRead((req) => {
    const key = req.params.repositoryId!;
    const projectKey = req.params.project;
    const project = projectKey === undefined ? undefined : projectByNameOrId(projectKey);
    if (projectKey !== undefined && !project) return projectNotFound(projectKey);
    // Names are unique only inside a project, so a name needs the project; ids work anywhere.
    const repo =
      repositories.get(key.toLowerCase()) ?? (project ? [...repositories.values()].find((r) => r.projectId === project.id && r.name.toLowerCase() === key.toLowerCase()) : undefined);
    if (!repo || (project && repo.projectId !== project.id)) return repositoryNotFound(key);
    return { status: 200, body: repositoryJson(repo) };
  });

  server
    .route('GET', `${prefix}/_apis/git/repositories`, 'listRepositories', listRepositories)
    .route('GET', `${prefix}/:project/_apis/git/repositories`, 'listRepositories', listRepositories)
    .route('GET', `${prefix}/_apis/git/repositories/:repositoryId`, 'getRepository', getRepository)
    .route('GET', `${prefix}/:project/_apis/git/repositories/:repositoryId`, 'getRepository', getRepository)
    .route('GET', `${prefix}/_apis/hooks/subscriptions`, 'listSubscriptions', hooksAdmin((req) => {
      const value = [...subscriptions.values()]
        .filter((s) => ['publisherId', 'eventType', 'consumerId', 'consumerActionId'].every((k) => !req.query.get(k) || req.query.get(k) === s[k as keyof StoredSubscription]))
        .map((s) => subscriptionJson(s, { inList: true }));
      return { status: 200, body: { count: value.length, value } };
    }))
    .route('GET', `${prefix}/_apis/hooks/subscriptions/:id`, 'getSubscription', hooksAdmin((req) => {
      const stored = subscriptions.get(req.params.id!.toLowerCase());
      return stored ? { status: 200, body: subscriptionJson(stored) } : subscriptionNotFound(req.params.id!);
    }))
    .route('POST', `${prefix}/_apis/hooks/subscriptions`, 'createSubscription', hooksAdmin((req, pat) => {
      const parsed = parseSubscription(req.body);
      if (isResponse(parsed)) return parsed;
      return { status: 200, body: subscriptionJson(storeSubscription(parsed, pat.id)) };
    }))
    .route('PUT', `${prefix}/_apis/hooks/subscriptions/:id`, 'updateSubscription', hooksAdmin((req, pat) => {
      const existing = subscriptions.get(req.params.id!.toLowerCase());
      if (!existing) return subscriptionNotFound(req.params.id!);
      const parsed = parseSubscription(req.body);
      if (isResponse(parsed)) return parsed;
      const consumerInputs = { ...parsed.consumerInputs };
      // A client that round-trips the masked value keeps the stored secret, as the web UI does.
      for (const key of CONFIDENTIAL_CONSUMER_INPUTS) if (consumerInputs[key] === MASK && existing.consumerInputs[key] !== undefined) consumerInputs[key] = existing.consumerInputs[key]!;
      const status = parsed.status ?? existing.status;
      const updated: StoredSubscription = {
        ...existing,
        ...parsed,
        status,
        consumerInputs,
        publisherInputs: { ...parsed.publisherInputs, hostId, tfsSubscriptionId: existing.publisherInputs.tfsSubscriptionId! },
        probationRetries: status === 'enabled' ? 0 : existing.probationRetries,
        modifiedBy: { id: pat.id },
        modifiedDate: new Date().toISOString(),
      };
      subscriptions.set(existing.id, updated);
      return { status: 200, body: subscriptionJson(updated) };
    }))
    .route('DELETE', `${prefix}/_apis/hooks/subscriptions/:id`, 'deleteSubscription', hooksAdmin((req) =>
      subscriptions.delete(req.params.id!.toLowerCase()) ? { status: 204 } : subscriptionNotFound(req.params.id!),
    ))
    .route('POST', `${prefix}/_apis/hooks/subscriptionsquery`, 'querySubscriptions', hooksAdmin((req) => {
      const query = (req.body ?? {}) as Record<string, unknown>;
      const results = [...subscriptions.values()]
        .filter((s) => ['publisherId', 'eventType', 'consumerId', 'consumerActionId'].every((k) => !query[k] || query[k] === s[k as keyof StoredSubscription]))
        .filter((s) => matchesFilters(s.publisherInputs, query.publisherInputFilters) && matchesFilters(s.consumerInputs, query.consumerInputFilters))
        .map((s) => subscriptionJson(s, { inList: true }));
      return { status: 200, body: { ...query, results } };
    }));

  function requireSubscription(id: string): StoredSubscription {
    const stored = subscriptions.get(id.toLowerCase());
    if (!stored) throw new Error(`no subscription ${id}`);
    return stored;
  }

  return {
    url: orgUrl,
    server,
    listEndlessly(on) {
      endless = on;
    },
    locateArea(area, locationUrl) {
      areaLocations.set(area, locationUrl);
    },
    addPat({ pat, displayName, canManageHooks = true, canReadCode = true }) {
      const id = randomUUID();
      pats.set(pat, { token: pat, id, displayName, canManageHooks, canReadCode });
      return { id };
    },
    addProject({ id = randomUUID(), name }) {
      projects.push({ id: id.toLowerCase(), name, lastUpdateTime: new Date().toISOString() });
      return { id: id.toLowerCase(), name };
    },
    addRepository({ projectName, name, id = randomUUID(), defaultBranch }) {
      const project = projectByNameOrId(projectName);
      if (!project) throw new Error(`no project ${projectName}`);
      const repo: Repository = { id: id.toLowerCase(), name, projectId: project.id, ...(defaultBranch ? { defaultBranch } : {}) };
      repositories.set(repo.id, repo);
      return { id: repo.id, name, projectId: project.id };
    },
    removeRepository(id) {
      repositories.delete(id.toLowerCase());
    },
    renameRepository(id, newName) {
      const repo = repositories.get(id.toLowerCase());
      if (!repo) throw new Error(`no repository ${id}`);
      repo.name = newName;
    },
    subscriptions() {
      return [...subscriptions.values()].map((s) => structuredClone(s));
    },
    addSubscription(body) {
      const parsed = parseSubscription(body);
      if (isResponse(parsed)) throw new Error(`subscription refused: ${JSON.stringify(parsed.body)}`);
      return { id: storeSubscription(parsed, hostId).id };
    },
    setSubscriptionStatus(id, status) {
      const stored = requireSubscription(id);
      stored.status = status;
      if (status === 'onProbation') {
        stored.probationRetries += 1;
        stored.lastProbationRetryDate = new Date().toISOString();
      }
    },
    deleteSubscriptionByHand(id) {
      subscriptions.delete(requireSubscription(id).id);
    },
    close: () => server.close(),
  };
}

function isResponse(value: object): value is FakeResponse {
  return typeof (value as { status?: unknown }).status === 'number';
}

function stringRecord(value: unknown): Record<string, string> | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const entries = Object.entries(value);
  return entries.every(([, v]) => typeof v === 'string') ? Object.fromEntries(entries) as Record<string, string> : undefined;
}

/**
 * Fills the organization as a large customer's looks: `projects` projects of `repositoriesPerProject`
 * repositories each, and `subscriptions` webhook subscriptions as forgelink's attaches make them
 * (three event types a repository, the first repositories first). The organization's whole lists are
 * then more than one answer may hold (8 MiB, activities/outbound.ts) when large enough: ~0.75 KB a
 * repository and ~1.1 KB a subscription in this fake's answers.
 */
export function fillLargeOrganization(fake: FakeAzureDevOps, sizes: { projects: number; repositoriesPerProject: number; subscriptions: number }): void {
  const events = ['git.push', 'git.pullrequest.created', 'git.pullrequest.updated'];
  const repos: Array<{ id: string; projectId: string }> = [];
  for (let p = 0; p < sizes.projects; p++) {
    const project = fake.addProject({ name: `project-${p}` });
    for (let r = 0; r < sizes.repositoriesPerProject; r++) repos.push(fake.addRepository({ projectName: project.name, name: `repository-${r}`, defaultBranch: 'refs/heads/main' }));
  }
  for (let i = 0; i < sizes.subscriptions; i++) {
    const repo = repos[Math.floor(i / events.length) % repos.length]!;
    fake.addSubscription({
      publisherId: 'tfs',
      eventType: events[i % events.length],
      resourceVersion: '1.0',
      consumerId: 'webHooks',
      consumerActionId: 'httpRequest',
      publisherInputs: { projectId: repo.projectId, repository: repo.id, branch: '', pushedBy: '' },
      consumerInputs: {
        url: 'https://forgelink.example.com/api/events-handler/v1/events/azure-devops?c=11111111-2222-3333-4444-555555555555',
        basicAuthUsername: 'forgelink-11111111',
        basicAuthPassword: 'not-a-real-secret',
        resourceDetailsToSend: 'all',
        messagesToSend: 'none',
        detailedMessagesToSend: 'none',
      },
    });
  }
}
