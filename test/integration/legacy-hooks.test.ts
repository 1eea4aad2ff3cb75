import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { normalizeDelivery } from '../../api/webhooks/normalize.ts';
import { createDb, type Db } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { countAttachmentsWithLegacyHooks, legacyHooksInUseElsewhere } from '../../lib/db/repositories/attachments.ts';
import { storeDelivery } from '../../lib/db/repositories/deliveries.ts';
import type { Provider } from '../../lib/domain.ts';
import { noticeLegacyHooks } from '../../api/legacy-hooks.ts';
import type { LegacyHookWindow } from '../../lib/config.ts';
import { createLogger } from '../../lib/logger.ts';
import { summarizeDelivery, workflowIds } from '../../workflows/contract.ts';
import type { FakeSubscriber } from '../fakes/subscriber.ts';
import { delivery, fixture, PUSH_FIXTURES, withRepository, type Delivery } from '../fakes/webhook-deliveries.ts';
import { seedConnection } from '../support/attachments.ts';
import { deliveryRunExists, eventsOfDelivery, seedAttachedRepository, send, subscribe, uniqueExternalId } from '../support/events.ts';
import { createOrgWithToken, resultOf, startHarness, TEST_WEBHOOK_SECRETS, type Harness } from '../support/harness.ts';

type LegacyProvider = Exclude<Provider, 'github'>;

/** Where the organization's connection points: a GitLab push names its instance in project.web_url. */
const INSTANCE = 'https://gitlab.victim.test';

/** A push for the repository to the bare receiver URL (no `c`), signed with the global secret every legacy hook carried. */
function legacyPush(provider: LegacyProvider, repository: { externalId: string; fullName: string }): Delivery {
  const payload = withRepository(provider, fixture(PUSH_FIXTURES[provider]), { ...repository, instanceUrl: INSTANCE });
  payload.test_push = randomUUID();
  const credential =
    provider === 'azure-devops'
      ? { secret: TEST_WEBHOOK_SECRETS.azureDevOps.pass, basicAuthUser: TEST_WEBHOOK_SECRETS.azureDevOps.user }
      : { secret: provider === 'gitlab' ? TEST_WEBHOOK_SECRETS.gitlab : TEST_WEBHOOK_SECRETS.bitbucket };
  return delivery(provider, payload, { deliveryId: randomUUID(), ...credential });
}

/** An organization with a subscriber, whose repository is attached through a connection to INSTANCE and still holds a legacy hook. */
async function victimWithLegacyHook(h: Harness, provider: LegacyProvider, subscribers: FakeSubscriber[]) {
  const a = await createOrgWithToken(h);
  const { subscriber } = await subscribe(h, a, subscribers);
  const repository = { externalId: uniqueExternalId(provider), fullName: `victim/${randomUUID().slice(0, 8)}` };
  const connectionId = await seedConnection(h, { organizationId: a.org.id, provider, baseUrl: INSTANCE });
  await seedAttachedRepository(h, { organizationId: a.org.id, provider, ...repository, connectionId, legacyHook: true });
  return { org: a.org, subscriber, repository };
}

/**
 * Hooks made before per-connection credentials ("legacy hooks") all carried one global secret per
 * provider, so every tenant that ran its own GitLab, Bitbucket Data Center or Azure DevOps Server
 * holds it in its server's database, and nothing in such a delivery says whose hook sent it. The
 * receivers accept it only while the operator opens the migration window (webhooks.acceptLegacyHooks).
 */
describe('legacy hooks', () => {
  describe('with webhooks.acceptLegacyHooks off (the default)', () => {
    let h: Harness;
    const subscribers: FakeSubscriber[] = [];
    beforeAll(async () => {
      h = await startHarness();
    });
    afterAll(async () => {
      await h?.close();
      await Promise.all(subscribers.map((s) => s.close()));
    });

    it.each(['gitlab', 'bitbucket', 'azure-devops'] as const)(
      "%s: a tenant signing with the global secret its own server holds gets 401 for another organization's repository that still has a legacy hook, and nothing is recorded or dispatched there",
      async (provider) => {
        const victim = await victimWithLegacyHook(h, provider, subscribers);
        const forged = legacyPush(provider, victim.repository);
        const res = await send(h, forged);
        expect(res.status).toBe(401);
        expect(await deliveryRunExists(h, forged)).toBe(false);
        expect(await eventsOfDelivery(h.db, provider, forged.deliveryId)).toEqual([]);
        expect(await h.db.selectFrom('events').select('id').where('organization_id', '=', victim.org.id).execute()).toEqual([]);
        expect(victim.subscriber.received).toEqual([]);
      },
    );

    it('a legacy delivery stored without a connection (by an older pod, while the window was open, or held through a Temporal outage) is not recorded once the window is closed', async () => {
      const victim = await victimWithLegacyHook(h, 'gitlab', subscribers);
      const d = legacyPush('gitlab', victim.repository);
      const normalized = normalizeDelivery('gitlab', d.headers as Record<string, string>, Buffer.from(d.body), { maxEventsLength: 1 << 20 });
      // The row as a receiver holding the global secret stored it: no connection.
      await storeDelivery(h.db, { provider: 'gitlab', deliveryId: d.deliveryId, events: normalized.events, instanceUrl: normalized.instanceUrl, start: { taskQueue: h.taskQueue, summary: summarizeDelivery(normalized.events) } });
      const id = workflowIds.event('gitlab', d.deliveryId);
      await h.relayed(id);
      expect(await resultOf(h, id)).toMatchObject({ recorded: 0 });
      expect(await eventsOfDelivery(h.db, 'gitlab', d.deliveryId)).toEqual([]);
      expect(victim.subscriber.received).toEqual([]);
    });

    it('a legacy hook of the same id on another instance is not one another attachment still uses; on the same instance (whatever the case and trailing slash) it is', async () => {
      const externalId = uniqueExternalId('gitlab');
      const seeded: string[] = [];
      for (const base of ['https://a.gitlab.test', 'https://b.gitlab.test', 'https://A.gitlab.test/']) {
        const o = await createOrgWithToken(h);
        const connectionId = await seedConnection(h, { organizationId: o.org.id, provider: 'gitlab', baseUrl: base });
        const { repositoryId } = await seedAttachedRepository(h, { organizationId: o.org.id, provider: 'gitlab', externalId, fullName: `g/${randomUUID().slice(0, 8)}`, connectionId });
        const attachment = await h.db.selectFrom('attachments').select('id').where('repository_id', '=', repositoryId).executeTakeFirstOrThrow();
        await h.db.insertInto('hooks').values({ attachment_id: attachment.id, provider_hook_id: base.startsWith('https://b') ? '7' : '8', events: JSON.stringify(['push']), credential_version: null }).execute();
        seeded.push(repositoryId);
      }
      await h.db.insertInto('hooks').values({ attachment_id: (await h.db.selectFrom('attachments').select('id').where('repository_id', '=', seeded[1]!).executeTakeFirstOrThrow()).id, provider_hook_id: '8', events: JSON.stringify(['push']), credential_version: null }).execute();
      // Hook 7 is b.gitlab.test's; hook 8 on a.gitlab.test is also recorded by the attachment on A.gitlab.test/ (the same server).
      expect(await legacyHooksInUseElsewhere(h.db, seeded[0]!, ['7', '8'])).toEqual(['8']);
    });
  });

  describe('with webhooks.acceptLegacyHooks on (the migration window)', () => {
    let h: Harness;
    const subscribers: FakeSubscriber[] = [];
    beforeAll(async () => {
      h = await startHarness({ acceptLegacyHooks: true });
    });
    afterAll(async () => {
      await h?.close();
      await Promise.all(subscribers.map((s) => s.close()));
    });

    it.each(['gitlab', 'bitbucket', 'azure-devops'] as const)("%s: a legacy hook's delivery is still recorded for its organization and dispatched to its subscriber", async (provider) => {
      const owner = await victimWithLegacyHook(h, provider, subscribers);
      const push = legacyPush(provider, owner.repository);
      const res = await send(h, push);
      expect(res.status).toBe(202);
      expect(await resultOf(h, ((await res.json()) as { workflowId: string }).workflowId)).toMatchObject({ recorded: 1, delivered: 1 });
      expect((await eventsOfDelivery(h.db, provider, push.deliveryId)).map((e) => e.organization_id)).toEqual([owner.org.id]);
      expect(owner.subscriber.received.map((r) => r.body.deliveryId)).toEqual([push.deliveryId]);
    });

  });
});

/**
 * The start-up notice counts every organization's attachments, so these tests have a database of
 * their own: exact counts, whatever other files seed.
 */
describe('the start-up notice and what the migration has left', () => {
  const database = `forgelink_legacy_notice_${randomUUID().replaceAll('-', '')}`;
  let admin: Db;
  let db: Db;
  beforeAll(async () => {
    admin = createDb(inject('databaseUrl'), { max: 1 });
    await sql`create database ${sql.id(database)}`.execute(admin);
    const url = new URL(inject('databaseUrl'));
    url.pathname = `/${database}`;
    db = createDb(url.toString(), { max: 2 });
    await migrateToLatest(db);
    const org = await db.insertInto('organizations').values({ slug: `notice-${randomUUID().slice(0, 8)}`, name: 'notice' }).returning('id').executeTakeFirstOrThrow();
    const seed = async (provider: LegacyProvider, connection: 'active' | 'failed', attachment: 'attached' | 'failed' | 'detached', credentialVersion: number | null) => {
      const c = await db.insertInto('connections').values({ organization_id: org.id, provider, base_url: INSTANCE, status: connection }).returning('id').executeTakeFirstOrThrow();
      const r = await db
        .insertInto('repositories')
        .values({ organization_id: org.id, connection_id: c.id, provider, external_id: randomUUID(), full_name: `g/${randomUUID().slice(0, 8)}` })
        .returning('id')
        .executeTakeFirstOrThrow();
      const a = await db.insertInto('attachments').values({ organization_id: org.id, repository_id: r.id, status: attachment }).returning('id').executeTakeFirstOrThrow();
      await db.insertInto('hooks').values({ attachment_id: a.id, provider_hook_id: randomUUID(), events: JSON.stringify(['push']), credential_version: credentialVersion }).execute();
    };
    // What the reconcile moves: attached, on an active connection.
    await seed('gitlab', 'active', 'attached', null);
    await seed('bitbucket', 'active', 'attached', null);
    // What it never visits: a failed connection, a failed attachment.
    await seed('gitlab', 'failed', 'attached', null);
    await seed('gitlab', 'active', 'failed', null);
    // Nothing left to do: detached, or already on the connection's own credential.
    await seed('gitlab', 'active', 'detached', null);
    await seed('azure-devops', 'active', 'attached', 1);
  });
  afterAll(async () => {
    await db?.destroy();
    await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    await admin?.destroy();
  });

  it('counts as still to migrate only the attachments the reconcile visits, the others apart', async () => {
    expect(await countAttachmentsWithLegacyHooks(db)).toEqual({ toMigrate: { gitlab: 1, bitbucket: 1 }, notReconciled: { gitlab: 2 } });
  });

  it('closed: one warning naming the keys set but unused, what is left, and how to migrate or open the window', async () => {
    const lines = await noticeOf(db, { open: [], unusedKeys: ['gitProviders.gitlab.webhookSecret', 'gitProviders.azureDevOps.webhookBasicAuthPass'] });
    expect(lines).toHaveLength(1);
    expect(lines[0]!).toMatchObject({
      level: 40,
      acceptLegacyHooks: false,
      unusedKeys: ['gitProviders.gitlab.webhookSecret', 'gitProviders.azureDevOps.webhookBasicAuthPass'],
      attachmentsWithLegacyHooks: { gitlab: 1, bitbucket: 1 },
      attachmentsWithLegacyHooksNotReconciled: { gitlab: 2 },
    });
    const msg: string = lines[0]!.msg;
    expect(msg).toMatch(/refused \(401\) and nothing of them is stored or recorded/);
    expect(msg).toContain('gitProviders.gitlab.webhookSecret, gitProviders.azureDevOps.webhookBasicAuthPass are set but unused');
    expect(msg).toContain('2 attachments still hold a legacy hook');
    expect(msg).toContain('temporal schedule trigger --schedule-id forgelink-hook-health');
    expect(msg).toContain('set webhooks.acceptLegacyHooks: true');
    expect(msg).toContain('2 more (not attached, or on a connection that is not active) are not visited by the reconcile: re-activate or detach them');
  });

  it('open for one provider: counts what it accepts for that provider only, and says the others are refused', async () => {
    const lines = await noticeOf(db, { open: ['gitlab'], unusedKeys: [] });
    expect(lines).toHaveLength(1);
    expect(lines[0]!).toMatchObject({ level: 40, acceptLegacyHooks: true, providers: ['gitlab'] });
    const msg: string = lines[0]!.msg;
    expect(msg).toContain('accepted for the 1 attachments still holding a legacy hook');
    expect(msg).toContain('Treat those secrets as known to every tenant that ran its own GitLab, Bitbucket Data Center or Azure DevOps Server');
    expect(msg).toContain('1 attachments of other providers hold a legacy hook whose deliveries are refused (401)');
  });
});

/** What noticeLegacyHooks logs for the database and the window. */
async function noticeOf(db: Db, window: LegacyHookWindow): Promise<Record<string, any>[]> {
  const lines: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)));
      cb();
    },
  });
  await noticeLegacyHooks({ db, logger: createLogger('api', 'info', sink), window });
  return lines;
}
