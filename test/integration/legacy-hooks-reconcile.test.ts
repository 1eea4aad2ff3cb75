import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';
import { ensureWebhookCredential } from '../../lib/db/repositories/webhook-credentials.ts';
import { deliveryUrlOf, gitlabWorld, seedConnection, seedRepository, type HookWorld, type Org } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';

let h: Harness;
let world: HookWorld;
let org: Org;
beforeAll(async () => {
  h = await startHarness();
  const c = await createOrgWithToken(h);
  org = { id: c.org.id, slug: c.org.slug, token: c.token };
  world = await gitlabWorld(h, org);
});
afterAll(async () => {
  await world?.close();
  await h?.close();
});

/**
 * Before per-connection credentials, organizations attaching the same project shared one hook
 * (the bare URL, the global secret). The reconcile of each gives it a hook of its connection's own
 * and the shared one goes once neither records it (legacyHooksInUseElsewhere keeps it until then).
 */
it("the hook-health reconcile moves a legacy hook two organizations share to each one's own hook", async () => {
  const repo = await world.newRepository();
  const created = await createOrgWithToken(h);
  const second: Org = { id: created.org.id, slug: created.org.slug, token: created.token };
  const connectionId = await seedConnection(h, { organizationId: second.id, provider: 'gitlab', baseUrl: world.proxy.url, secret: world.credential });
  const sameProject = await seedRepository(h, { organizationId: second.id, connectionId, provider: 'gitlab', externalId: repo.externalId, fullName: repo.fullName });
  const res = await fetch(`${world.proxy.url}/api/v4/projects/${repo.externalId}/hooks`, {
    method: 'POST',
    headers: { 'private-token': world.credential, 'content-type': 'application/json' },
    body: JSON.stringify({ url: `${TEST_PUBLIC_URL}/api/events-handler/v1/events/gitlab`, push_events: true, token: 'global-secret' }),
  });
  const legacy = String(((await res.json()) as { id: number }).id);
  const attachments: string[] = [];
  for (const [organizationId, repositoryId] of [[org.id, repo.repositoryId], [second.id, sameProject]] as const) {
    const attachment = await setAttachmentStatus(h.db, { organizationId, repositoryId, status: 'attached' });
    attachments.push(attachment);
    await h.db.insertInto('hooks').values({ attachment_id: attachment, provider_hook_id: legacy, events: JSON.stringify(['push_events']), credential_version: null }).execute();
  }
  for (const o of [org, second]) {
    await h.client.workflow.execute('hookHealthWorkflow', { taskQueue: h.taskQueue, workflowId: `legacy-reconcile-${randomUUID()}`, args: [{ organizationId: o.id, connectionsAtOnce: 1 }] });
  }
  const rows = await h.db.selectFrom('hooks').select(['provider_hook_id', 'credential_version']).where('attachment_id', 'in', attachments).execute();
  expect(rows.map((r) => r.credential_version !== null)).toEqual([true, true]);
  // At the provider: each organization's own hook (the shared one saved in place for the last to move), none at the bare URL.
  expect(repo.hooks().map((x) => x.url).sort()).toEqual([deliveryUrlOf('gitlab', world.connectionId), deliveryUrlOf('gitlab', connectionId)].sort());
  expect(repo.hooks().find((x) => x.url.endsWith(connectionId))!.secret).toBe((await ensureWebhookCredential(h.db, h.keys, { id: connectionId, provider: 'gitlab' })).secret);
}, 120_000);
