import { describe, expect, it } from 'vitest';
import { maxParseCost, parseCost } from '../../api/webhooks/parse-cost.ts';

const bytes = (text: string) => new TextEncoder().encode(text);
/** `{"padding":[unit,unit,…]}` of about `size` bytes. */
const padded = (unit: string, size: number) => bytes(`{"padding":[${Array.from({ length: Math.floor(size / (unit.length + 1)) }, () => unit).join(',')}]}`);

/** parseCost (api/webhooks/parse-cost.ts): what a body's JSON would take of the heap once parsed, counted from its bytes. */
describe('parseCost', () => {
  it('counts what is outside strings only: brackets, braces and quotes inside a string (escaped or not) are its characters', () => {
    const brackets = bytes('{"a":"{{{{[[[[\\"]]]]}}}}\\\\xx"}');
    const plain = bytes(`{"a":"${'x'.repeat(brackets.length - 8)}"}`);
    expect(brackets.length).toBe(plain.length);
    expect(parseCost(brackets)).toBe(parseCost(plain));
  });

  it('counts a non-ASCII body as two bytes a character (its text and strings may be two-byte)', () => {
    const wide = bytes('{"a":"éé"}');
    const narrow = bytes('{"a":"eeee"}');
    expect(wide.length).toBe(narrow.length);
    // The string's 4 bytes twice, and the whole text twice.
    expect(parseCost(wide) - parseCost(narrow)).toBe(4 + wide.length);
  });

  it("keeps the densest provider JSON (a Bitbucket push of 1-byte ref names and object ids) under the bound, and `[{},…]`, `[[],…]`, `[[[…]]]` over it", () => {
    const size = 1024 * 1024;
    const bitbucket = bytes(JSON.stringify({ eventKey: 'repo:refs_changed', changes: Array.from({ length: Math.floor(size / 52) }, (_, i) => ({ refId: `refs/heads/${i % 10}`, fromHash: 'a', toHash: 'b' })) }));
    expect(parseCost(bitbucket)).toBeLessThan(maxParseCost(bitbucket.length));
    for (const costly of [padded('{}', size), padded('[]', size), padded('[[]]', size), bytes(`${'['.repeat(size / 2)}${']'.repeat(size / 2)}`)]) {
      expect(parseCost(costly)).toBeGreaterThan(maxParseCost(costly.length));
    }
  });

  it('stops counting once past its limit', () => {
    const costly = padded('{}', 1024 * 1024);
    const counted = parseCost(costly, 1000);
    expect(counted).toBeGreaterThan(1000);
    expect(counted).toBeLessThan(1000 + 200);
  });
});
