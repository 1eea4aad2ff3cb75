/**
 * Subscriber ref globs: `*` is any run of characters other than `/`, `**` any run at all, `?` one
 * character other than `/`, anything else itself. Matching walks the name once while tracking
 * every glob position it could be at (a Thompson-style simulation), so it takes at most
 * name × glob steps whatever the glob: no backtracking a tenant's pattern could make explode.
 */
const ONE = -1;
const SEGMENT = -2;
const ANY = -3;
const SLASH = '/'.charCodeAt(0);

/** Why a glob is refused at the API, or undefined when it is fine. */
export function refGlobProblem(glob: string): string | undefined {
  if (glob.includes('***')) return `"${glob}" has three or more \`*\` in a row: use \`*\` (within a segment) or \`**\` (across \`/\`)`;
  return undefined;
}

/** The glob as codes: a UTF-16 code unit matches itself; ONE, SEGMENT and ANY are the wildcards. */
function tokenize(glob: string): Int32Array {
  const tokens: number[] = [];
  for (let i = 0; i < glob.length; i++) {
    const code = glob.charCodeAt(i);
    if (glob[i] === '*') {
      let run = 1;
      while (glob[i + 1] === '*') (run++, i++);
      // A run of stars is one wildcard; `**` already takes in whatever `*` could.
      tokens.push(run > 1 ? ANY : SEGMENT);
    } else tokens.push(glob[i] === '?' ? ONE : code);
  }
  return Int32Array.from(tokens);
}

export function compileRefGlob(glob: string): (name: string) => boolean {
  const tokens = tokenize(glob);
  const end = tokens.length;
  // A star may match nothing: being before it means being after it too.
  const close = (states: Uint8Array<ArrayBuffer>) => {
    for (let i = 0; i < end; i++) if (states[i] && (tokens[i] === SEGMENT || tokens[i] === ANY)) states[i + 1] = 1;
    return states;
  };
  return (name) => {
    let states = close(new Uint8Array(end + 1).fill(1, 0, 1));
    let next = new Uint8Array(end + 1);
    for (let c = 0; c < name.length; c++) {
      const code = name.charCodeAt(c);
      next.fill(0);
      let alive = false;
      for (let i = 0; i < end; i++) {
        if (!states[i]) continue;
        const token = tokens[i]!;
        if (token === code || (token === ONE && code !== SLASH)) next[i + 1] = 1;
        else if (token === ANY || (token === SEGMENT && code !== SLASH)) next[i] = 1;
        else continue;
        alive = true;
      }
      if (!alive) return false;
      [states, next] = [close(next), states];
    }
    return states[end] === 1;
  };
}
