import { randomUUID } from 'node:crypto';
import type { WorkflowExecutionDescription } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { storeDelivery } from '../../lib/db/repositories/deliveries.ts';
import type { NormalizedEvent } from '../../lib/domain.ts';
import { SA_CONNECTION, SA_ORG_SLUGS, SA_ORGANIZATION, SA_PROVIDER, SA_REPOSITORY, SA_REPOSITORY_NAMES, summarizeDelivery, workflowIds, type EventResult } from '../../workflows/contract.ts';
import { delivery, fixture, GITHUB_FIXTURE_INSTALLATION_ID, PUSH_FIXTURES, withRepository } from '../fakes/webhook-deliveries.ts';
import { gitlabWorld, outcomeOf, requestAttachment, type HookWorld, type Org } from '../support/attachments.ts';
import { hookOfConnection, seedAttachedRepository, send, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

/**
 * Runs read in the Temporal UI: every start carries the search attributes an operator types (the
 * organization slugs, the repository full names, the provider, the connection) and a summary with
 * details; the filters the README gives find them through the dev server's visibility store.
 */
describe('runs an operator can find and read in the Temporal UI (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  const worlds: HookWorld[] = [];

  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await Promise.all(worlds.map((w) => w.close()));
    await h?.close();
  });

  /** The workflow ids a visibility query lists on this test's task queue, once `done` holds for them (visibility lags the run a little). */
  async function listed(query: string, done: (ids: string[]) => boolean): Promise<string[]> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ids: string[] = [];
      for await (const run of h.client.workflow.list({ query: `TaskQueue = '${h.taskQueue}' AND ${query}` })) ids.push(run.workflowId);
      if (done(ids) || Date.now() > deadline) return ids.sort();
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  const describeRun = (workflowId: string) => h.client.workflow.getHandle(workflowId).describe();

  /** Everything of the run the UI shows to anyone with namespace access: attributes, summary, details. */
  async function visibleText(description: WorkflowExecutionDescription): Promise<string> {
    return JSON.stringify({
      attributes: Object.fromEntries(description.typedSearchAttributes.getAll().map((pair) => [pair.key.name, pair.value])),
      summary: await description.staticSummary(),
      details: await description.staticDetails(),
    });
  }

  it('an attach, the delivery of its hook and the detach a disconnect asks for: found by org slug, repository name, provider and connection', async () => {
    const { org, token } = await createOrgWithToken(h);
    const o: Org = { ...org, token };
    const world = await gitlabWorld(h, o);
    worlds.push(world);
    const repository = await world.newRepository();
    const attachId = await requestAttachment(h, o, repository.repositoryId, 'PUT');
    expect((await outcomeOf(h, attachId)).result?.status).toBe('attached');

    const hook = await hookOfConnection(h, 'gitlab', world.connectionId);
    const gitlabDelivery = delivery('gitlab', withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), repository), { deliveryId: randomUUID(), ...hook });
    expect((await send(h, gitlabDelivery)).status).toBe(202);
    const eventId = workflowIds.event('gitlab', gitlabDelivery.deliveryId, world.connectionId);
    expect((await resultOf<EventResult>(h, eventId)).recorded).toBe(1);

    const bySlug = `ForgelinkOrgSlugs = '${org.slug}'`;
    const byName = `ForgelinkRepositoryNames = '${repository.fullName}'`;
    const both = (ids: string[]) => ids.includes(attachId) && ids.includes(eventId);
    expect(await listed(bySlug, both)).toEqual([attachId, eventId].sort());
    expect(await listed(byName, both)).toEqual([attachId, eventId].sort());
    expect(await listed(`ForgelinkConnection = '${world.connectionId}'`, both)).toEqual([attachId, eventId].sort());
    expect(await listed(`${bySlug} AND ${byName} AND ForgelinkProvider = 'gitlab' AND WorkflowType = 'repositoryWorkflow'`, (ids) => ids.length > 0)).toEqual([attachId]);

    const attach = await describeRun(attachId);
    expect(await attach.staticSummary()).toBe(`${org.slug}: attach ${repository.fullName} (gitlab)`);
    expect(await attach.staticDetails()).toContain(`**connection** \`${world.connectionId}\``);
    expect(attach.typedSearchAttributes.get(SA_ORG_SLUGS)).toEqual([org.slug]);
    expect(attach.typedSearchAttributes.get(SA_REPOSITORY_NAMES)).toEqual([repository.fullName]);
    // The id attributes stay for older queries.
    expect(attach.typedSearchAttributes.get(SA_ORGANIZATION)).toBe(org.id);
    expect(attach.typedSearchAttributes.get(SA_REPOSITORY)).toBe(repository.repositoryId);
    const event = await describeRun(eventId);
    expect(await event.staticSummary()).toBe(`${org.slug}: push on ${repository.fullName} (gitlab)`);
    expect(event.typedSearchAttributes.get(SA_CONNECTION)).toBe(world.connectionId);

    // Disconnect detaches through the repository workflow, started as its child: labelled the same way.
    const disconnected = await h.request('DELETE', `/api/v1/orgs/${org.slug}/connections/${world.connectionId}`, { token });
    expect(disconnected.status, await disconnected.clone().text()).toBe(202);
    const disconnectId = ((await disconnected.json()) as { workflowId: string }).workflowId;
    await resultOf(h, disconnectId);
    const disconnect = await describeRun(disconnectId);
    expect(await disconnect.staticSummary()).toBe(`${org.slug}: disconnect connection ${world.connectionId} (gitlab)`);
    // Two runs of the repository workflow now: the attach, and the detach (the latest run of the id).
    expect(await listed(`${byName} AND WorkflowType = 'repositoryWorkflow' AND ExecutionStatus = 'Completed'`, (ids) => ids.length === 2)).toEqual([attachId, attachId]);
    const detach = await describeRun(attachId);
    expect(detach.runId).not.toBe(attach.runId);
    expect(detach.raw.workflowExecutionInfo?.parentExecution?.workflowId).toBe(disconnectId);
    expect(await detach.staticSummary()).toBe(`${org.slug}: detach ${repository.fullName} (gitlab)`);
    expect(detach.typedSearchAttributes.get(SA_ORG_SLUGS)).toEqual([org.slug]);
    expect(detach.typedSearchAttributes.get(SA_CONNECTION)).toBe(world.connectionId);

    // Nothing secret in what the UI shows: neither the provider credential nor the hooks' webhook credential.
    for (const run of [attach, event, disconnect, detach]) {
      const text = await visibleText(run);
      for (const secret of [world.credential, world.webhook.secret, hook.secret]) expect(text).not.toContain(secret);
    }
  }, 120_000);

  it('a delivery that fans out to two organizations: each finds it by its slug, and its summary names both', async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const repository = { externalId: uniqueExternalId('github'), fullName: `octo-org/labels-${randomUUID().slice(0, 8)}` };
    await seedAttachedRepository(h, { organizationId: a.org.id, provider: 'github', ...repository });
    await seedAttachedRepository(h, { organizationId: b.org.id, provider: 'github', ...repository });
    const d = delivery('github', withRepository('github', fixture(PUSH_FIXTURES.github), repository), { deliveryId: randomUUID(), secret: TEST_WEBHOOK_SECRETS.github });
    expect((await send(h, d)).status).toBe(202);
    const eventId = workflowIds.event('github', d.deliveryId);
    expect((await resultOf<EventResult>(h, eventId)).recorded).toBe(2);

    const found = (ids: string[]) => ids.includes(eventId);
    for (const slug of [a.org.slug, b.org.slug]) expect(await listed(`ForgelinkOrgSlugs = '${slug}'`, found)).toEqual([eventId]);
    expect(await listed(`ForgelinkOrgSlugs IN ('${a.org.slug}', '${b.org.slug}') AND ForgelinkRepositoryNames = '${repository.fullName}' AND ForgelinkProvider = 'github'`, found)).toEqual([eventId]);

    const run = await describeRun(eventId);
    // In organization id order, as the receiver finds the attachments.
    const slugs = [a.org, b.org].sort((x, y) => x.id.localeCompare(y.id)).map((org) => org.slug);
    expect(run.typedSearchAttributes.get(SA_ORG_SLUGS)).toEqual(slugs);
    expect(run.typedSearchAttributes.get(SA_PROVIDER)).toBe('github');
    // Two organizations' connections: no single one to name; no single organization id either.
    expect(run.typedSearchAttributes.get(SA_CONNECTION)).toBeUndefined();
    expect(run.typedSearchAttributes.get(SA_ORGANIZATION)).toBeUndefined();
    expect(await run.staticSummary()).toBe(`${slugs.join(', ')}: push on ${repository.fullName} (github)`);
    expect(await run.staticDetails()).toContain(`**organizations** ${slugs.join(', ')}`);
    expect(await visibleText(run)).not.toContain(TEST_WEBHOOK_SECRETS.github);
  }, 120_000);

  it('a delivery stored by an API version before these labels still starts, named by ids as it was', async () => {
    const { org } = await createOrgWithToken(h);
    const repository = { externalId: uniqueExternalId('github'), fullName: `octo-org/legacy-${randomUUID().slice(0, 8)}` };
    const { repositoryId } = await seedAttachedRepository(h, { organizationId: org.id, provider: 'github', ...repository });
    const deliveryId = randomUUID();
    const events: NormalizedEvent[] = [{ provider: 'github', deliveryId, kind: 'push', repository, ref: { type: 'branch', name: 'main', before: null, after: 'a'.repeat(40) } }];
    // The start as the receiver stored it then: no targets.
    await storeDelivery(h.db, { provider: 'github', deliveryId, events, installationId: GITHUB_FIXTURE_INSTALLATION_ID, start: { taskQueue: h.taskQueue, summary: summarizeDelivery(events), organizationId: org.id, repositoryId } });
    const eventId = workflowIds.event('github', deliveryId);
    await h.relayed(eventId);
    expect((await resultOf<EventResult>(h, eventId)).recorded).toBe(1);
    const run = await describeRun(eventId);
    expect(run.typedSearchAttributes.get(SA_ORGANIZATION)).toBe(org.id);
    expect(run.typedSearchAttributes.get(SA_REPOSITORY)).toBe(repositoryId);
    expect(run.typedSearchAttributes.get(SA_ORG_SLUGS)).toBeUndefined();
    expect(await run.staticSummary()).toBe(`delivery: push on ${repository.fullName} (github)`);
  }, 60_000);
});
