import { randomInt, randomUUID } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { Db } from '../../lib/db/index.ts';
import type { Provider } from '../../lib/domain.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { GITHUB_FIXTURE_INSTALLATION_ID, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedConnection, seedRepository } from './attachments.ts';
import type { Harness } from './harness.ts';

/** A provider id no other test (or test file sharing the database) uses: deliveries match by it across organizations. */
export function uniqueExternalId(provider: Provider): string {
  return provider === 'azure-devops' ? randomUUID() : String(randomInt(100_000_000, 2_000_000_000));
}

/**
 * A repository in an organization's cache, attached, written directly (what connect, refresh and
 * attach leave behind) for tests about deliveries rather than hooks. Creates the connection too
 * unless one is given.
 */
export async function seedAttachedRepository(
  h: Harness,
  spec: { organizationId: string; provider: Provider; externalId: string; fullName: string; connectionId?: string },
): Promise<{ connectionId: string; repositoryId: string }> {
  const connectionId =
    spec.connectionId ??
    (spec.provider === 'github' ? await fixtureInstallationConnection(h, spec.organizationId) : undefined) ??
    (await seedConnection(h, { organizationId: spec.organizationId, provider: spec.provider, baseUrl: 'https://provider.test' }));
  const repositoryId = await seedRepository(h, { ...spec, connectionId });
  await h.db.insertInto('attachments').values({ organization_id: spec.organizationId, repository_id: repositoryId, status: 'attached' }).execute();
  return { connectionId, repositoryId };
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

/** Whether the delivery's event run was started or will be: its row is in the intake table, or the run exists. */
export async function eventRunExists(h: Harness, provider: Provider, deliveryId: string): Promise<boolean> {
  const stored = await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('provider', '=', provider).where('delivery_id', '=', deliveryId).executeTakeFirst();
  if (stored) return true;
  try {
    await h.client.workflow.getHandle(workflowIds.event(provider, deliveryId)).describe();
    return true;
  } catch (error) {
    if (error instanceof WorkflowNotFoundError) return false;
    throw error;
  }
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
