import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RefreshResult } from '../../workflows/contract.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { lastListing } from '../../lib/db/repositories/repository-cache.ts';
import { startFakeAzureDevOps } from '../fakes/azure-devops.ts';
import { startFakeBitbucket, type FakeBitbucket } from '../fakes/bitbucket.ts';
import { startFakeGithub, type FakeGithub } from '../fakes/github.ts';
import { startFakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';
import { refreshOrganization } from '../support/listing.ts';

/**
 * A tenant chooses its provider's base URL, and its server may say "more pages follow" for ever.
 * Before the caps, a Bitbucket answering isLastPage: false wrote 1,196,000 repository rows in 60 s
 * and its refresh ran on (the child continuing as new). Here the worker's caps are small
 * (repositoryCache.maxRepositoriesPerConnection 250, maxPagesPerConnection 120) so each endless
 * listing reaches them in a few seconds; the defaults are 100,000 and 2,000.
 */
const MAX_REPOSITORIES = 250;
const MAX_PAGES = 120;
const tooManyRepositories = (provider: string) =>
  `ProviderListingTooLong: ${provider} listed more than ${MAX_REPOSITORIES} repositories for one connection (repositoryCache.maxRepositoriesPerConnection): forgelink caps a listing there`;
const tooManyPages = (provider: string) =>
  `ProviderListingTooLong: ${provider} listed more than ${MAX_PAGES} pages of repositories for one connection (repositoryCache.maxPagesPerConnection): forgelink caps a listing there`;
/** A listing that failed in the child run that went on with it: the refresh's result names the child's failure. */
const inChild = (reason: string) => `RepositoryRefreshFailed: ${reason}`;

describe('repository listings are capped: a provider that never ends its listing fails it, with the reason, and fills nothing', () => {
  let h: Harness;
  let github: FakeGithub;
  const closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    github = await startFakeGithub();
    closers.push(() => github.close());
    h = await startHarness({
      github: { url: github.url, appId: github.appId, privateKeyPem: github.privateKeyPem },
      settings: { listingMaxRepositories: MAX_REPOSITORIES, listingMaxPages: MAX_PAGES },
    });
  });
  afterAll(async () => {
    await h?.close();
    for (const close of closers) await close();
  });

  async function newOrg() {
    const { org, token } = await createOrgWithToken(h);
    return { ...org, token };
  }
  const refresh = (org: { slug: string; token: string }) => refreshOrganization(h, org);
  async function rows(connectionId: string) {
    const all = await h.db.selectFrom('repositories').select(['external_id', 'vanished_at']).where('connection_id', '=', connectionId).execute();
    return { all: all.length, visible: all.filter((r) => r.vanished_at === null).map((r) => r.external_id) };
  }
  const refreshError = async (connectionId: string) =>
    (await h.db.selectFrom('connections').select('refresh_error').where('id', '=', connectionId).executeTakeFirstOrThrow()).refresh_error;
  async function bitbucketConnection(options: { maxPageSize: number; repositories: number }) {
    const bitbucket = await startFakeBitbucket({ maxPageSize: options.maxPageSize });
    closers.push(() => bitbucket.close());
    const org = await newOrg();
    const token = `bb-${randomUUID()}`;
    bitbucket.addToken({ token, username: 'lister' });
    bitbucket.addProject({ key: 'P', name: 'P' });
    const repos = Array.from({ length: options.repositories }, (_, i) => bitbucket.addRepository({ projectKey: 'P', slug: `r-${String(i).padStart(3, '0')}` }));
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'bitbucket', baseUrl: bitbucket.url, secret: token });
    return { bitbucket, org, repos, connectionId };
  }
  const calls = (fake: { server: FakeBitbucket['server'] }, operation: string) => fake.server.count(operation);

  it('a listing under the caps is listed whole, over several pages', async () => {
    const { bitbucket, org, connectionId } = await bitbucketConnection({ maxPageSize: 100, repositories: 240 });
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    expect(await lastListing(h.db, connectionId)).toMatchObject({ pages: 3, listed: 240, rowsWritten: 240, vanished: 0 });
    expect((await rows(connectionId)).visible).toHaveLength(240);
    expect(calls(bitbucket, 'listRepos')).toBe(3);
  });

  it("a page whose write failed is counted once, when its retry writes it: a listing of exactly the cap still ends whole", async () => {
    const { org, connectionId } = await bitbucketConnection({ maxPageSize: 100, repositories: MAX_REPOSITORIES });
    // The first page write of this connection fails once (a sequence is not rolled back with it).
    const name = `fail_once_${connectionId.replaceAll('-', '')}`;
    await sql.raw(`create sequence ${name}`).execute(h.db);
    await sql
      .raw(
        `create function ${name}() returns trigger language plpgsql as $$ begin if nextval('${name}') = 1 then raise exception 'page write failed on purpose'; end if; return new; end $$;
         create trigger ${name} before insert on repository_listing_pages for each row when (new.connection_id = '${connectionId}') execute function ${name}()`,
      )
      .execute(h.db);
    try {
      expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
      expect(await lastListing(h.db, connectionId)).toMatchObject({ pages: 3, listed: MAX_REPOSITORIES, rowsWritten: MAX_REPOSITORIES, vanished: 0 });
      expect((await rows(connectionId)).visible).toHaveLength(MAX_REPOSITORIES);
      // The trigger failed the first write and let the three after it through (the retry's included).
      expect((await sql<{ last_value: string }>`select last_value from ${sql.table(name)}`.execute(h.db)).rows[0]!.last_value).toBe('4');
    } finally {
      await sql.raw(`drop trigger ${name} on repository_listing_pages; drop function ${name}(); drop sequence ${name}`).execute(h.db);
    }
  });

  it('Bitbucket, isLastPage false for ever: the page that would pass the repository cap is not written; the cache keeps what it had, nothing is marked gone', async () => {
    const { bitbucket, org, repos, connectionId } = await bitbucketConnection({ maxPageSize: 100, repositories: 3 });
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    // The third repository leaves; then the server lists for ever (the two left, then made-up ones).
    bitbucket.removeRepository(repos[2]!.id);
    bitbucket.listEndlessly('listRepos', 'onward');
    const before = calls(bitbucket, 'listRepos');
    const started = performance.now();

    const result = await refresh(org);
    console.log(`bitbucket endless listing failed after ${Math.round(performance.now() - started)} ms, ${calls(bitbucket, 'listRepos') - before} calls`);
    expect(result).toMatchObject({ refreshed: 0, failedCount: 1, failed: [{ connectionId, reason: tooManyRepositories('bitbucket') }] });
    expect(await refreshError(connectionId)).toBe(tooManyRepositories('bitbucket'));
    // Pages 1 and 2 (200 repositories) were written, page 3 (300) was not, and nothing was retried.
    expect(calls(bitbucket, 'listRepos') - before).toBe(3);
    const after = await rows(connectionId);
    expect(after.all).toBe(201);
    expect(after.all).toBeLessThanOrEqual(MAX_REPOSITORIES + 3);
    // The repository that left is still visible: only a complete listing marks repositories gone.
    expect(after.visible).toContain(String(repos[2]!.id));
    // The last complete listing is still the one recorded.
    expect(await lastListing(h.db, connectionId)).toMatchObject({ listed: 3, rowsWritten: 3 });

    // The server ends its listing again: the next refresh is complete and the cache is the provider's.
    bitbucket.listEndlessly(null);
    expect(await refresh(org)).toMatchObject({ refreshed: 1, failedCount: 0 });
    expect((await rows(connectionId)).visible.sort()).toEqual([String(repos[0]!.id), String(repos[1]!.id)].sort());
    expect(await refreshError(connectionId)).toBeNull();
  });

  it('Bitbucket, empty pages for ever: the page cap ends the listing in the child run that went on with it, which does not continue', async () => {
    const { bitbucket, org, connectionId } = await bitbucketConnection({ maxPageSize: 1, repositories: 0 });
    bitbucket.listEndlessly('listRepos', 'empty');
    const result = await refresh(org);
    expect(result).toMatchObject({ refreshed: 0, failedCount: 1, failed: [{ connectionId, reason: inChild(tooManyPages('bitbucket')) }] });
    expect(await refreshError(connectionId)).toBe(tooManyPages('bitbucket'));
    // 50 pages in the refresh's run, 70 in the child's chunks; the 121st is not asked for.
    expect(calls(bitbucket, 'listRepos')).toBe(MAX_PAGES);
    const child = await h.client.workflow.getHandle(workflowIds.refreshConnection(org.id, connectionId)).describe();
    expect(child.status.name).toBe('FAILED');
    const pages = await h.db.selectFrom('repository_listing_pages').select((eb) => eb.fn.countAll<string>().as('n')).where('connection_id', '=', connectionId).executeTakeFirstOrThrow();
    expect(Number(pages.n)).toBe(MAX_PAGES);
    expect((await rows(connectionId)).all).toBe(0);
    await recordHistory(h.client, workflowIds.refreshOrganization(org.id), 'refresh-organization-listing-too-long');
    await recordHistory(h.client, workflowIds.refreshConnection(org.id, connectionId), 'refresh-connection-listing-too-long');
  });

  it('GitHub: a Link header naming a last page past the caps fails after the first page; one linking onward for ever, at the repository cap', async () => {
    const installation = github.addInstallation({ account: { login: `acct-${randomUUID().slice(0, 6)}` } });
    const org = await newOrg();
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'github', baseUrl: github.url, externalKey: String(installation.id) });
    const listed = () => github.server.count('listInstallationRepos');

    // A million pages: the adapter refuses to make their cursors.
    github.listEndlessly({ lastPage: 1_000_000 });
    let before = listed();
    expect((await refresh(org)).failed).toEqual([
      { connectionId, reason: 'ProviderListingTooLong: github listed more than 10,000 pages of repositories (its Link header names page 1000000 as the last): forgelink caps a listing there' },
    ]);
    expect(listed() - before).toBe(1);

    // 500 pages: more than the listing's page cap, known after the first page.
    github.listEndlessly({ lastPage: 500 });
    before = listed();
    expect((await refresh(org)).failed).toEqual([{ connectionId, reason: tooManyPages('github') }]);
    expect(listed() - before).toBe(1);

    // Next, next, next: full pages of 100 until the third would pass 250. (Another installation: this
    // one's first page, stored with the 499 pages it led to, would answer 304 and lead there again.)
    const onward = github.addInstallation({ account: { login: `acct-${randomUUID().slice(0, 6)}` } });
    const onwardOrg = await newOrg();
    const onwardId = await seedConnection(h, { organizationId: onwardOrg.id, provider: 'github', baseUrl: github.url, externalKey: String(onward.id) });
    github.listEndlessly({});
    before = listed();
    expect((await refresh(onwardOrg)).failed).toEqual([{ connectionId: onwardId, reason: tooManyRepositories('github') }]);
    expect(listed() - before).toBe(3);
    expect((await rows(onwardId)).all).toBe(200);
    github.listEndlessly(null);
  });

  it('GitLab keyset pages for ever (walked in parallel ranges) and Azure DevOps projects for ever stop at the caps', async () => {
    const gitlab = await startFakeGitlab();
    const azure = await startFakeAzureDevOps({ organization: 'endless' });
    closers.push(() => gitlab.close(), () => azure.close());
    const org = await newOrg();
    const glToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: glToken, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.listEndlessly('listProjects');
    azure.addPat({ pat: 'pat-endless', displayName: 'Lister', canManageHooks: true });
    azure.listEndlessly(true);
    const gitlabId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: glToken });
    const azureId = await seedConnection(h, { organizationId: org.id, provider: 'azure-devops', baseUrl: azure.url, externalKey: azure.url, secret: 'pat-endless' });

    const result = await refresh(org);
    expect(result.failed).toEqual(
      expect.arrayContaining([
        { connectionId: gitlabId, reason: tooManyRepositories('gitlab') },
        { connectionId: azureId, reason: inChild(tooManyPages('azure-devops')) },
      ]),
    );
    // Ranges run in parallel: a few pages were in flight as the cap was reached, none written past it.
    expect((await rows(gitlabId)).all).toBeLessThanOrEqual(MAX_REPOSITORIES);
    expect(await refreshError(azureId)).toBe(tooManyPages('azure-devops'));
    expect(gitlab.server.count('listProjects')).toBeLessThan(12);
    expect(azure.server.count('listProjects')).toBe(2);
  });
});
