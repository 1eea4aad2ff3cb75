import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The README and docs/*.md link into each other by heading anchors (the README's Benchmarks section
 * into docs/benchmarks-log.md and back): a heading renamed or moved breaks them silently, so every
 * relative link must name a file that exists and, with a #fragment, a heading in it.
 */
const root = resolve(import.meta.dirname, '../..');
const docs = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** The text with fenced code blocks blanked, lines kept (a `#` line there is not a heading). */
const unfenced = (markdown: string) =>
  markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, (block) => block.replace(/[^\n]/g, ''));
/** The text outside code blocks and code spans (a link there is not a link). */
const prose = (markdown: string) => unfenced(markdown).replace(/`[^`\n]*`/g, '');

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const [, heading] of unfenced(markdown).matchAll(/^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$/gm)) {
    const text = heading!.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
    const slug = text.toLowerCase().replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '').replace(/ /g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

/** Relative links `[text](target)` of a document, with the line each starts on. */
function links(markdown: string): { target: string; line: number }[] {
  const text = prose(markdown);
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)]
    .map((m) => ({ target: m[1]!, line: text.slice(0, m.index).split('\n').length }))
    .filter(({ target }) => !/^[a-z][a-z0-9+.-]*:/i.test(target));
}

describe('links between the README and docs/', () => {
  it('finds the headings GitHub would anchor', () => {
    expect([...anchors('## Worker memory and CPU per event (issue #16)\n### The `attach`\'s floor\n## A\n## A\n```\n# not a heading\n```\n')])
      .toEqual(['worker-memory-and-cpu-per-event-issue-16', 'the-attachs-floor', 'a', 'a-1']);
  });

  it.each(docs)('every relative link of %s names a file and a heading that exist', (doc) => {
    const broken: string[] = [];
    for (const { target, line } of links(readFileSync(join(root, doc), 'utf8'))) {
      const [path, fragment] = target.split('#') as [string, string | undefined];
      const file = path === '' ? join(root, doc) : resolve(dirname(join(root, doc)), decodeURI(path));
      if (!existsSync(file)) broken.push(`${doc}:${line} ${target}: no file ${relative(root, file)}`);
      else if (fragment !== undefined && file.endsWith('.md') && !anchors(readFileSync(file, 'utf8')).has(decodeURIComponent(fragment)))
        broken.push(`${doc}:${line} ${target}: no heading #${fragment} in ${relative(root, file)}`);
    }
    expect(broken).toEqual([]);
  });
});
