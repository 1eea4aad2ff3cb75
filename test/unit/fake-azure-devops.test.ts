import * as azdev from 'azure-devops-node-api';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startFakeAzureDevOps, tooManyRequests, vssError, type FakeAzureDevOps } from '../fakes/azure-devops.ts';

const PAT = 'pat-1234567890abcdef';

let fake: FakeAzureDevOps;
let project: { id: string; name: string };
let repo: { id: string };

beforeEach(async () => {
  fake = await startFakeAzureDevOps({ organization: 'contoso' });
  fake.addPat({ pat: PAT, displayName: 'Ada Lovelace' });
  project = fake.addProject({ name: 'Alpha' });
  repo = fake.addRepository({ projectName: 'Alpha', name: 'api', defaultBranch: 'refs/heads/main' });
});

afterEach(async () => {
  await fake.close();
});

const sdkClient = (pat = PAT) => new azdev.WebApi(fake.url, azdev.getPersonalAccessTokenHandler(pat));

/** Raw REST as the adapter's hooks client does it. */
async function rest(method: string, path: string, body?: unknown, { pat = PAT, version = '7.1', suppress = true } = {}) {
  const url = new URL(`${fake.url}/_apis/${path}`);
  if (version) url.searchParams.set('api-version', version);
  const response = await fetch(url, {
    method,
    headers: {
      authorization: `Basic ${Buffer.from(`:${pat}`).toString('base64')}`,
      ...(suppress ? { 'x-tfs-fedauthredirect': 'Suppress' } : {}),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, json, text };
}

function subscription(overrides: Record<string, unknown> = {}, publisherInputs: Record<string, string> = {}) {
  return {
    publisherId: 'tfs',
    eventType: 'git.push',
    resourceVersion: '1.0',
    consumerId: 'webHooks',
    consumerActionId: 'httpRequest',
    publisherInputs: { projectId: project.id, repository: repo.id, ...publisherInputs },
    consumerInputs: { url: 'https://forgelink.example/api/events-handler/v1/events/azure-devops', basicAuthUsername: 'ado', basicAuthPassword: 's3cret' },
    ...overrides,
  };
}

describe('fake Azure DevOps through azure-devops-node-api', () => {
  it('serves the discovery calls and negotiates api-version 7.1 before the real call', async () => {
    const core = await sdkClient().getCoreApi();
    const projects = await core.getProjects();
    expect(projects.map((p) => p.name)).toEqual(['Alpha']);
    expect(fake.server.calls.map((c) => `${c.method} ${c.operation} ${c.status}`)).toEqual([
      'OPTIONS discoverLocation 200',
      'GET resourceAreas 200',
      'OPTIONS discoverCore 200',
      'GET listProjects 200',
    ]);
    // The SDK asks for 7.2-preview; the fake refuses anything above 7.1, so the success above proves the fallback.
    expect((await rest('GET', 'projects', undefined, { version: '7.2-preview.4' })).json.typeKey).toBe('VssVersionOutOfRangeException');
    const missing = await rest('GET', 'projects', undefined, { version: '' });
    expect(missing.status).toBe(400);
    expect(missing.json.message).toMatch(/No api-version was supplied/);
  });

  it('answers connectionData with the PAT owner', async () => {
    const connection = await sdkClient().connect();
    expect(connection.authenticatedUser?.providerDisplayName).toBe('Ada Lovelace');
    expect(connection.authenticatedUser?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(connection.deploymentType).toBe('hosted');
  });

  it('refuses a bad PAT with 401 and the VSS envelope when the SDK sends Suppress, 203 HTML otherwise', async () => {
    const error = await sdkClient('wrong').connect().then(
      () => undefined,
      (e: unknown) => e as { statusCode: number; message: string; result: { typeKey: string } },
    );
    expect(error?.statusCode).toBe(401);
    expect(error?.message).toMatch(/^TF400813/);
    expect(error?.result.typeKey).toBe('UnauthorizedRequestException');
    const signIn = await rest('GET', 'projects', undefined, { pat: 'wrong', suppress: false });
    expect(signIn.status).toBe(203);
    expect(signIn.headers.get('content-type')).toMatch(/text\/html/);
    expect(signIn.text).toMatch(/Sign In/);
  });

  it('pages projects with $top/$skip and a continuation token the SDK does not surface', async () => {
    fake.addProject({ name: 'Beta' });
    fake.addProject({ name: 'Gamma' });
    const core = await sdkClient().getCoreApi();
    expect((await core.getProjects(undefined, 2, 0)).map((p) => p.name)).toEqual(['Alpha', 'Beta']);
    expect((await core.getProjects(undefined, 2, 2)).map((p) => p.name)).toEqual(['Gamma']);
    const first = await rest('GET', 'projects?$top=2');
    expect(first.headers.get('x-ms-continuationtoken')).toBe('2');
    expect(first.json.count).toBe(2);
    const last = await rest('GET', 'projects?$top=2&continuationToken=2');
    expect(last.json.value.map((p: { name: string }) => p.name)).toEqual(['Gamma']);
    expect(last.headers.get('x-ms-continuationtoken')).toBeNull();
  });

  it('lists repositories org-wide and per project (by name or id), and resolves unknown ones to null', async () => {
    fake.addProject({ name: 'Beta' });
    const other = fake.addRepository({ projectName: 'Beta', name: 'web' });
    const git = await sdkClient().getGitApi();
    expect((await git.getRepositories()).map((r) => r.name).sort()).toEqual(['api', 'web']);
    expect((await git.getRepositories('Beta')).map((r) => r.id)).toEqual([other.id]);
    expect((await git.getRepositories(project.id)).map((r) => r.id)).toEqual([repo.id]);
    const one = await git.getRepository(repo.id, project.id);
    expect(one).toMatchObject({ name: 'api', defaultBranch: 'refs/heads/main', project: { id: project.id, name: 'Alpha' } });
    expect(one.webUrl).toBe(`${fake.url}/Alpha/_git/api`);
    // The SDK resolves every 404 to null instead of throwing.
    expect(await git.getRepositories('Nope')).toBeNull();
    fake.renameRepository(repo.id, 'api-v2');
    expect((await git.getRepository(repo.id)).name).toBe('api-v2');
    fake.removeRepository(repo.id);
    expect(await git.getRepository(repo.id)).toBeNull();
    expect(fake.server.calls.at(-1)).toMatchObject({ operation: 'getRepository', status: 404 });
  });

  it('refuses repositories to a PAT without code read', async () => {
    fake.addPat({ pat: 'no-code', displayName: 'Bob', canReadCode: false });
    const git = await sdkClient('no-code').getGitApi();
    await expect(git.getRepositories()).rejects.toMatchObject({ statusCode: 401 });
  });
});

describe('fake Azure DevOps service hook subscriptions', () => {
  it('creates, reads, lists and deletes a subscription, masking the basic-auth password', async () => {
    const created = await rest('POST', 'hooks/subscriptions', subscription());
    expect(created.status).toBe(200);
    const id = created.json.id as string;
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(created.json.status).toBe('enabled');
    expect(created.json.publisherInputs).toMatchObject({ projectId: project.id, repository: repo.id, hostId: expect.any(String), tfsSubscriptionId: expect.any(String) });
    expect(created.json.consumerInputs).toMatchObject({ basicAuthUsername: 'ado', basicAuthPassword: '********' });
    expect(fake.subscriptions()[0]!.consumerInputs.basicAuthPassword).toBe('s3cret');

    expect((await rest('GET', `hooks/subscriptions/${id}`)).json.consumerInputs.basicAuthPassword).toBe('********');
    const list = await rest('GET', 'hooks/subscriptions?publisherId=tfs');
    expect(list.json.count).toBe(1);
    // Lists leave status out for enabled subscriptions, as Microsoft's examples do.
    expect(list.json.value[0]).not.toHaveProperty('status');
    expect(JSON.stringify(list.json)).not.toContain('s3cret');

    expect((await rest('DELETE', `hooks/subscriptions/${id}`)).status).toBe(204);
    expect((await rest('GET', `hooks/subscriptions/${id}`)).status).toBe(404);
    expect((await rest('DELETE', `hooks/subscriptions/${id}`)).status).toBe(404);
  });

  it('rejects invalid subscriptions with 400 and stores nothing', async () => {
    const invalid = [
      subscription({ publisherId: 'azure-devops' }),
      subscription({ consumerId: 'slack' }),
      subscription({ consumerActionId: 'postMessage' }),
      subscription({ eventType: 'build.complete' }),
      subscription({ eventType: 'git.pullrequest.updated' }, { notificationType: 'TitleChanged' }),
      subscription({}, { projectId: '00000000-0000-0000-0000-000000000000' }),
      subscription({ consumerInputs: { url: 'ftp://nope' } }),
    ];
    for (const body of invalid) {
      const answer = await rest('POST', 'hooks/subscriptions', body);
      expect(answer.status, JSON.stringify(body)).toBe(400);
      expect(answer.json.typeKey).toBe('ArgumentException');
    }
    expect(fake.subscriptions()).toEqual([]);
    const valid = await rest('POST', 'hooks/subscriptions', subscription({ eventType: 'git.pullrequest.updated' }, { notificationType: 'PushNotification' }));
    expect(valid.status).toBe(200);
  });

  it('applies publisher input filters in subscriptionsquery', async () => {
    const second = fake.addRepository({ projectName: 'Alpha', name: 'web' });
    const onApi = (await rest('POST', 'hooks/subscriptions', subscription())).json.id;
    const onWeb = (await rest('POST', 'hooks/subscriptions', subscription({}, { repository: second.id }))).json.id;
    const query = (operator: string) =>
      rest('POST', 'hooks/subscriptionsquery', {
        publisherId: 'tfs',
        publisherInputFilters: [{ conditions: [{ inputId: 'repository', operator, inputValue: repo.id.toUpperCase(), caseSensitive: false }] }],
      });
    const equals = await query('equals');
    expect(equals.status).toBe(200);
    expect(equals.json.publisherId).toBe('tfs');
    expect(equals.json.results.map((s: { id: string }) => s.id)).toEqual([onApi]);
    expect((await query('notEquals')).json.results.map((s: { id: string }) => s.id)).toEqual([onWeb]);
    expect(equals.json.results[0].consumerInputs.basicAuthPassword).toBe('********');
  });

  it('stores subscriptions without a request as POST would, and a query for a repository no one has answers none', async () => {
    fake.addSubscription(subscription());
    expect(() => fake.addSubscription(subscription({}, { projectId: '6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c' }))).toThrow(/not a project of this organization/);
    expect(fake.subscriptions()).toHaveLength(1);
    const nothing = await rest('POST', 'hooks/subscriptionsquery', {
      publisherId: 'tfs',
      publisherInputFilters: [{ conditions: [{ inputId: 'repository', operator: 'equals', inputValue: '00000000-0000-0000-0000-000000000000', caseSensitive: false }] }],
    });
    expect(nothing.status).toBe(200);
    expect(nothing.json.results).toEqual([]);
    expect((await rest('POST', 'hooks/subscriptionsquery', { publisherId: 'tfs' })).json.results).toHaveLength(1);
  });

  it('replaces a subscription with PUT, re-enabling it and keeping a round-tripped masked password', async () => {
    const id = (await rest('POST', 'hooks/subscriptions', subscription())).json.id as string;
    fake.setSubscriptionStatus(id, 'onProbation');
    const probation = await rest('GET', `hooks/subscriptions/${id}`);
    expect(probation.json).toMatchObject({ status: 'onProbation', probationRetries: 1, lastProbationRetryDate: expect.any(String) });
    const replaced = await rest('PUT', `hooks/subscriptions/${id}`, { ...probation.json, status: 'enabled' });
    expect(replaced.status).toBe(200);
    expect(replaced.json.status).toBe('enabled');
    expect(fake.subscriptions()[0]).toMatchObject({ status: 'enabled', probationRetries: 0, consumerInputs: { basicAuthPassword: 's3cret' } });
    expect((await rest('PUT', 'hooks/subscriptions/00000000-0000-0000-0000-000000000000', subscription())).status).toBe(404);
  });

  it('refuses subscription calls to a PAT without hook rights', async () => {
    fake.addPat({ pat: 'reader', displayName: 'Reader', canManageHooks: false });
    const list = await rest('GET', 'hooks/subscriptions', undefined, { pat: 'reader' });
    expect(list.status).toBe(403);
    expect(list.json.message).toMatch(/does not have permission/);
    expect((await rest('POST', 'hooks/subscriptions', subscription(), { pat: 'reader' })).status).toBe(403);
    expect(fake.subscriptions()).toEqual([]);
  });

  it('injects throttling and failures through failNext', async () => {
    fake.server.failNext('createSubscription', 1, tooManyRequests(30));
    const throttled = await rest('POST', 'hooks/subscriptions', subscription());
    expect(throttled.status).toBe(429);
    expect(throttled.headers.get('retry-after')).toBe('30');
    expect(throttled.json.message).toMatch(/^TF400733/);
    fake.server.failNext('listProjects', 1, vssError(503, 'Service unavailable', 'ServiceUnavailableException'));
    const core = await sdkClient().getCoreApi();
    await expect(core.getProjects()).rejects.toMatchObject({ statusCode: 503 });
    expect((await rest('POST', 'hooks/subscriptions', subscription())).status).toBe(200);
  });
});
