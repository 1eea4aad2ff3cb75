/**
 * Subscriber ref globs: `*` is any run of characters other than `/`, `**` any run at all, `?` one
 * character other than `/`, anything else itself. Matching walks the name once while tracking
 * every glob position it could be at (a Thompson-style simulation) as a bit set of 32-bit words,
 * so a name costs at most its length × ⌈(glob tokens + 1) / 32⌉ word steps (≤ 8 for the API's
 * 255-character globs) whatever the glob: no backtracking a tenant's pattern could make explode.
 */
const ONE = -1;
const SEGMENT = -2;
const ANY = -3;
const SLASH = '/'.charCodeAt(0);

/**
 * The longest branch or tag name (after `refs/heads/` or `refs/tags/`) events are recorded for, in
 * UTF-16 code units. GitHub refuses names over ~250 bytes and a file-system ref ends at 255 bytes
 * per path segment; this leaves room for nested names on self-hosted instances while bounding
 * what one event costs to match against an organization's globs (api/webhooks/normalize.ts leaves
 * longer ones out, and a longer name never matches a glob).
 */
export const MAX_REF_NAME_LENGTH = 1024;

/** Why a glob is refused at the API, or undefined when it is fine. */
export function refGlobProblem(glob: string): string | undefined {
  if (glob.includes('***')) return `"${glob}" has three or more \`*\` in a row: use \`*\` (within a segment) or \`**\` (across \`/\`)`;
  return undefined;
}

/** The glob as codes: a UTF-16 code unit matches itself; ONE, SEGMENT and ANY are the wildcards. */
function tokenize(glob: string): number[] {
  const tokens: number[] = [];
  for (let i = 0; i < glob.length; i++) {
    if (glob[i] === '*') {
      let run = 1;
      while (glob[i + 1] === '*') (run++, i++);
      // A run of stars is one wildcard; `**` already takes in whatever `*` could.
      tokens.push(run > 1 ? ANY : SEGMENT);
    } else tokens.push(glob[i] === '?' ? ONE : glob.charCodeAt(i));
  }
  return tokens;
}

export function compileRefGlob(glob: string): (name: string) => boolean {
  const tokens = tokenize(glob);
  const end = tokens.length;
  const words = (end >> 5) + 1;
  // Bit i of a set is glob position i (before token i); bit `end` is the whole glob matched.
  const any = new Int32Array(words);
  const star = new Int32Array(words);
  const one = new Int32Array(words);
  const staysOnOther = new Int32Array(words);
  const literals = new Map<number, Int32Array>();
  for (let i = 0; i < end; i++) {
    const token = tokens[i]!;
    const [word, bit] = [i >> 5, 1 << (i & 31)];
    if (token === ANY || token === SEGMENT) {
      star[word]! |= bit;
      staysOnOther[word]! |= bit;
      if (token === ANY) any[word]! |= bit;
    } else if (token === ONE) one[word]! |= bit;
    else {
      let set = literals.get(token);
      if (!set) literals.set(token, (set = new Int32Array(words)));
      set[word]! |= bit;
    }
  }
  // The positions a character moves on from: its literal, or `?` unless it is a `/`.
  const advancesOn = new Map<number, Int32Array>();
  for (const [code, set] of literals) advancesOn.set(code, code === SLASH ? set : set.map((w, i) => w | one[i]!));
  const advancesOnSlash = advancesOn.get(SLASH) ?? new Int32Array(words);
  const endWord = end >> 5;
  const endBit = 1 << (end & 31);
  // A star may match nothing: being before it means being after it too. Runs of stars are one
  // token, so no star follows a star and one shift closes the set.
  const closeInto = (from: Int32Array, advances: Int32Array, stays: Int32Array, into: Int32Array): number => {
    let carried = 0;
    let closeCarried = 0;
    let alive = 0;
    for (let w = 0; w < words; w++) {
      const states = from[w]!;
      const moved = states & advances[w]!;
      let next = (moved << 1) | carried | (states & stays[w]!);
      carried = moved >>> 31;
      const beforeStar = next & star[w]!;
      next |= (beforeStar << 1) | closeCarried;
      closeCarried = beforeStar >>> 31;
      into[w] = next;
      alive |= next;
    }
    return alive;
  };
  const start = new Int32Array(words);
  start[0] = 1;
  const nothing = new Int32Array(words);
  closeInto(start, nothing, start.map(() => -1), start);
  return (name) => {
    let states = Int32Array.from(start);
    let next = new Int32Array(words);
    for (let c = 0; c < name.length; c++) {
      const code = name.charCodeAt(c);
      const slash = code === SLASH;
      const advances = slash ? advancesOnSlash : (advancesOn.get(code) ?? one);
      if (closeInto(states, advances, slash ? any : staysOnOther, next) === 0) return false;
      [states, next] = [next, states];
    }
    return (states[endWord]! & endBit) !== 0;
  };
}

const compiled = new Map<string, (name: string) => boolean>();
/**
 * Compiled globs kept at once: one organization at the API's maximum (100 subscribers × 50 globs).
 * A glob of 255 distinct characters keeps 255 eight-word sets, ~8 KiB: at most ~40 MiB.
 */
const COMPILED_KEPT = 5_000;

/**
 * Whether a branch or tag name matches a glob, compiling each glob once (kept, least recently
 * used dropped first). A name longer than MAX_REF_NAME_LENGTH matches no glob.
 */
export function refGlobMatches(glob: string, name: string): boolean {
  if (name.length > MAX_REF_NAME_LENGTH) return false;
  let matcher = compiled.get(glob);
  if (matcher) compiled.delete(glob);
  else {
    matcher = compileRefGlob(glob);
    if (compiled.size >= COMPILED_KEPT) compiled.delete(compiled.keys().next().value!);
  }
  compiled.set(glob, matcher);
  return matcher(name);
}
