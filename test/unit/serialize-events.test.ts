import { describe, expect, it } from 'vitest';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { serializeEvents } from '../../lib/db/repositories/deliveries.ts';

/** The intake row's events as the receiver writes them: JSON.stringify's text exactly, or nothing past the limit. */
describe('serializeEvents', () => {
  const event = (i: number): NormalizedEvent => ({ provider: 'bitbucket', deliveryId: 'd', kind: 'push', repository: { externalId: '1', fullName: 'P/r' }, ref: { type: 'branch', name: `b${i}`, before: 'a', after: 'b' } });

  it.each([0, 1, 255, 256, 257, 513, 10_000])('%i events: the same text as JSON.stringify, undefined one byte under its length', (n) => {
    const events = Array.from({ length: n }, (_, i) => event(i));
    const json = JSON.stringify(events);
    expect(serializeEvents(events, 1 << 30)).toBe(json);
    expect(serializeEvents(events, json.length)).toBe(json);
    if (n > 0) expect(serializeEvents(events, json.length - 1)).toBeUndefined();
  });

  it.each([1, 256, 257, 10_000])('%i events named in 3-byte characters: the limit counts UTF-8 bytes, not characters', (n) => {
    const events = Array.from({ length: n }, (_, i) => ({ ...event(i), repository: { externalId: '1', fullName: `P/${'\u4e2d'.repeat(20)}` }, sender: '\u{1F600}'.repeat(5) }));
    const json = JSON.stringify(events);
    const bytes = Buffer.byteLength(json);
    expect(bytes).toBeGreaterThan(json.length + 40 * n);
    expect(serializeEvents(events, json.length)).toBeUndefined();
    expect(serializeEvents(events, bytes - 1)).toBeUndefined();
    expect(serializeEvents(events, bytes)).toBe(json);
  });

  it('stops near the limit, not at the end of a delivery of many large events', () => {
    let written = 0;
    const big = Array.from({ length: 100_000 }, (_, i) => {
      const e = { ...event(i), sender: 's'.repeat(1000) };
      return { ...e, toJSON: () => (written++, e) } as NormalizedEvent;
    });
    expect(serializeEvents(big, 1024 * 1024)).toBeUndefined();
    // ~1 MiB of ~100 MB: a few chunks of 256 events, not the whole list.
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThanOrEqual(1024);
  });
});
