import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noticeLegacyHooks } from '../../api/legacy-hooks.ts';
import type { Provider } from '../../lib/domain.ts';
import { createLogger } from '../../lib/logger.ts';
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

    it('says at start how many attachments still hold a legacy hook, whose deliveries are refused until the reconcile moves them', async () => {
      await victimWithLegacyHook(h, 'gitlab', subscribers);
      const lines = await noticeOf(h, false);
      expect(lines).toHaveLength(1);
      expect(lines[0]!).toMatchObject({ level: 40, acceptLegacyHooks: false });
      expect(lines[0]!.attachmentsWithLegacyHooks.gitlab).toBeGreaterThanOrEqual(1);
      expect(lines[0]!.msg).toMatch(/refused \(401\) while webhooks\.acceptLegacyHooks is off: the hook-health reconcile/);
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

    it('warns at start that the global secrets are known to every tenant that ran its own server', async () => {
      const lines = await noticeOf(h, true);
      expect(lines).toHaveLength(1);
      expect(lines[0]!).toMatchObject({ level: 40, acceptLegacyHooks: true, providers: ['gitlab', 'bitbucket', 'azure-devops'] });
      expect(lines[0]!.msg).toMatch(/Treat those secrets as known to every tenant that ran its own GitLab, Bitbucket Data Center or Azure DevOps Server/);
    });
  });
});

/** What noticeLegacyHooks logs, for the harness's database and the receivers' secrets with the window open or closed. */
async function noticeOf(h: Harness, open: boolean): Promise<Record<string, any>[]> {
  const lines: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)));
      cb();
    },
  });
  const legacy = open
    ? { gitlab: [TEST_WEBHOOK_SECRETS.gitlab], bitbucket: [TEST_WEBHOOK_SECRETS.bitbucket], azureDevOps: { user: TEST_WEBHOOK_SECRETS.azureDevOps.user, passwords: [TEST_WEBHOOK_SECRETS.azureDevOps.pass] } }
    : { gitlab: [], bitbucket: [], azureDevOps: undefined };
  await noticeLegacyHooks({ db: h.db, logger: createLogger('api', 'info', sink), webhooks: { github: [], ...legacy, maxBodyBytes: 1024 } });
  return lines;
}
