import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEventActivities, type RecordedDelivery } from '../../activities/events.ts';
import { MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION, MAX_REF_GLOBS_PER_ORGANIZATION, MAX_SUBSCRIBERS_PER_ORGANIZATION } from '../../api/routes/subscribers.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { createLogger } from '../../lib/logger.ts';
import { MAX_REF_NAME_LENGTH } from '../../lib/ref-glob.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { eventsOfDelivery, seedAttachedRepository, send, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';

/**
 * What one event may cost the shared worker is bounded by what a tenant controls: at most 100
 * subscribers per organization, 50 globs of 255 characters each, matched in word steps per
 * character of a branch or tag name of at most MAX_REF_NAME_LENGTH (longer ones are left out at
 * the receiver, with a 200, never a 4xx the provider would count against its hook).
 */
describe('the bounds on matching events against subscribers (real PostgreSQL)', () => {
  let h: Harness;
  let fake: FakeSubscriber;
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    fake = await startFakeSubscriber();
  });
  afterAll(async () => {
    await fake?.close();
    await h?.close();
  });

  it(`refuses an organization's subscriber beyond ${MAX_SUBSCRIBERS_PER_ORGANIZATION} (409 naming the limit)`, async () => {
    const o = await createOrgWithToken(h);
    const create = () => h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: fake.url } });
    const ids: string[] = [];
    for (let i = 0; i < MAX_SUBSCRIBERS_PER_ORGANIZATION; i++) {
      const res = await create();
      expect(res.status, await res.clone().text()).toBe(201);
      ids.push(((await res.json()) as { id: string }).id);
    }
    const refused = await create();
    expect(refused.status).toBe(409);
    expect(refused.headers.get('content-type')).toBe('application/problem+json');
    expect(await refused.json()).toMatchObject({ status: 409, limit: MAX_SUBSCRIBERS_PER_ORGANIZATION, detail: expect.stringContaining(`already has ${MAX_SUBSCRIBERS_PER_ORGANIZATION} subscribers`) });
    // Another organization's count is its own.
    const other = await createOrgWithToken(h);
    expect((await h.request('POST', `/api/v1/orgs/${other.org.slug}/subscribers`, { token: other.token, body: { url: fake.url } })).status).toBe(201);
    // Deleting one makes room for another.
    expect((await h.request('DELETE', `/api/v1/orgs/${o.org.slug}/subscribers/${ids[0]}`, { token: o.token })).status).toBe(204);
    expect((await create()).status).toBe(201);
  });

  it(`refuses ref globs past ${MAX_REF_GLOBS_PER_ORGANIZATION} globs / ${MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION} characters an organization (409 naming the limits), and records a maximal event against the costliest set within them`, async () => {
    const o = await createOrgWithToken(h);
    const create = (refGlobs: string[]) => h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: fake.url, refGlobs } });
    // The costliest set the limits let through: a glob costs ⌈(length + 1) / 32⌉ word steps a character,
    // so 500 globs of 32 characters (2 each), 16,000 characters.
    const tail = 'bcdefghijk';
    const long = [...tail].map((letter) => `*${'a*'.repeat(15)}${letter}`);
    for (let i = 0; i < 49; i++) expect((await create(long)).status).toBe(201);
    // The one the event is about, behind 490 globs of 15,680 characters: 500 globs, 15,971 characters.
    const matching = await create(['a**', ...long.slice(0, 9)]);
    expect(matching.status, await matching.clone().text()).toBe(201);
    const matchingId = ((await matching.json()) as { id: string }).id;

    // One glob more is refused; a subscriber without globs is not.
    const refused = await create(['main']);
    expect(refused.status).toBe(409);
    expect(refused.headers.get('content-type')).toBe('application/problem+json');
    expect(await refused.json()).toMatchObject({
      status: 409,
      limits: { refGlobs: MAX_REF_GLOBS_PER_ORGANIZATION, refGlobCharacters: MAX_REF_GLOB_CHARACTERS_PER_ORGANIZATION },
      detail: expect.stringContaining('have 500 ref globs of 15971 characters'),
    });
    const unfiltered = await create([]);
    expect(unfiltered.status).toBe(201);
    const unfilteredId = ((await unfiltered.json()) as { id: string }).id;
    // Characters count too: another organization's subscriber with the most a request takes (50 globs of 255) is
    // created, and a second one of 15 globs of 255 would pass 16,384 characters with 65 globs.
    const other = await createOrgWithToken(h);
    const widest = (letters: string) => [...letters].map((letter) => `**${'a*'.repeat(126)}${letter}`);
    const createFor = (refGlobs: string[]) => h.request('POST', `/api/v1/orgs/${other.org.slug}/subscribers`, { token: other.token, body: { url: fake.url, refGlobs } });
    const fullest = await createFor(widest('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx'));
    expect(fullest.status, await fullest.clone().text()).toBe(201);
    const tooWide = await createFor(widest('ABCDEFGHIJKLMNO'));
    expect(tooWide.status).toBe(409);
    expect(await tooWide.json()).toMatchObject({ detail: expect.stringContaining('have 50 ref globs of 12750 characters; with these 15 of 3825') });

    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `acme/${randomUUID().slice(0, 8)}` };
    const { connectionId } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', ...repository });
    const deliveryId = randomUUID();
    const event: NormalizedEvent = { provider: 'gitlab', deliveryId, kind: 'push', repository, ref: { type: 'branch', name: 'a'.repeat(MAX_REF_NAME_LENGTH), before: 'a1', after: 'b2' } };
    const { recordEvent } = createEventActivities({ db: h.db, logger: createLogger('test', 'silent'), deliveryDeadlineSeconds: 60 });
    const cpuBefore = process.cpuUsage();
    const recorded: RecordedDelivery = await new MockActivityEnvironment().run(recordEvent, { provider: 'gitlab' as const, deliveryId, receivedAt: new Date().toISOString(), events: [event], connectionId });
    const cpu = process.cpuUsage(cpuBefore);
    console.log(`recorded one ${MAX_REF_NAME_LENGTH}-character push against the costliest globs within the limits: ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms CPU`);
    expect(recorded).toMatchObject({ recorded: 1, dispatches: expect.arrayContaining([expect.objectContaining({ subscriberId: matchingId }), expect.objectContaining({ subscriberId: unfilteredId })]) });
    expect('dispatches' in recorded && recorded.dispatches).toHaveLength(2);
  }, 120_000);

  it('acknowledges a delivery whose ref is over the limit as not acted on (200), recording nothing for it', async () => {
    const o = await createOrgWithToken(h);
    const repository = { externalId: uniqueExternalId('gitlab'), fullName: `acme/${randomUUID().slice(0, 8)}` };
    const { hook } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', ...repository });
    const payload = { ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), ref: `refs/heads/${'a'.repeat(100_000)}` };
    const deliveryId = randomUUID();
    const res = await send(h, delivery('gitlab', payload, { deliveryId, ...hook }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ignored', reason: 'names over the length limits' });
    expect(await eventsOfDelivery(h.db, 'gitlab', deliveryId)).toEqual([]);
    expect(h.logs.join('')).toContain('over the length limits');
  });
});
