import { randomBytes, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { seal } from '../../lib/crypto.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectionRefreshResult, RefreshResult } from '../../workflows/contract.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { renameCachedRepository } from '../../lib/db/repositories/events.ts';
import { lastListing, markRepositoriesVanished, takeListingLease } from '../../lib/db/repositories/repository-cache.ts';
import { ensureRefreshSchedule } from '../../worker/schedule.ts';
import { startFakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { startFakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { startFlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';
import { refreshOrganization } from '../support/listing.ts';

interface PickerItem {
  id: string;
  connectionId: string;
  provider: string;
  externalId: string;
  fullName: string;
  project?: string;
  attached: boolean;
}

describe('repository cache: refresh workflow, picker, schedule', () => {
  let h: Harness;
  let github: FakeGithub;
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    github = await startFakeGithub();
    closers.push(() => github.close());
    h = await startHarness({ github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem } });
  });
  afterAll(async () => {
    await h?.close();
    for (const close of closers) await close();
  });

  async function newOrg() {
    const { org, token } = await createOrgWithToken(h);
    return { ...org, token };
  }
  /** A fake GitLab behind a proxy that can fail or hold its calls, a new organization, and a token the fake accepts. */
  async function gitlabBehindProxy() {
    const gitlab = await startFakeGitlab();
    const proxy = await startFlakyProxy(gitlab.url);
    closers.push(() => proxy.close(), () => gitlab.close());
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    return { gitlab, proxy, org: await newOrg(), token };
  }
  const refresh = (org: { slug: string; token: string }) => refreshOrganization(h, org);
  /** The last complete listing of a connection, as it recorded itself on the connection. */
  const listingOf = async (_organizationId: string, connectionId: string): Promise<ConnectionRefreshResult> => {
    const listing = await lastListing(h.db, connectionId);
    if (!listing) throw new Error(`connection ${connectionId} has no complete listing`);
    return { connectionId, ...listing };
  };
  async function picker(org: { slug: string; token: string }, query = ''): Promise<PickerItem[]> {
    const items: PickerItem[] = [];
    let cursor: string | undefined;
    do {
      const qs = new URLSearchParams(query);
      qs.set('limit', '40');
      if (cursor) qs.set('cursor', cursor);
      const res = await h.request('GET', `/api/v1/orgs/${org.slug}/repositories?${qs}`, { token: org.token });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { items: PickerItem[]; nextCursor?: string };
      items.push(...body.items);
      cursor = body.nextCursor;
    } while (cursor);
    return items;
  }

  it('reads connections in batches and continues as new, so any number of them fits in bounded histories', async () => {
    const gitlab = await startFakeGitlab();
    closers.push(() => gitlab.close());
    const org = await newOrg();
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.addProject({ pathWithNamespace: 'group/one' });
    const connectionIds = await Promise.all(Array.from({ length: 4 }, () => seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: token })));
    const broken = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: 'glpat-revoked' });

    // Five connections, two per batch and one batch per run: three runs (2, 2, 1), the counts carried along.
    const workflowId = `refresh-batches-${randomUUID()}`;
    const first = await h.client.workflow.start('refreshRepositoriesWorkflow', {
      taskQueue: h.taskQueue,
      workflowId,
      args: [{ organizationId: org.id, batchSize: 2, batchesPerRun: 1 }],
    });
    const result = await first.result();
    expect(result).toMatchObject({ connections: 5, refreshed: 4, failedCount: 1, alreadyRunningCount: 0 });
    expect(result.failed).toEqual([{ connectionId: broken, reason: expect.stringMatching(/401/) }]);
    for (const id of connectionIds) expect((await listingOf(org.id, id)).pages).toBeGreaterThan(0);

    const runs: string[] = [];
    for (let runId: string | undefined = first.firstExecutionRunId; runId; ) {
      runs.push(runId);
      const { events } = await h.client.workflow.getHandle(workflowId, runId).fetchHistory();
      runId = events!.at(-1)!.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
    }
    expect(runs).toHaveLength(3);
    await recordHistory(h.client, workflowId, 'refresh-organization-listings-in-run-last-batch-asking-slot');
  });

  it('fails a connection whose credential is sealed under a key no longer configured at once, with the reason, not retry after retry', async () => {
    const org = await newOrg();
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: 'http://127.0.0.1:9', secret: 'glpat-any' });
    const gone = { current: { id: 'retired', key: randomBytes(32) } };
    await h.db.updateTable('connections').set({ credential: seal(gone, 'glpat-any', connectionId) }).where('id', '=', connectionId).execute();

    const result = await refresh(org);
    expect(result.failed).toEqual([{ connectionId, reason: expect.stringContaining('unknown encryption key id "retired"') }]);
    const { events } = await h.client.workflow.getHandle(workflowIds.refreshOrganization(org.id)).fetchHistory();
    const attempts = events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
    // The listing failed on its first attempt (then recordRefreshFailure ran in the workflow task): no retries.
    expect(attempts).toEqual([1]);
    expect(await h.db.selectFrom('connections').select('refresh_error').where('id', '=', connectionId).executeTakeFirstOrThrow()).toEqual({
      refresh_error: expect.stringContaining('unknown encryption key id "retired"'),
    });
    const failures = events!.filter((e) => e.activityTaskFailedEventAttributes).map((e) => e.activityTaskFailedEventAttributes!.failure!);
    expect(failures.map((f) => f.applicationFailureInfo)).toEqual([expect.objectContaining({ type: 'SecretUnreadable', nonRetryable: true })]);
  });

  it.each([
    [0, 1],
    [1, 2],
    [100, 2],
    [250, 5],
  ])('GitLab: %i projects are cached through keyset pages (%i listing calls); an unchanged second run writes nothing', async (count, calls) => {
    const gitlab = await startFakeGitlab();
    closers.push(() => gitlab.close());
    const org = await newOrg();
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    const projects = Array.from({ length: count }, (_, i) => gitlab.addProject({ pathWithNamespace: `group/project-${String(i).padStart(3, '0')}` }));
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: token });

    expect(await refresh(org)).toEqual({ connections: 1, refreshed: 1, failed: [], alreadyRunning: [], failedCount: 0, alreadyRunningCount: 0 });
    expect(gitlab.server.count('listProjects')).toBe(calls);
    const items = await picker(org);
    expect(items).toHaveLength(count);
    expect(new Set(items.map((i) => i.fullName)).size).toBe(count);
    expect(items.every((i) => i.provider === 'gitlab' && i.connectionId === connectionId && !i.attached)).toBe(true);
    expect((await listingOf(org.id, connectionId)).rowsWritten).toBe(count);

    await refresh(org);
    const second = await listingOf(org.id, connectionId);
    expect(second).toMatchObject({ rowsWritten: 0, vanished: 0 });
    // GitLab has no conditional requests: every page answers in full, and none is written again.
    expect(second.unchangedPages).toBe(second.pages);

    // One project renamed: only its page is written.
    if (count > 0) {
      const newName = `group/renamed-${randomUUID().slice(0, 6)}`;
      gitlab.renameProject(projects[0]!.id, newName);
      await refresh(org);
      const third = await listingOf(org.id, connectionId);
      expect(third).toMatchObject({ rowsWritten: 1, vanished: 0, unchangedPages: third.pages - 1 });

      // A late event renames it back in the cache; GitLab's pages have not changed, yet the next
      // listing writes that page again and the cache shows GitLab's name.
      const row = await h.db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).where('external_id', '=', String(projects[0]!.id)).executeTakeFirstOrThrow();
      expect(await renameCachedRepository(h.db, row.id, projects[0]!.pathWithNamespace, null)).toBe(true);
      await refresh(org);
      expect(await listingOf(org.id, connectionId)).toMatchObject({ rowsWritten: 1, unchangedPages: third.pages - 1 });
      expect(await h.db.selectFrom('repositories').select('full_name').where('id', '=', row.id).executeTakeFirstOrThrow()).toEqual({ full_name: newName });
    }
  });

  it('GitHub: unchanged pages come back 304; removed and renamed repositories are reflected, an attached one flagged', async () => {
    const org = await newOrg();
    const installation = github.addInstallation({ account: { login: `acct-${randomUUID().slice(0, 6)}` } });
    const repos = Array.from({ length: 150 }, (_, i) => github.addRepository(installation.id, { fullName: `acct/repo-${String(i).padStart(3, '0')}` }));
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'github', baseUrl: github.url, externalKey: String(installation.id) });

    await refresh(org);
    expect(await listingOf(org.id, connectionId)).toMatchObject({ rowsWritten: 150, notModifiedPages: 0 });
    expect(await picker(org)).toHaveLength(150);

    await refresh(org);
    const second = await listingOf(org.id, connectionId);
    expect(second.rowsWritten).toBe(0);
    expect(second.notModifiedPages).toBeGreaterThanOrEqual(2);

    // Attach the one that will disappear, then change the installation.
    const gone = repos[10]!;
    const goneRow = await h.db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).where('external_id', '=', String(gone.id)).executeTakeFirstOrThrow();
    await h.db.insertInto('attachments').values({ organization_id: org.id, repository_id: goneRow.id, status: 'attached' }).execute();
    github.removeRepository(installation.id, gone.id);
    github.renameRepository(repos[20]!.id, 'acct/renamed-repo');

    await refresh(org);
    expect(await listingOf(org.id, connectionId)).toMatchObject({ vanished: 1, rowsWritten: 1 });
    const items = await picker(org);
    expect(items).toHaveLength(149);
    expect(items.map((i) => i.fullName)).toContain('acct/renamed-repo');
    expect(items.map((i) => i.externalId)).not.toContain(String(gone.id));
    const attachment = await h.db.selectFrom('attachments').select(['status', 'repository_vanished']).where('repository_id', '=', goneRow.id).executeTakeFirstOrThrow();
    expect(attachment).toEqual({ status: 'attached', repository_vanished: true });
    const attachmentOf = async (repositoryId: string) => {
      const res = await h.request('GET', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, { token: org.token });
      expect(res.status).toBe(200);
      return (await res.json()) as { status: string; repositoryVanished: boolean };
    };
    expect(await attachmentOf(goneRow.id)).toMatchObject({ status: 'attached', repositoryVanished: true });

    // Access comes back: the next listing shows it again and the attachment is no longer flagged.
    github.addRepository(installation.id, { id: gone.id, fullName: gone.fullName });
    await refresh(org);
    expect(await listingOf(org.id, connectionId)).toMatchObject({ vanished: 0, rowsWritten: 1 });
    expect((await picker(org)).map((i) => i.externalId)).toContain(String(gone.id));
    expect(await attachmentOf(goneRow.id)).toMatchObject({ status: 'attached', repositoryVanished: false });
    expect(await h.db.selectFrom('attachments').select('repository_vanished').where('repository_id', '=', goneRow.id).executeTakeFirstOrThrow()).toEqual({ repository_vanished: false });

    // An event marked it vanished, but GitHub's pages did not change (all 304): the listing is the truth.
    await markRepositoriesVanished(h.db, connectionId, [String(gone.id)]);
    expect(await attachmentOf(goneRow.id)).toMatchObject({ repositoryVanished: true });
    await refresh(org);
    const unchanged = await listingOf(org.id, connectionId);
    expect(unchanged).toMatchObject({ rowsWritten: 0, vanished: 0 });
    expect(unchanged.notModifiedPages).toBe(unchanged.pages);
    expect(await attachmentOf(goneRow.id)).toMatchObject({ status: 'attached', repositoryVanished: false });
    expect((await picker(org)).map((i) => i.externalId)).toContain(String(gone.id));
  });

  it('one failing connection is recorded and does not stop the others; Azure DevOps repositories group by project', async () => {
    const org = await newOrg();
    const azure = await startFakeAzureDevOps({ organization: 'fabrikam' });
    const bitbucket = await startFakeBitbucket();
    closers.push(() => azure.close(), () => bitbucket.close());
    azure.addPat({ pat: 'pat-ok', displayName: 'Lister', canManageHooks: true });
    for (const project of ['Zeta', 'Alpha']) {
      azure.addProject({ name: project });
      for (const name of ['web', 'api']) azure.addRepository({ projectName: project, name });
    }
    const azureId = await seedConnection(h, { organizationId: org.id, provider: 'azure-devops', baseUrl: azure.url, externalKey: azure.url, secret: 'pat-ok' });
    const brokenId = await seedConnection(h, { organizationId: org.id, provider: 'bitbucket', baseUrl: bitbucket.url, secret: 'revoked-token' });

    const result = await refresh(org);
    expect(result.connections).toBe(2);
    expect(result.refreshed).toBe(1);
    expect(result.failed).toEqual([{ connectionId: brokenId, reason: expect.stringMatching(/401/) }]);
    const broken = await h.db.selectFrom('connections').select(['refresh_error', 'refreshed_at']).where('id', '=', brokenId).executeTakeFirstOrThrow();
    expect(broken.refresh_error).toMatch(/401/);
    const healthy = await h.db.selectFrom('connections').select(['refresh_error', 'refreshed_at']).where('id', '=', azureId).executeTakeFirstOrThrow();
    expect(healthy.refresh_error).toBeNull();
    expect(healthy.refreshed_at).not.toBeNull();

    const items = await picker(org);
    expect(items.map((i) => `${i.project}|${i.fullName}`)).toEqual(['Alpha|Alpha/api', 'Alpha|Alpha/web', 'Zeta|Zeta/api', 'Zeta|Zeta/web']);
    // Search and the connection filter, and organization isolation.
    expect((await picker(org, 'q=ZETA/')).map((i) => i.fullName)).toEqual(['Zeta/api', 'Zeta/web']);
    expect(await picker(org, `connection=${brokenId}`)).toEqual([]);
    const other = await newOrg();
    expect((await h.request('GET', `/api/v1/orgs/${org.slug}/repositories`, { token: other.token })).status).toBe(404);
    expect((await h.request('GET', `/api/v1/orgs/${org.slug}/repositories?cursor=bogus`, { token: org.token })).status).toBe(400);
    // A cursor of the right shape whose id is not one: still the client's mistake, not a 500.
    const forged = Buffer.from(JSON.stringify(['Alpha', 'Alpha/api', 'not-a-uuid'])).toString('base64url');
    const forgedRes = await h.request('GET', `/api/v1/orgs/${org.slug}/repositories?cursor=${forged}`, { token: org.token });
    expect(forgedRes.status).toBe(400);
    expect(forgedRes.headers.get('content-type')).toMatch(/application\/problem\+json/);
    await recordHistory(h.client, workflowIds.refreshOrganization(org.id), 'refresh-organization-listings-in-run-one-failing-asking-slot');
  });

  it("a name with a NUL is mended and a repository whose id PostgreSQL cannot store is left out: the connection's listing still finishes", async () => {
    const org = await newOrg();
    const azure = await startFakeAzureDevOps({ organization: 'odd' });
    closers.push(() => azure.close());
    azure.addPat({ pat: 'pat-ok', displayName: 'Lister' });
    azure.addProject({ name: 'Pro\u0000ject' });
    azure.addRepository({ projectName: 'Pro\u0000ject', name: 'web' });
    azure.addProject({ name: 'Plain' });
    azure.addRepository({ projectName: 'Plain', name: 'api' });
    // A lone low surrogate in the id: jsonb refuses it (external_ids, 22P02), and a mended id could be another repository's.
    azure.addRepository({ projectName: 'Plain', name: 'odd-id', id: `${randomUUID().slice(0, -1)}\udc00` });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'azure-devops', baseUrl: azure.url, externalKey: azure.url, secret: 'pat-ok' });

    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    const connection = await h.db.selectFrom('connections').select('refresh_error').where('id', '=', connectionId).executeTakeFirstOrThrow();
    expect(connection.refresh_error).toBeNull();
    expect((await picker(org)).map((i) => `${i.project}|${i.fullName}`)).toEqual(['Plain|Plain/api', 'Pro\uFFFDject|Pro\uFFFDject/web']);
    expect(await lastListing(h.db, connectionId)).toMatchObject({ listed: 2, rowsWritten: 2 });
    expect(h.logs.join('\n')).toMatch(/"unstorable":1.*repositories left out of the listing/);
  });

  it("a repository named in over MAX_NAME_LENGTH bytes of UTF-8 is left out and counted, not failing its listing page on the picker's index (54000)", async () => {
    const org = await newOrg();
    const azure = await startFakeAzureDevOps({ organization: 'long' });
    closers.push(() => azure.close());
    azure.addPat({ pat: 'pat-ok', displayName: 'Lister' });
    azure.addProject({ name: 'Plain' });
    azure.addRepository({ projectName: 'Plain', name: 'api' });
    // 1,000 random ideographs: 3,000 bytes (under 1,024 characters), too random to compress in the index row.
    const ideographs = Array.from({ length: 1000 }, (_, i) => String.fromCharCode(0x4e00 + ((i * 7919 + Date.now()) % 0x5000))).join('');
    azure.addRepository({ projectName: 'Plain', name: ideographs });
    // 340 ideographs (1,020 bytes with the project): kept.
    azure.addRepository({ projectName: 'Plain', name: ideographs.slice(0, 334) });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'azure-devops', baseUrl: azure.url, externalKey: azure.url, secret: 'pat-ok' });

    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    const connection = await h.db.selectFrom('connections').select('refresh_error').where('id', '=', connectionId).executeTakeFirstOrThrow();
    expect(connection.refresh_error).toBeNull();
    expect((await picker(org)).map((i) => i.fullName).sort()).toEqual(['Plain/api', `Plain/${ideographs.slice(0, 334)}`].sort());
    expect(await lastListing(h.db, connectionId)).toMatchObject({ listed: 2, rowsWritten: 2 });
    expect(h.logs.join('\n')).toMatch(new RegExp(`"connectionId":"${connectionId}"[^\\n]*"unstorable":1.*repositories left out of the listing`));
  });

  it('resumes from the heartbeated cursor after a lost answer, and waits out a 429 mid-listing', async () => {
    const { gitlab, proxy, org, token } = await gitlabBehindProxy();
    for (let i = 0; i < 350; i++) gitlab.addProject({ pathWithNamespace: `big/p-${String(i).padStart(3, '0')}` });
    let listings = 0;
    proxy.fault = (request) => {
      if (!request.url.includes('/projects?')) return undefined;
      listings++;
      if (listings === 2) return { kind: 'answer', status: 429, headers: { 'retry-after': '1', 'content-type': 'text/plain' }, body: 'Retry later' };
      if (listings === 4) return { kind: 'lose-answer' };
      return undefined;
    };
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });

    expect(await refresh(org)).toMatchObject({ refreshed: 1, failed: [] });
    expect(await picker(org)).toHaveLength(350);
    const firstPageRequests = proxy.requests.filter((r) => r.url.includes('/projects?') && !r.url.includes('id_after='));
    // The retries resumed from the last heartbeated frontier: the first page was never fetched again.
    expect(firstPageRequests).toHaveLength(1);
    // The first page, the split (highest id), three id ranges, and the open-ended range's empty end.
    expect((await listingOf(org.id, connectionId)).pages).toBe(6);
  });

  it("two refreshes never list one connection at once: the second reports it already running; a stopped refresh's lease runs out", async () => {
    const { gitlab, proxy, org, token } = await gitlabBehindProxy();
    gitlab.addProject({ pathWithNamespace: 'group/held' });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxy.url, secret: token });

    // The on-demand refresh's first listing call is held at the proxy: its listing holds the lease.
    let releaseListing!: (how: 'answer') => void;
    const released = new Promise<'answer'>((resolve) => (releaseListing = resolve));
    let onHeld!: () => void;
    const held = new Promise<void>((resolve) => (onHeld = resolve));
    let holding = true;
    proxy.fault = (request) => {
      if (!holding || !request.url.includes('/projects?')) return undefined;
      holding = false;
      return { kind: 'hold', onHeld, release: released };
    };
    const started = await h.request('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, { token: org.token });
    expect(started.status).toBe(202);
    const { workflowId: firstId } = (await started.json()) as { workflowId: string };
    await held;

    // Another refresh of the organization (as the nightly run would be) meets the lease and lists nothing.
    const second = await h.client.workflow.execute('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId: `refresh-second-${randomUUID()}`, args: [{ organizationId: org.id }] });
    expect(second).toEqual({ connections: 1, refreshed: 0, failed: [], alreadyRunning: [connectionId], failedCount: 0, alreadyRunningCount: 1 });
    expect(proxy.requests.filter((r) => r.url.includes('/projects?'))).toHaveLength(1);

    releaseListing('answer');
    expect(await resultOf<RefreshResult>(h, firstId)).toMatchObject({ connections: 1, refreshed: 1, alreadyRunningCount: 0 });
    expect(await listingOf(org.id, connectionId)).toMatchObject({ rowsWritten: 1, vanished: 0 });
    // Given back when the listing ended.
    expect(await h.db.selectFrom('repository_listings').select(['holder', 'held_until']).where('connection_id', '=', connectionId).executeTakeFirstOrThrow()).toEqual({ holder: null, held_until: null });

    // A refresh stopped mid-listing (terminated) leaves its lease: it holds until it runs out.
    await h.db.updateTable('repository_listings').set({ holder: 'refresh:terminated/run', held_until: sql<Date>`now() + interval '1 minute'` }).where('connection_id', '=', connectionId).execute();
    expect(await refresh(org)).toMatchObject({ refreshed: 0, alreadyRunning: [connectionId] });
    await h.db.updateTable('repository_listings').set({ held_until: sql<Date>`now() - interval '1 second'` }).where('connection_id', '=', connectionId).execute();
    expect(await refresh(org)).toMatchObject({ refreshed: 1, alreadyRunningCount: 0 });

    // A connection removed after the refresh read it: no lease (and no foreign-key error, retried as a
    // database failure); its listing fails as not active.
    expect(await takeListingLease(h.db, randomUUID(), 'refresh:any/run')).toBe(false);
  });

  it("a listing longer than one chunk of pages goes on in a child run of its own, under the refresh's lease", async () => {
    const bitbucket = await startFakeBitbucket({ maxPageSize: 1 });
    closers.push(() => bitbucket.close());
    const org = await newOrg();
    const token = `bb-${randomUUID()}`;
    bitbucket.addToken({ token, username: 'lister' });
    bitbucket.addProject({ key: 'LONG', name: 'Long' });
    // One repository a page: 60 pages, more than the 50 of the refresh's own chunk.
    for (let i = 0; i < 60; i++) bitbucket.addRepository({ projectKey: 'LONG', slug: `r-${String(i).padStart(2, '0')}` });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'bitbucket', baseUrl: bitbucket.url, secret: token });

    expect(await refresh(org)).toEqual({ connections: 1, refreshed: 1, failed: [], alreadyRunning: [], failedCount: 0, alreadyRunningCount: 0 });
    expect(await listingOf(org.id, connectionId)).toMatchObject({ pages: 60, rowsWritten: 60, vanished: 0 });
    // The child took the listing over from the refresh's first chunk: its counts include that chunk's.
    expect(await resultOf<ConnectionRefreshResult>(h, workflowIds.refreshConnection(org.id, connectionId))).toMatchObject({ connectionId, pages: 60, rowsWritten: 60 });
    expect(bitbucket.server.calls.filter((c) => c.operation === 'listRepos')).toHaveLength(60);
    expect(await picker(org)).toHaveLength(60);
    // The child listed under the refresh's lease and gave it back at the end.
    expect(await h.db.selectFrom('repository_listings').select('holder').where('connection_id', '=', connectionId).executeTakeFirstOrThrow()).toEqual({ holder: null });
    await recordHistory(h.client, workflowIds.refreshOrganization(org.id), 'refresh-organization-listing-continued-in-child-asking-slot');
    await recordHistory(h.client, workflowIds.refreshConnection(org.id, connectionId), 'refresh-connection-continued-from-refresh-asking-slot');
  });

  it('keeps exactly one Schedule with the configured spec across worker restarts', async () => {
    const scheduleId = `test-refresh-${randomUUID()}`;
    const settings = { cron: '0 3 * * *', timeZone: 'Europe/Berlin', taskQueue: h.taskQueue, scheduleId };
    expect(await ensureRefreshSchedule(h.client, settings)).toBe('created');
    expect(await ensureRefreshSchedule(h.client, settings)).toBe('updated');
    expect(await ensureRefreshSchedule(h.client, { ...settings, cron: '30 1 * * *' })).toBe('updated');
    const description = await h.client.schedule.getHandle(scheduleId).describe();
    expect(description.spec.timezone).toBe('Europe/Berlin');
    expect(JSON.stringify(description.spec)).toContain('"minute":[{"start":30');
    expect(description.policies.overlap).toBe('SKIP');
    const ids: string[] = [];
    for await (const s of h.client.schedule.list()) if (s.scheduleId === scheduleId) ids.push(s.scheduleId);
    expect(ids).toEqual([scheduleId]);
    await h.client.schedule.getHandle(scheduleId).delete();
  });
});
