import type { ProviderAdapter, RepositoryPage } from '../../activities/providers/port.ts';

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
