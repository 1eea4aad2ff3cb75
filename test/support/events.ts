import { randomInt, randomUUID } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import { expect } from 'vitest';
import type { Db } from '../../lib/db/index.ts';
import type { Provider } from '../../lib/domain.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { startFakeSubscriber, type FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, GITHUB_FIXTURE_INSTALLATION_ID, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { deliveryUrlOf, seedConnection, seedRepository } from './attachments.ts';
import { TEST_WEBHOOK_SECRETS, type Harness } from './harness.ts';

/** A provider id no other test (or test file sharing the database) uses: deliveries match by it across organizations. */
export function uniqueExternalId(provider: Provider): string {
  return provider === 'azure-devops' ? randomUUID() : String(randomInt(100_000_000, 2_000_000_000));
}

/** Where and with what a delivery reaches the receiver as a hook of the connection would send it (GitHub: the App's secret). */
export interface DeliveringHook {
  url?: string;
  secret: string;
  basicAuthUser?: string;
}

/** The connection's own hook (its URL and webhook credential); GitHub deliveries are signed with the App's secret. */
export async function hookOfConnection(h: Harness, provider: Provider, connectionId: string): Promise<DeliveringHook> {
  if (provider === 'github') return { secret: TEST_WEBHOOK_SECRETS.github };
  const { secret, basicAuthUser } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider });
  return { url: deliveryUrlOf(provider, connectionId), secret, ...(basicAuthUser ? { basicAuthUser } : {}) };
}

/**
 * A repository in an organization's cache, attached, written directly (what connect, refresh and
 * attach leave behind) for tests about deliveries rather than hooks. Creates the connection too
 * unless one is given. `legacyHook` also records a hook from before per-connection credentials
 * (the global secret), as the migration marks them.
 */
export async function seedAttachedRepository(
  h: Harness,
  spec: { organizationId: string; provider: Provider; externalId: string; fullName: string; connectionId?: string; legacyHook?: boolean },
): Promise<{ connectionId: string; repositoryId: string; hook: DeliveringHook }> {
  const connectionId =
    spec.connectionId ??
    (spec.provider === 'github' ? await fixtureInstallationConnection(h, spec.organizationId) : undefined) ??
    (await seedConnection(h, { organizationId: spec.organizationId, provider: spec.provider, baseUrl: 'https://provider.test' }));
  const repositoryId = await seedRepository(h, { ...spec, connectionId });
  const attachment = await h.db.insertInto('attachments').values({ organization_id: spec.organizationId, repository_id: repositoryId, status: 'attached' }).returning('id').executeTakeFirstOrThrow();
  if (spec.legacyHook) {
    await h.db.insertInto('hooks').values({ attachment_id: attachment.id, provider_hook_id: `legacy-${repositoryId}`, events: JSON.stringify(['push']), credential_version: null }).execute();
  }
  return { connectionId, repositoryId, hook: await hookOfConnection(h, spec.provider, connectionId) };
}

/**
 * The organization's connection bound to the installation the recorded GitHub payloads come from
 * (GitHub deliveries reach only connections bound to their installation; one per organization).
 */
async function fixtureInstallationConnection(h: Harness, organizationId: string): Promise<string> {
  const existing = await h.db
    .selectFrom('connections')
    .select('id')
    .where('organization_id', '=', organizationId)
    .where('provider', '=', 'github')
    .where('external_key', '=', GITHUB_FIXTURE_INSTALLATION_ID)
    .executeTakeFirst();
  return existing?.id ?? seedConnection(h, { organizationId, provider: 'github', baseUrl: 'https://provider.test', externalKey: GITHUB_FIXTURE_INSTALLATION_ID });
}

export async function send(h: Harness, delivery: Delivery): Promise<Response> {
  return h.app.request(delivery.path, { method: 'POST', headers: delivery.headers, body: delivery.body });
}

/** An organization's subscriber (a fake that checks signatures) and a GitLab repository of the organization, attached. */
export interface SubscribedRepository {
  subscriber: FakeSubscriber;
  subscriberId: string;
  repository: { externalId: string; fullName: string };
  connectionId: string;
}

/**
 * Subscribes a new fake subscriber to the organization through the API; it checks the signatures
 * with the secret the API gave, and joins `subscribers`, for the test file to close after its tests.
 */
export async function subscribe(h: Harness, o: { org: { slug: string }; token: string }, subscribers: FakeSubscriber[]): Promise<{ subscriber: FakeSubscriber; subscriberId: string }> {
  const subscriber = await startFakeSubscriber();
  subscribers.push(subscriber);
  const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/subscribers`, { token: o.token, body: { url: subscriber.url } });
  expect(res.status, await res.clone().text()).toBe(201);
  const created = (await res.json()) as { id: string; secret: string };
  subscriber.verifyWith(created.secret);
  return { subscriber, subscriberId: created.id };
}

/**
 * Subscribes a new fake subscriber to the organization (through the API) and seeds an attached GitLab
 * repository for it, for tests about dispatch. The subscriber joins `subscribers`, for the test
 * file to close after its tests.
 */
export async function subscribedRepository(h: Harness, o: { org: { id: string; slug: string }; token: string }, subscribers: FakeSubscriber[]): Promise<SubscribedRepository> {
  const { subscriber, subscriberId } = await subscribe(h, o, subscribers);
  const repository = { externalId: uniqueExternalId('gitlab'), fullName: `acme/${randomUUID().slice(0, 8)}` };
  const { connectionId } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', ...repository });
  return { subscriber, subscriberId, repository, connectionId };
}

/** Sends one GitLab push for the repository as its connection's hook would, and answers its event run's id (without waiting for it). */
export async function pushTo(h: Harness, { repository, connectionId }: Pick<SubscribedRepository, 'repository' | 'connectionId'>): Promise<string> {
  const { secret } = await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' });
  const payload = { ...withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), test_push: randomUUID() };
  const res = await send(h, delivery('gitlab', payload, { deliveryId: randomUUID(), secret, url: deliveryUrlOf('gitlab', connectionId) }));
  expect(res.status, await res.clone().text()).toBe(202);
  return ((await res.json()) as { workflowId: string }).workflowId;
}

/**
 * Checks that the subscriber received `count` events, each once, signed, as attempt 1, and that
 * forgelink recorded one successful first attempt for each: an attempt refused admission made no
 * call and recorded nothing, and the attempt made after it is still the first.
 */
export async function expectEachDeliveredOnceAtFirstAttempt(h: Harness, { subscriber, subscriberId }: Pick<SubscribedRepository, 'subscriber' | 'subscriberId'>, count: number): Promise<void> {
  const received = subscriber.received;
  expect(received).toHaveLength(count);
  expect(new Set(received.map((r) => r.body.id)).size).toBe(count);
  expect(received.map((r) => r.headers['x-forgelink-attempt'])).toEqual(received.map(() => '1'));
  expect(received.every((r) => r.signatureValid)).toBe(true);
  const attempts = await h.db.selectFrom('dispatch_attempts').select(['event_id', 'attempt', 'succeeded']).where('subscriber_id', '=', subscriberId).execute();
  expect(attempts.sort((x, y) => x.event_id.localeCompare(y.event_id))).toEqual(
    received.map((r) => ({ event_id: r.body.id, attempt: 1, succeeded: true })).sort((x, y) => x.event_id.localeCompare(y.event_id)),
  );
}

/** Whether the delivery's event run (to the hook of `connectionId`, if given) was started or will be: its row is in the intake table, or the run exists. */
export async function eventRunExists(h: Harness, provider: Provider, deliveryId: string, connectionId?: string): Promise<boolean> {
  const stored = await h.db
    .selectFrom('webhook_deliveries')
    .select('delivery_id')
    .where('provider', '=', provider)
    .where('delivery_id', '=', deliveryId)
    .where('connection_id', connectionId ? '=' : 'is', connectionId ?? null)
    .executeTakeFirst();
  if (stored) return true;
  try {
    await h.client.workflow.getHandle(workflowIds.event(provider, deliveryId, connectionId)).describe();
    return true;
  } catch (error) {
    if (error instanceof WorkflowNotFoundError) return false;
    throw error;
  }
}

/** Whether the receiver started the event run of a delivery sent to its path (a connection's hook names the connection in `c`). */
export function deliveryRunExists(h: Harness, delivery: Delivery): Promise<boolean> {
  const connectionId = new URL(delivery.path, 'https://receiver.test').searchParams.get('c') ?? undefined;
  return eventRunExists(h, delivery.provider, delivery.deliveryId, connectionId);
}

export async function eventsOfDelivery(db: Db, provider: Provider, deliveryId: string) {
  return db
    .selectFrom('events')
    .select(['id', 'organization_id', 'repository_id', 'sequence', 'kind', 'event'])
    .where('provider', '=', provider)
    .where('delivery_id', '=', deliveryId)
    .orderBy('sequence')
    .orderBy('organization_id')
    .execute();
}
