/**
 * Repository picker benchmark: `GET /api/v1/orgs/{org}/repositories` served from the cache while
 * the table holds many organizations' repositories. Seeds `organizations` × `repositoriesPerOrg`
 * rows (half of each organization's repositories in Azure DevOps projects, half without a project),
 * then times, through the API: first pages, a walk of every page with the cursor, and searches.
 */
import { sql } from 'kysely';
import { callApi, type BenchStack } from './stack.ts';

export const DEFAULT_PICKER_OPTIONS = { organizations: 20, repositoriesPerOrg: 10_000, pageLimit: 100, firstPages: 200, searches: 50 };

function percentiles(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! * 10) / 10;
  return { count: sorted.length, p50Ms: at(0.5), p95Ms: at(0.95), maxMs: at(1) };
}

export async function runPickerBench(stack: BenchStack, options: typeof DEFAULT_PICKER_OPTIONS) {
  const api = (path: string, token: string, method = 'GET', body?: unknown) => callApi(stack, method, path, token, body);
  const seedStarted = performance.now();
  const orgs: { slug: string; token: string }[] = [];
  for (let o = 0; o < options.organizations; o++) {
    const org = await api('/api/v1/orgs', stack.adminToken, 'POST', { slug: `picker-${o}-${Date.now()}`, name: `Picker ${o}` });
    const { token } = await api(`/api/v1/orgs/${org.slug}/tokens`, stack.adminToken, 'POST');
    const connection = await stack.db
      .insertInto('connections')
      .values({ organization_id: org.id, provider: 'azure-devops', base_url: `https://dev.azure.com/picker-${o}`, external_key: `https://dev.azure.com/picker-${o}`, account: 'bench', status: 'active' })
      .returning('id')
      .executeTakeFirstOrThrow();
    await sql`
      insert into repositories (organization_id, connection_id, provider, external_id, full_name, project)
      select ${org.id}::uuid, ${connection.id}::uuid, 'azure-devops', g::text,
        case when g % 2 = 0 then 'Project-' || (g % 100) || '/repo-' || g else 'team/repo-' || g end,
        case when g % 2 = 0 then 'Project-' || (g % 100) end
      from generate_series(1, ${options.repositoriesPerOrg}) g`.execute(stack.db);
    orgs.push({ slug: org.slug, token: token! });
  }
  await sql`analyze repositories`.execute(stack.db);
  const seedMs = Math.round(performance.now() - seedStarted);

  const timed = async (path: string, token: string) => {
    const started = performance.now();
    const body = await api(path, token);
    return { ms: performance.now() - started, body };
  };
  const firstPage: number[] = [];
  for (let i = 0; i < options.firstPages; i++) {
    const org = orgs[i % orgs.length]!;
    firstPage.push((await timed(`/api/v1/orgs/${org.slug}/repositories?limit=${options.pageLimit}`, org.token)).ms);
  }
  // Every page of one organization, following nextCursor to the end.
  const walk: number[] = [];
  const target = orgs[0]!;
  let cursor: string | undefined;
  let seen = 0;
  do {
    const { ms, body } = await timed(`/api/v1/orgs/${target.slug}/repositories?limit=${options.pageLimit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, target.token);
    walk.push(ms);
    seen += (body.items as unknown[]).length;
    cursor = body.nextCursor as string | undefined;
  } while (cursor);
  if (seen !== options.repositoriesPerOrg) throw new Error(`the cursor walk saw ${seen} repositories, not ${options.repositoriesPerOrg}`);
  const search: number[] = [];
  for (let i = 0; i < options.searches; i++) {
    const org = orgs[i % orgs.length]!;
    search.push((await timed(`/api/v1/orgs/${org.slug}/repositories?q=repo-${(i * 197) % options.repositoriesPerOrg}&limit=${options.pageLimit}`, org.token)).ms);
  }
  return {
    options,
    rowsInTable: options.organizations * options.repositoriesPerOrg,
    seedMs,
    firstPage: percentiles(firstPage),
    cursorWalk: { ...percentiles(walk), pages: walk.length, totalMs: Math.round(walk.reduce((a, b) => a + b, 0)) },
    search: percentiles(search),
    peakRssMiB: stack.peakRssMiB(),
  };
}
