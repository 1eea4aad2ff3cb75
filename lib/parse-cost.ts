import { randomBytes } from 'node:crypto';

/**
 * What JSON.parse would take of V8's heap to hold a body, counted from its bytes before it is
 * parsed: a tenant signs its own hook's bodies, and JSON built to be costly once parsed (`[{},{},…]`:
 * 25 MiB of it took ~560 MiB of heap) made a heap larger than the API's memory limit. JSON.parse
 * cannot be stopped partway: a Worker's heap limit (resourceLimits) does not end it (V8 raises the
 * limit 16 MiB at a time until the parse is done) and, past it, Node 20 often aborts the whole
 * process (README: Bodies too costly to parse), so the bound is this count, before the parse.
 *
 * A model of V8's objects (64-bit, no pointer compression, as Node 20 runs), checked against the
 * heaps measured in bench/parse-cost.ts (count ≥ heap for every shape there, real and built to be
 * costly; not a proof that no other shape weighs more than it counts): each value a slot in its
 * parent (8 bytes), an object its header and four in-object slots (56), an array its header and its
 * elements' store (48), a string its header and its characters (24 + its bytes, twice that when it
 * holds a non-ASCII byte or a \u escape: it may be two bytes a character), a number a HeapNumber (16:
 * a small integer takes none). Of keys:
 * - a key's string, the first time its bytes are seen;
 * - a map (hidden class) per new (shape so far, key) transition: the same keys in a new order build
 *   new maps, and a branch off a shape that already has one copies its descriptors (24 bytes each);
 *   JSON.parse starts an object's maps from a root chosen by its number of named keys, so an
 *   object's transitions are counted at its `}`, from its length's root (the same keys in objects of
 *   other lengths are other maps: a second review's `{S[:1]}` … `{S[:124]}` counted 0.37 of its heap);
 * - an array-index key ("0" to "4294967294": the object gets an element store, a dictionary when
 *   sparse): 224 for the object's first, 72 for each more; a key with an escape may decode to one,
 *   so it is charged as both;
 * - an object of 125 or more named keys (V8 turns one of 128 into a dictionary; ~45-62 bytes a key
 *   measured): 72 a key.
 * Plus the decoded text (twice the bytes when one is not ASCII), and 4 KiB.
 * The keys and shapes seen are remembered by a hash of every byte with a per-process random seed,
 * at most BUCKET of them a hash: a key or shape that finds its bucket full is counted as new (more,
 * never less), so counting stays linear in the body whatever its keys.
 * `limit`: counting stops once past it.
 */
/** A new map (~80 bytes), its share of descriptors and of its parent's transitions. */
const TRANSITION = 128;
/** One descriptor, copied into a branch's own descriptor array. */
const DESCRIPTOR = 24;
/** An object's element store when it has an array-index key (~150-200 bytes measured with one). */
const ELEMENTS = 224;
/** One more array-index key (a number dictionary's entry of 3 words, its capacity up to 3 times its entries). */
const ELEMENT = 72;
/** Named keys in one object from which it is counted as a dictionary (V8: from 128). */
const DICTIONARY_FROM = 125;
/** A key of a dictionary object (measured 45-62). */
const DICTIONARY_KEY = 72;
/** What a parse takes beyond the model, whatever the body (measured: 10 bytes past it for 25 MiB of `[[[…]]]`). */
const PARSE = 4096;
/** Keys and transitions remembered; past them every new-looking one is counted as new (more, never less). */
const MAX_REMEMBERED = 65_536;
/** Entries a hash may hold; a key or transition finding its hash's bucket full is counted as new. */
const BUCKET = 8;
/** Keys longer than this are not remembered (always counted as new): comparing them would cost their length each time. */
const MAX_REMEMBERED_KEY = 256;
/** Transitions a map keeps (V8's kMaxNumberOfTransitions): past them an object goes dictionary. */
const MAX_TRANSITIONS = 1536;

const SEED = randomBytes(4).readUInt32LE(0);

/** 32-bit mix of two integers with the seed (murmur3's finalizer). */
function mix(a: number, b: number): number {
  let h = Math.imul(a ^ SEED, 0x9e3779b1) ^ b;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

/** The keys seen so far (as offsets into the body: compared in place) and the transitions between shapes (exported for its tests). */
export function memory(body: Uint8Array) {
  const keyBuckets = new Map<number, number[]>();
  const keyFrom: number[] = [];
  const keyTo: number[] = [];
  // Transition buckets: [parent, key, child] triples. Shape 0 is an empty object's.
  const transitionBuckets = new Map<number, number[]>();
  const children: number[] = [0];
  const roots = new Map<number, number>();
  const equal = (from: number, to: number, id: number) => {
    const other = keyFrom[id]!;
    if (keyTo[id]! - other !== to - from) return false;
    for (let i = 0; i < to - from; i++) if (body[from + i] !== body[other + i]) return false;
    return true;
  };
  return {
    /** The root shape of objects of `named` keys (V8: one map per in-object property count). */
    root(named: number): number {
      let r = roots.get(named);
      if (r === undefined) { r = children.length; children.push(0); roots.set(named, r); }
      return r;
    },
    /** The key body[from, to)'s id, and whether it is new; -1 when not remembered (counted as new every time). */
    key(from: number, to: number, hash: number): { id: number; fresh: boolean } {
      if (to - from > MAX_REMEMBERED_KEY) return { id: -1, fresh: true };
      const bucket = keyBuckets.get(hash);
      if (bucket) for (const id of bucket) if (equal(from, to, id)) return { id, fresh: false };
      if (keyFrom.length >= MAX_REMEMBERED || (bucket && bucket.length >= BUCKET)) return { id: -1, fresh: true };
      const id = keyFrom.length;
      keyFrom.push(from);
      keyTo.push(to);
      if (bucket) bucket.push(id);
      else keyBuckets.set(hash, [id]);
      return { id, fresh: true };
    },
    /**
     * The shape an object of shape `parent` gets by adding key `key`: its id (-1: not remembered), and
     * what building it costs (0 when it was built before).
     */
    transition(parent: number, key: number, depth: number): { child: number; cost: number } {
      if (parent < 0 || key < 0) return { child: -1, cost: TRANSITION + DESCRIPTOR * depth };
      const hash = mix(parent, key);
      const bucket = transitionBuckets.get(hash);
      if (bucket) for (let i = 0; i < bucket.length; i += 3) if (bucket[i] === parent && bucket[i + 1] === key) return { child: bucket[i + 2]!, cost: 0 };
      const cost = TRANSITION + (children[parent]! > 0 ? DESCRIPTOR * depth : 0);
      if (children[parent]! >= MAX_TRANSITIONS) return { child: -2, cost };
      if (children.length >= MAX_REMEMBERED || (bucket && bucket.length >= 3 * BUCKET)) return { child: -1, cost: TRANSITION + DESCRIPTOR * depth };
      const child = children.length;
      children.push(0);
      children[parent]!++;
      if (bucket) bucket.push(parent, key, child);
      else transitionBuckets.set(hash, [parent, key, child]);
      return { child, cost };
    },
  };
}

/** Whether body[from, to) is an array index: "0", or digits without a leading zero up to 4294967294. */
function arrayIndex(body: Uint8Array, from: number, to: number): boolean {
  const length = to - from;
  if (length === 0 || length > 10) return false;
  if (body[from] === 0x30) return length === 1;
  let value = 0;
  for (let i = from; i < to; i++) {
    const c = body[i]!;
    if (c < 0x30 || c > 0x39) return false;
    value = value * 10 + (c - 0x30);
  }
  return value <= 4294967294;
}

/** Per open object: its shape (-1 not remembered, -2 dictionary), named keys, array-index keys. */
const SHAPE = 0;
const NAMED = 1;
const INDEXED = 2;

export function parseCost(body: Uint8Array, limit = Infinity): number {
  const seen = memory(body);
  let objects = new Int32Array(3 * 64);
  let depth = 0;
  const starts: number[] = [];
  const pending: number[] = [];
  let cost = 0;
  let nonAscii = false;
  const n = body.length;
  for (let i = 0; i < n; i++) {
    const b = body[i]!;
    // Past the limit, the rest need not be counted.
    if (cost > limit) return cost;
    switch (b) {
      case 0x7b: {
        // {
        cost += 56 + 8;
        if (3 * depth + 3 > objects.length) {
          const grown = new Int32Array(objects.length * 2);
          grown.set(objects);
          objects = grown;
        }
        objects[3 * depth + SHAPE] = 0;
        objects[3 * depth + NAMED] = 0;
        objects[3 * depth + INDEXED] = 0;
        starts[depth] = pending.length;
        depth++;
        break;
      }
      case 0x7d: {
        // }
        if (depth > 0) {
          depth--;
          const at = 3 * depth;
          const from = starts[depth]!;
          const named = objects[at + NAMED]!;
          if (objects[at + SHAPE] !== -2 && named < DICTIONARY_FROM) {
            let shape = named > 0 ? seen.root(named) : 0;
            for (let k = from; k < pending.length; k++) {
              const { child, cost: built } = seen.transition(shape, pending[k]!, k - from);
              cost += built;
              if (child === -2) { cost += DICTIONARY_KEY * named; break; }
              shape = child;
            }
          }
          pending.length = from;
        }
        break;
      }
      case 0x5b: // [
        cost += 48 + 8;
        break;
      case 0x22: {
        // A string: to its closing quote, over escapes; hashed, every byte.
        const start = i;
        let wide = false;
        let nonAsciiByte = false;
        let escaped = false;
        let hash = 0x811c9dc5 ^ SEED;
        for (i++; i < n; i++) {
          const c = body[i]!;
          if (c === 0x22) break;
          hash = Math.imul(hash ^ c, 0x01000193);
          if (c === 0x5c) {
            escaped = true;
            i++;
            if (i >= n) break;
            const e = body[i]!;
            hash = Math.imul(hash ^ e, 0x01000193);
            // \uXXXX may be a character past \u00ff: the string is then two bytes a character.
            if (e === 0x75) wide = true;
          } else if (c >= 0x80) wide = nonAsciiByte = true;
        }
        const bytes = i - start - 1;
        // The text is two bytes a character only when a byte is not ASCII (an escape is ASCII).
        if (nonAsciiByte) nonAscii = true;
        const characters = wide ? 2 * bytes : bytes;
        let next = i + 1;
        while (next < n && (body[next] === 0x20 || body[next] === 0x0a || body[next] === 0x0d || body[next] === 0x09)) next++;
        if (body[next] !== 0x3a || depth === 0) {
          cost += 24 + 8 + characters;
          break;
        }
        // A key (a colon next) of the innermost open object.
        const at = 3 * (depth - 1);
        cost += 8;
        const index = arrayIndex(body, start + 1, i);
        if (index || escaped) {
          cost += objects[at + INDEXED]! === 0 ? ELEMENTS : ELEMENT;
          objects[at + INDEXED]!++;
          if (index) break;
        }
        const key = seen.key(start + 1, i, hash);
        if (key.fresh) cost += 24 + characters;
        const named = ++objects[at + NAMED]!;
        const shape = objects[at + SHAPE]!;
        if (shape === -2 || named >= DICTIONARY_FROM) {
          // A dictionary: every key an entry (the ones before it too, when it turns into one).
          cost += shape === -2 ? DICTIONARY_KEY : DICTIONARY_KEY * named;
          objects[at + SHAPE] = -2;
          break;
        }
        pending.push(key.id);
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
  return cost + (nonAscii ? 2 * n : n) + PARSE;
}

/**
 * The most parseCost a body read on a thread may have: this many times webhooks.maxBodyBytes, so an
 * operator raising the body limit raises it with it. Measured at 25 MiB (bench/parse-cost.ts,
 * README: Bodies too costly to parse): real-shaped pushes of the recorded fixtures grown to the limit
 * count 2.4-4.3 per byte (their heap 2.4-3.0), a Bitbucket push of 1-byte ref names and object ids
 * among them, and a GitHub-style push of 1-character file paths 9.0 (11.3 non-ASCII); `[{},{},…]`
 * 22 and `[[[…]]]` 29, counted as they weigh; the review's shapes (array-index keys, keys in new
 * orders) 12.6-38 per byte for 10.9-21.2 of heap.
 */
export const PARSE_COST_PER_BODY_BYTE = 12;

export const maxParseCost = (maxBodyBytes: number) => PARSE_COST_PER_BODY_BYTE * maxBodyBytes;
