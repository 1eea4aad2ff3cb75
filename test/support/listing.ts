import { expect } from 'vitest';
import type { ProviderAdapter, RepositoryPage } from '../../activities/providers/port.ts';
import type { RefreshResult } from '../../workflows/contract.ts';
import { resultOf, type Harness } from './harness.ts';

/**
 * Walks a repository listing the way the refresh activity does, one page at a time in breadth-first
 * order: from the first page, each page's fanOut cursors and then its nextCursor, each cursor once.
 */
export async function walkListing(adapter: Pick<ProviderAdapter, 'listRepositoriesPage'>): Promise<(RepositoryPage & { cursor?: string })[]> {
  const pages: (RepositoryPage & { cursor?: string })[] = [];
  const queue: (string | undefined)[] = [undefined];
  const seen = new Set<string | undefined>(queue);
  while (queue.length > 0) {
    const cursor = queue.shift();
    const page = await adapter.listRepositoriesPage(cursor === undefined ? {} : { cursor });
    pages.push({ cursor, ...page });
    for (const next of [...(page.fanOut ?? []), ...(page.nextCursor ? [page.nextCursor] : [])]) {
      if (seen.has(next)) continue;
      seen.add(next);
      queue.push(next);
    }
  }
  return pages;
}

/** Asks the API to refresh the organization's repository cache (202) and waits for the run's result. */
export async function refreshOrganization(h: Harness, org: { slug: string; token: string }): Promise<RefreshResult> {
  const res = await h.request('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, { token: org.token });
  expect(res.status).toBe(202);
  return resultOf<RefreshResult>(h, ((await res.json()) as { workflowId: string }).workflowId);
}
