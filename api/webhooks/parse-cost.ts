/**
 * What JSON.parse would take of V8's heap to hold a body, counted from its bytes before it is
 * parsed: a tenant signs its own hook's bodies, and JSON built to be costly once parsed (`[{},{},…]`:
 * 25 MiB of it took ~720 MiB of heap) made a heap larger than the API's memory limit. JSON.parse
 * cannot be stopped partway: a Worker's heap limit (resourceLimits) does not end it (V8 raises the
 * limit 16 MiB at a time until the parse is done) and, past it, Node 20 often aborts the whole
 * process (README: Bodies too costly to parse), so the bound is this count, before the parse.
 *
 * An upper bound of V8's objects (64-bit, no pointer compression, as Node 20 runs): each value a
 * slot in its parent (8 bytes), an object its header and four in-object slots (56), an array its
 * header and its elements' store (48), a string its header and its characters (24 + its bytes,
 * twice that when it holds a non-ASCII byte: it may be two bytes a character), a number a
 * HeapNumber (16: a small integer takes none), and a key, the first time it is seen, as a string of
 * its own plus what a distinct key costs in maps (later, its slot). Plus the decoded text (twice the
 * bytes when one is not ASCII).
 * `limit`: counting stops once past it.
 * Checked against measured heaps in bench/parse-cost.ts.
 */
/** What a key costs beyond its string: a distinct key makes a map and descriptors (~80 bytes measured). */
const KEY = 80;
/** Distinct keys remembered; past them every new-looking key is counted as distinct (more, never less). */
const MAX_KEYS = 65_536;

/** The keys seen so far, by their bytes (a hash of them, then the bytes compared). */
function distinctKeys() {
  const byHash = new Map<number, Uint8Array[]>();
  let count = 0;
  return {
    /** Whether body[from, to) was seen as a key already; remembers it (while there is room). */
    seen(body: Uint8Array, from: number, to: number, hash: number): boolean {
      const same = byHash.get(hash);
      if (same) {
        for (const key of same) if (key.length === to - from && Buffer.compare(key, body.subarray(from, to)) === 0) return true;
      }
      if (count < MAX_KEYS) {
        const copy = body.slice(from, to);
        if (same) same.push(copy);
        else byHash.set(hash, [copy]);
        count++;
      }
      return false;
    },
  };
}

export function parseCost(body: Uint8Array, limit = Infinity): number {
  const keys = distinctKeys();
  let cost = 0;
  let nonAscii = false;
  const n = body.length;
  for (let i = 0; i < n; i++) {
    const b = body[i]!;
    // Past the limit, the rest need not be counted.
    if (cost > limit) return cost;
    switch (b) {
      case 0x7b: // {
        cost += 56 + 8;
        break;
      case 0x5b: // [
        cost += 48 + 8;
        break;
      case 0x22: {
        // A string: to its closing quote, over escapes.
        const start = i;
        let wide = false;
        let hash = 0x811c9dc5;
        for (i++; i < n; i++) {
          const c = body[i]!;
          if (c === 0x22) break;
          hash = Math.imul(hash ^ c, 0x01000193);
          if (c === 0x5c) i++;
          else if (c >= 0x80) wide = true;
        }
        const bytes = i - start - 1;
        if (wide) nonAscii = true;
        let next = i + 1;
        while (next < n && (body[next] === 0x20 || body[next] === 0x0a || body[next] === 0x0d || body[next] === 0x09)) next++;
        // A key (a colon next) is a string shared by every object that has it, and a distinct one
        // costs maps and their descriptors: counted the first time it is seen (its bytes compared).
        if (body[next] === 0x3a) {
          if (keys.seen(body, start + 1, i, hash)) cost += 8;
          else cost += 24 + 8 + (wide ? 2 * bytes : bytes) + KEY;
        } else cost += 24 + 8 + (wide ? 2 * bytes : bytes);
        break;
      }
      case 0x2d: // -
      case 0x30:
      case 0x31:
      case 0x32:
      case 0x33:
      case 0x34:
      case 0x35:
      case 0x36:
      case 0x37:
      case 0x38:
      case 0x39: {
        // A number: to its last digit, exponent or sign.
        for (i++; i < n; i++) {
          const c = body[i]!;
          if (!((c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x65 || c === 0x45 || c === 0x2b || c === 0x2d)) break;
        }
        i--;
        cost += 16 + 8;
        break;
      }
      case 0x74: // true
      case 0x66: // false
      case 0x6e: // null
        cost += 8;
        break;
    }
  }
  return cost + (nonAscii ? 2 * n : n);
}

/**
 * The most parseCost a body read on a thread may have: this many times webhooks.maxBodyBytes, so an
 * operator raising the body limit raises it with it. Measured at 25 MiB (bench/parse-cost.ts,
 * README: Bodies too costly to parse): real-shaped pushes of the recorded fixtures grown to the limit
 * count 2.4-4.3 per byte (their heap 2.4-3.0), a Bitbucket push of 1-byte ref names and object ids
 * among them; `[{},{},…]` 22 and `[[[…]]]` 29, counted as they weigh.
 */
export const PARSE_COST_PER_BODY_BYTE = 12;

export const maxParseCost = (maxBodyBytes: number) => PARSE_COST_PER_BODY_BYTE * maxBodyBytes;
