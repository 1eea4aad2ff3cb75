/**
 * CPU of the receivers' normalization of a signed body of very many short ref changes (or
 * repositories), up to the events size limit's answer: normalizeDelivery, then serializeEvents
 * against twice webhooks.maxBodyBytes, as api/routes/webhooks.ts does on the acknowledging thread.
 * Run: npx tsx bench/normalize-bound.ts [rounds=3]
 */
import { normalizeDelivery } from '../api/webhooks/normalize.ts';
import { serializeEvents } from '../lib/db/repositories/deliveries.ts';

const MAX_BODY_BYTES = 25 * 1024 * 1024;
// Short object ids, as in the 446,158-change body: the most ref changes 25 MiB holds.
const before = 'a';
const after = 'b';

function fill(make: (i: number) => unknown, wrap: (items: unknown[]) => unknown): Buffer {
  // As many items as fit in MAX_BODY_BYTES.
  const one = JSON.stringify(make(100_000)).length + 1;
  let n = Math.floor((MAX_BODY_BYTES - 2_000) / one);
  let body = Buffer.from(JSON.stringify(wrap(Array.from({ length: n }, (_, i) => make(i)))));
  while (body.length > MAX_BODY_BYTES) {
    n = Math.floor(n * 0.99);
    body = Buffer.from(JSON.stringify(wrap(Array.from({ length: n }, (_, i) => make(i)))));
  }
  return body;
}

const cases = {
  bitbucket: {
    headers: { 'x-event-key': 'repo:refs_changed', 'x-request-id': 'r-1' },
    body: fill(
      (i) => ({ refId: `refs/heads/${i}`, fromHash: before, toHash: after }),
      (changes) => ({ eventKey: 'repo:refs_changed', actor: { name: 'a' }, repository: { id: 1, slug: 'r', project: { key: 'P' } }, changes }),
    ),
  },
  'azure-devops': {
    headers: {},
    body: fill(
      (i) => ({ name: `refs/heads/${i}`, oldObjectId: before, newObjectId: after }),
      (refUpdates) => ({ id: 'e-1', eventType: 'git.push', resource: { pushedBy: { uniqueName: 'a' }, repository: { id: 'r', name: 'r', project: { name: 'p' } }, refUpdates } }),
    ),
  },
  github: {
    headers: { 'x-github-event': 'installation_repositories', 'x-github-delivery': 'd-1' },
    body: fill(
      (i) => ({ id: i, full_name: `o/${i}` }),
      (repositories_added) => ({ action: 'added', installation: { id: 1 }, repositories_added, sender: { login: 'a' } }),
    ),
  },
} as const;

const rounds = Number(process.argv[2] ?? 3);
for (let round = 0; round < rounds; round++) {
  for (const [provider, { headers, body }] of Object.entries(cases)) {
    // The floor no bound removes: decoding and parsing the body (normalizeDelivery does both first).
    const parseCpu = process.cpuUsage();
    JSON.parse(new TextDecoder().decode(body));
    const parsed = process.cpuUsage(parseCpu);
    const cpu = process.cpuUsage();
    const wall = performance.now();
    const delivery = normalizeDelivery(provider as keyof typeof cases, headers, new Uint8Array(body), { maxEventsLength: 2 * MAX_BODY_BYTES });
    const json = delivery.events.length === 0 ? undefined : serializeEvents(delivery.events, 2 * MAX_BODY_BYTES);
    const used = process.cpuUsage(cpu);
    const answer = delivery.overLimit || (delivery.events.length > 0 && json === undefined) ? 'events over the size limit' : `${delivery.events.length} events`;
    console.log(`${provider}: body ${(body.length / 2 ** 20).toFixed(1)} MiB: ${answer}; parse alone ${((parsed.user + parsed.system) / 1000).toFixed(0)} ms CPU; normalize+serialize CPU ${((used.user + used.system) / 1000).toFixed(0)} ms, wall ${(performance.now() - wall).toFixed(0)} ms`);
  }
}
