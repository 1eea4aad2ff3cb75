/**
 * What the largest legitimate provider answers count (lib/parse-cost.ts) against the heap JSON.parse
 * really takes of them, and how long the count takes on the main thread against the parse it would
 * prevent, for answers built to be costly: the bounds of activities/providers/answer.ts are chosen
 * from these rows. Legitimate answers come from the fake providers of test/fakes (their wire shapes):
 * a GitLab page of 100 projects and one of 100 hooks, a Bitbucket page of 1,000 repositories and one
 * of 1,000 webhooks, one Azure DevOps project's repositories unpaged (8,000, and as many as fit the
 * 8 MiB cap), a subscriptions query of 3,000; GitHub's page of 100 repositories is built from the
 * recorded push's `repository` (~5.3 KB, the shape GitHub lists). Costly ones fill the 8 MiB cap, or
 * are the most of their shape that counts within the answer bound (what a server may still have parsed).
 * Times are one parse (parseMs) and the median of three counts, whole (countMs) and up to the bound.
 *
 * Run: node --expose-gc --import tsx bench/provider-answer-cost.ts   (writes bench/results/provider-answer-cost.json)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { parseCost } from '../lib/parse-cost.ts';
import { DEFAULT_MAX_BODY_BYTES } from '../activities/outbound.ts';
import { MAX_ANSWER_PARSE_COST } from '../activities/providers/answer.ts';
import { startFakeGitlab } from '../test/fakes/gitlab.ts';
import { startFakeBitbucket } from '../test/fakes/bitbucket.ts';
import { fillLargeOrganization, startFakeAzureDevOps } from '../test/fakes/azure-devops.ts';

const MiB = 1024 * 1024;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

async function get(url: string, headers: Record<string, string>, init: RequestInit = {}): Promise<Buffer> {
  const response = await fetch(url, { ...init, headers: { accept: 'application/json', ...headers, ...(init.headers as Record<string, string> | undefined) } });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return Buffer.from(await response.arrayBuffer());
}

const answers: Record<string, Buffer> = {};

const gitlab = await startFakeGitlab();
gitlab.addToken({ token: 'glpat-bench', username: 'bench', scopes: ['api', 'read_user', 'read_repository'] });
for (let i = 0; i < 100; i++) gitlab.addProject({ pathWithNamespace: `acme-corporation/platform-team/service-${i}-with-a-longer-name` });
const glHeaders = { 'private-token': 'glpat-bench' };
answers['gitlab 100 projects (simple, as listed)'] = await get(`${gitlab.url}/api/v4/projects?membership=true&min_access_level=40&simple=true&pagination=keyset&order_by=id&sort=asc&per_page=100`, glHeaders);
answers['gitlab 100 projects (full)'] = await get(`${gitlab.url}/api/v4/projects?membership=true&min_access_level=40&pagination=keyset&order_by=id&sort=asc&per_page=100`, glHeaders);
gitlab.listEndlessly('listHooks', 'onward');
answers['gitlab 100 hooks'] = await get(`${gitlab.url}/api/v4/projects/1/hooks?per_page=100&page=1`, glHeaders);
await gitlab.close();

const bitbucket = await startFakeBitbucket();
bitbucket.addToken({ token: 'bb-bench', username: 'bench' });
bitbucket.addProject({ key: 'PLATFORM', name: 'Platform engineering' });
for (let i = 0; i < 1000; i++) bitbucket.addRepository({ projectKey: 'PLATFORM', slug: `service-${i}-with-a-longer-name`, defaultBranch: 'refs/heads/main' });
const bbHeaders = { authorization: 'Bearer bb-bench' };
answers['bitbucket 1,000 repositories'] = await get(`${bitbucket.url}/rest/api/latest/repos?permission=REPO_ADMIN&limit=1000&start=0`, bbHeaders);
bitbucket.listEndlessly('listWebhooks', 'onward');
answers['bitbucket 1,000 webhooks'] = await get(`${bitbucket.url}/rest/api/latest/projects/PLATFORM/repos/service-0-with-a-longer-name/webhooks?limit=1000&start=0`, bbHeaders);
await bitbucket.close();

for (const [label, repositories] of [['8,000', 8_000], ['10,500 (the 8 MiB cap)', 10_500]] as const) {
  const azure = await startFakeAzureDevOps();
  azure.addPat({ pat: 'ado-bench', displayName: 'bench' });
  fillLargeOrganization(azure, { projects: 1, repositoriesPerProject: repositories, subscriptions: label === '8,000' ? 3_000 : 0 });
  const adoHeaders = { authorization: `Basic ${Buffer.from(':ado-bench').toString('base64')}` };
  answers[`azure-devops one project's ${label} repositories`] = await get(`${azure.url}/project-0/_apis/git/repositories?api-version=7.1`, adoHeaders);
  if (label === '8,000') {
    const repository = azure.subscriptions()[0]!.publisherInputs!.repository!;
    const query = { publisherId: 'tfs', consumerId: 'webHooks', consumerActionId: 'httpRequest', publisherInputFilters: [{ conditions: [{ inputId: 'repository', operator: 'equals', inputValue: repository }] }] };
    answers['azure-devops subscriptions query (one repository)'] = await get(`${azure.url}/_apis/hooks/subscriptionsquery?api-version=7.1`, { ...adoHeaders, 'content-type': 'application/json' }, { method: 'POST', body: JSON.stringify(query) });
    answers['azure-devops all 3,000 subscriptions (unfiltered)'] = await get(`${azure.url}/_apis/hooks/subscriptions?api-version=7.1`, adoHeaders);
  }
  await azure.close();
}

{
  // Non-ASCII names: the whole text is then counted two bytes a character.
  const azure = await startFakeAzureDevOps();
  azure.addPat({ pat: 'ado-bench', displayName: 'bench' });
  azure.addProject({ name: 'проект' });
  for (let r = 0; r < 8_800; r++) azure.addRepository({ projectName: 'проект', name: `сервис-${r}`, defaultBranch: 'refs/heads/main' });
  const adoHeaders = { authorization: `Basic ${Buffer.from(':ado-bench').toString('base64')}` };
  answers["azure-devops one project's 8,800 repositories, non-ASCII names (the 8 MiB cap)"] = await get(`${azure.url}/${encodeURIComponent('проект')}/_apis/git/repositories?api-version=7.1`, adoHeaders);
  await azure.close();
}

const pushed = JSON.parse(readFileSync(new URL('../test/fixtures/github/push-branch-updated.json', import.meta.url), 'utf8')) as { repository: Record<string, unknown> };
const githubRepositories = Array.from({ length: 100 }, (_, i) => JSON.parse(JSON.stringify(pushed.repository).replaceAll('Hello-World', `service-${i}-with-a-longer-name`)) as Record<string, unknown>);
for (const [i, repo] of githubRepositories.entries()) repo.id = 700_000_000 + i;
answers['github 100 repositories (installation page)'] = Buffer.from(JSON.stringify({ total_count: 100, repository_selection: 'all', repositories: githubRepositories }));

/** JSON built to be costly, filling the 8 MiB cap. */
const cap = DEFAULT_MAX_BODY_BYTES;
const nested = (bytes: number) => Buffer.from(`[${'['.repeat(bytes / 2 - 2)}${']'.repeat(bytes / 2 - 2)}]`);
const objects = (bytes: number) => Buffer.from(`[${'{},'.repeat(Math.floor((bytes - 4) / 3))}{}]`);
const arrays = (bytes: number) => Buffer.from(`[${'[],'.repeat(Math.floor((bytes - 4) / 3))}[]]`);
/** The most bytes of `make` that count within the answer bound: what a server may still have parsed. */
function atBound(make: (bytes: number) => Buffer): Buffer {
  let low = 2;
  let high = cap;
  while (high - low > 1024) {
    const middle = Math.floor((low + high) / 4) * 2;
    if (parseCost(make(middle), MAX_ANSWER_PARSE_COST) <= MAX_ANSWER_PARSE_COST) low = middle;
    else high = middle;
  }
  return make(low);
}
const costly: Record<string, Buffer> = {
  '[[[…]]] (8 MiB)': nested(cap),
  '[{},{},…] (8 MiB)': objects(cap),
  '[[],[],…] (8 MiB)': arrays(cap),
  '[[[…]]] at the answer bound': atBound(nested),
  '[{},{},…] at the answer bound': atBound(objects),
  '[[],[],…] at the answer bound': atBound(arrays),
};

/** The heap the body's text and parsed value hold (after a full GC, both still referenced), and the parse's time. */
function heapOf(body: Buffer): { heap: number; parseMs: number } {
  gc!();
  gc!();
  const before = getHeapStatistics().used_heap_size;
  const started = performance.now();
  const text = new TextDecoder().decode(body);
  const value = JSON.parse(text) as unknown;
  const parseMs = performance.now() - started;
  gc!();
  gc!();
  const heap = getHeapStatistics().used_heap_size - before;
  return value === undefined || text.length < 0 ? { heap: 0, parseMs } : { heap, parseMs };
}

/** The median of three counts' times, in ms. */
function countMs(body: Buffer, limit = Infinity): number {
  const times = [0, 1, 2].map(() => {
    const started = performance.now();
    parseCost(body, limit);
    return performance.now() - started;
  });
  return times.sort((a, b) => a - b)[1]!;
}

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const rows = [];
for (const [name, body] of Object.entries({ ...answers, ...costly })) {
  const { heap, parseMs } = heapOf(body);
  const cost = parseCost(body);
  const row = {
    name,
    bodyBytes: body.length,
    heapMiB: round(heap / MiB),
    parseCostMiB: round(cost / MiB),
    costPerByte: round(cost / body.length),
    ratio: round(cost / heap, 2),
    parseMs: round(parseMs),
    countMs: round(countMs(body)),
    // What a refusal costs: the count stops once past the answer bound (activities/providers/answer.ts, MAX_ANSWER_PARSE_COST).
    countToBoundMs: round(countMs(body, MAX_ANSWER_PARSE_COST)),
  };
  console.log(JSON.stringify(row));
  rows.push(row);
}
writeFileSync(new URL('./results/provider-answer-cost.json', import.meta.url), `${JSON.stringify({ at: new Date().toISOString(), node: process.version, rows }, null, 2)}\n`);
process.exit(0);
