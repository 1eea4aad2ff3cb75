/**
 * What a small body (under webhooks.threadBodyBytes: read on the event loop) makes the receiver hold
 * until its INSERT ends: its events' JSON (serializeEvents), for a signed Bitbucket push of short ref
 * changes naming a repository of the longest name kept (1,024 bytes) with a sender of 255 bytes, the
 * most JSON a byte of body makes. Run: npx tsx bench/small-body-events.ts [KiB=255]
 */
import { normalizeDelivery } from '../api/webhooks/normalize.ts';
import { serializeEvents } from '../lib/db/repositories/deliveries.ts';

const bytes = Number(process.argv[2] ?? 255) * 1024;
const project = 'P'.repeat(500);
const slug = 's'.repeat(523);
const wrap = (changes: unknown[]) => ({ eventKey: 'repo:refs_changed', date: '2026-12-07T00:00:00Z', actor: { name: 'a'.repeat(255) }, repository: { id: 1, slug, name: slug, project: { key: project } }, changes });
const make = (i: number) => ({ refId: `refs/heads/${i}`, fromHash: 'a', toHash: 'b' });
let n = Math.floor(bytes / 50);
let body = JSON.stringify(wrap(Array.from({ length: n }, (_, i) => make(i))));
while (body.length > bytes) body = JSON.stringify(wrap(Array.from({ length: (n = Math.floor(n * 0.99)) }, (_, i) => make(i))));
const { events } = normalizeDelivery('bitbucket', { 'content-type': 'application/json', 'x-event-key': 'repo:refs_changed', 'x-request-id': 'r-1' }, body, { maxEventsLength: 50 * 1024 * 1024 });
const json = serializeEvents(events, 50 * 1024 * 1024);
console.log(JSON.stringify({ bodyBytes: body.length, events: events.length, eventsJsonBytes: json?.length, perBodyByte: Math.round(((json?.length ?? 0) / body.length) * 10) / 10 }));
