import { createHmac, randomInt, randomUUID } from 'node:crypto';
import pg from 'pg';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createEventActivities } from '../../activities/events.ts';
import type { Database } from '../../lib/db/schema.ts';
import { createLogger } from '../../lib/logger.ts';
import { createApiMetrics } from '../../lib/metrics.ts';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startPendingDeliveries } from '../../lib/db/repositories/deliveries.ts';
import { PROVIDERS, type NormalizedEvent, type Provider } from '../../lib/domain.ts';
import { workflowIds, type EventResult } from '../../workflows/contract.ts';
import { delivery, fixture, GITHUB_FIXTURE_INSTALLATION_ID, PUSH_FIXTURES, withRepository, type Delivery, type Payload } from '../fakes/webhook-deliveries.ts';
import { eventsOfDelivery, send, seedAttachedRepository, uniqueExternalId, type DeliveringHook } from '../support/events.ts';
import { seedConnection } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';

/**
 * Signed deliveries whose content PostgreSQL (or the run that records them) would refuse: each is
 * stored mended, or answered 200 ignored, never 503 (which the provider would meet again on every
 * redelivery until it disables the hook), and a row that cannot be written does not hold up the
 * intake queue. Real Temporal, real PostgreSQL, the receivers as the API serves them.
 */
const MAX_BODY_BYTES = 8 * 1024 * 1024;

/** `n` random CJK ideographs: 3 bytes each in UTF-8, and too random for PostgreSQL to compress in an index row. */
const ideographs = (n: number) => Array.from({ length: n }, () => String.fromCharCode(randomInt(0x4e00, 0x9fff))).join('');

/** Where each provider's push names its (first) branch, as the fixture has it. */
function setRef(provider: Provider, payload: Payload, branch: string): void {
  const ref = `refs/heads/${branch}`;
  switch (provider) {
    case 'github':
    case 'gitlab':
      payload.ref = ref;
      break;
    case 'bitbucket':
      payload.changes[0].refId = ref;
      payload.changes[0].ref.id = ref;
      break;
    case 'azure-devops':
      payload.resource.refUpdates[0].name = ref;
      break;
  }
}

/** The delivery with `bytes` in place of `marker` in its body, signed again over the bytes (GitHub, Bitbucket). */
function withBytes(d: Delivery, marker: string, bytes: number[], hook: DeliveringHook): { path: string; headers: Record<string, string>; body: Buffer } {
  const body = Buffer.concat(d.body.split(marker).flatMap((part, i) => (i === 0 ? [Buffer.from(part)] : [Buffer.from(bytes), Buffer.from(part)])));
  const headers = { ...d.headers };
  const signature = `sha256=${createHmac('sha256', hook.secret).update(body).digest('hex')}`;
  if (d.provider === 'github') headers['x-hub-signature-256'] = signature;
  if (d.provider === 'bitbucket') headers['x-hub-signature'] = signature;
  return { path: d.path, headers, body };
}

describe('hostile deliveries (real Temporal, real PostgreSQL)', () => {
  let h: Harness;
  let org: { id: string };
  const attached = {} as Record<Provider, { externalId: string; fullName: string; repositoryId: string; connectionId: string; hook: DeliveringHook }>;

  beforeAll(async () => {
    h = await startHarness({ maxBodyBytes: MAX_BODY_BYTES });
    ({ org } = await createOrgWithToken(h));
    for (const provider of PROVIDERS) {
      const repository = { externalId: uniqueExternalId(provider), fullName: `hostile/${provider}` };
      const { connectionId, repositoryId, hook } = await seedAttachedRepository(h, { organizationId: org.id, provider, ...repository });
      attached[provider] = { ...repository, repositoryId, connectionId, hook };
    }
  });
  afterAll(async () => {
    await h?.close();
  });

  const runOf = (provider: Provider, deliveryId: string) => workflowIds.event(provider, deliveryId, provider === 'github' ? undefined : attached[provider].connectionId);
  const nameOf = async (provider: Provider) =>
    (await h.db.selectFrom('repositories').select('full_name').where('id', '=', attached[provider].repositoryId).executeTakeFirstOrThrow()).full_name;
  /** A push of the provider's fixture for its attached repository, under `fullName`. */
  const push = (provider: Provider, fullName: string, edit: (p: Payload) => void = () => {}) => {
    const payload = withRepository(provider, fixture(PUSH_FIXTURES[provider]), { externalId: attached[provider].externalId, fullName });
    edit(payload);
    return delivery(provider, payload, { deliveryId: randomUUID(), ...attached[provider].hook });
  };

  it.each(PROVIDERS)(
    "%s: leaves out an event whose repository is named in over 1,024 bytes of UTF-8 (PostgreSQL's index of names refuses ~2,700), answering 200 ignored; 1,022 bytes are recorded and renamed",
    async (provider) => {
      const before = await nameOf(provider);
      // 1,002 characters (under the 1,024 the receiver counted before), 3,002 bytes.
      const hostile = push(provider, `g/${ideographs(1000)}`);
      const res = await send(h, hostile);
      expect(res.status, await res.clone().text()).toBe(200);
      expect(await res.json()).toEqual({ status: 'ignored', reason: 'names over the length limits' });
      expect(await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', hostile.deliveryId).execute()).toEqual([]);
      expect(await nameOf(provider)).toBe(before);

      const within = `g/${ideographs(340)}`;
      const renamed = push(provider, within);
      const ok = await send(h, renamed);
      expect(ok.status, await ok.clone().text()).toBe(202);
      expect(await resultOf<EventResult>(h, runOf(provider, renamed.deliveryId))).toMatchObject({ recorded: 1 });
      expect(await nameOf(provider)).toBe(within);
    },
  );

  it.each(PROVIDERS)('%s: records a signed delivery holding bytes that are not UTF-8, each replaced by U+FFFD (202, not 400)', async (provider) => {
    const d = push(provider, attached[provider].fullName, (p) => setRef(provider, p, 'bad-MARKER-branch'));
    const res = await h.app.request(d.path, { method: 'POST', ...withBytes(d, 'MARKER', [0xff, 0xc3, 0x28], attached[provider].hook) });
    expect(res.status, await res.clone().text()).toBe(202);
    expect(await resultOf<EventResult>(h, runOf(provider, d.deliveryId))).toMatchObject({ recorded: 1 });
    const [event] = await eventsOfDelivery(h.db, provider, d.deliveryId);
    expect(event!.event.ref?.name).toBe('bad-\uFFFD\uFFFD(-branch');
  });

  it('answers 200 ignored, storing nothing, when a delivery normalizes to more than twice maxBodyBytes of events, counted in UTF-8 bytes', async () => {
    // 20,000 ref changes of ~135 bytes each, every one of which becomes an event carrying the
    // repository's name of 330 ideographs: ~12 M characters of events (under the limit as counted
    // before), ~26 MB of UTF-8, from a ~2.6 MiB body.
    const d = push('bitbucket', `P/${ideographs(330)}`, (p) => {
      const template = p.changes[0];
      p.changes = Array.from({ length: 20_000 }, (_, i) => ({ refId: `refs/heads/b${i}`, fromHash: template.fromHash, toHash: template.toHash }));
    });
    expect(d.body.length).toBeLessThan(MAX_BODY_BYTES / 2);
    const res = await send(h, d);
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toEqual({ status: 'ignored', reason: 'events over the size limit' });
    expect(await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', d.deliveryId).execute()).toEqual([]);
    expect(h.logs.join('\n')).toMatch(/events are over the size limit/);
  });

  it('looks up a GitHub installation event naming 65,600 repositories (more than a statement takes parameters): 200 ignored, not 503; 202 when one of them is attached', async () => {
    const repositories = Array.from({ length: 65_600 }, (_, i) => ({ id: 3_000_000_000 + i, full_name: `o/r${i}` }));
    const payload = { action: 'added', installation: { id: randomInt(1e9, 2e9) }, repository_selection: 'selected', repositories_added: repositories, repositories_removed: [], sender: { login: 'octocat' } };
    const d = delivery('github', payload, { deliveryId: randomUUID(), secret: attached.github.hook.secret, githubEvent: 'installation_repositories' });
    const res = await send(h, d);
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toEqual({ status: 'ignored', reason: 'repository not attached' });

    // The attached repository, last of the 65,600, through its connection's installation. Stored
    // for a task queue no worker polls (this harness' relay starts none of it): the run would
    // upsert 65,600 repositories; the answer is what is under test.
    const withAttached = { ...payload, installation: { id: Number(GITHUB_FIXTURE_INSTALLATION_ID) }, repositories_added: [...repositories.slice(1), { id: Number(attached.github.externalId), full_name: attached.github.fullName }] };
    const found = delivery('github', withAttached, { deliveryId: randomUUID(), secret: attached.github.hook.secret, githubEvent: 'installation_repositories' });
    const app = h.appWith({ taskQueue: `nobody-${randomUUID()}` });
    try {
      const ok = await app.request(found.path, { method: 'POST', headers: found.headers, body: found.body });
      expect(ok.status, await ok.clone().text()).toBe(202);
      expect(await ok.json()).toMatchObject({ status: 'accepted', events: 65_600 });
    } finally {
      await h.db.deleteFrom('webhook_deliveries').where('provider', '=', 'github').where('delivery_id', '=', found.deliveryId).execute();
    }
  });

  it('answers 503 (not "cannot be stored") when connecting to PostgreSQL fails with a class-22 SQLSTATE, before a lookup or before the insert; the run retries it', async () => {
    // A connection option PostgreSQL refuses: 22023 at every connect, whatever the delivery.
    const refusedAtConnect = new pg.Pool({ connectionString: `${inject('databaseUrl')}${inject('databaseUrl').includes('?') ? '&' : '?'}options=${encodeURIComponent('-c statement_timeout=abc')}` });
    const good = new pg.Pool({ connectionString: inject('databaseUrl') });
    let failing = false;
    const pool = { connect: () => (failing ? refusedAtConnect : good).connect(), end: async () => {} };
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    const metrics = createApiMetrics();
    const app = h.appWith({ db, metrics });
    const post = (d: Delivery) => app.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
    try {
      // Warm: the connection's credentials and the attached repository are remembered, so the next
      // delivery's only statement is the insert.
      const warm = push('gitlab', attached.gitlab.fullName);
      expect((await post(warm)).status).toBe(202);
      failing = true;
      const atInsert = push('gitlab', attached.gitlab.fullName);
      const res = await post(atInsert);
      expect(res.status, await res.clone().text()).toBe(503);
      // A fresh receiver, a GitHub delivery (the App's secret, no credential to read): the
      // attached repository's lookup fails to connect the same way.
      const lookup = push('github', attached.github.fullName);
      const cold = await h.appWith({ db }).request(lookup.path, { method: 'POST', headers: lookup.headers, body: lookup.body });
      expect(cold.status, await cold.clone().text()).toBe(503);
      expect(h.logs.join('\n')).toMatch(/"sqlState":"22023".*could not store the delivery/);
      expect(await metrics.registry.getSingleMetricAsString('forgelink_webhook_deliveries_total')).not.toMatch(/outcome="unstorable"/);

      // The run: a failed connect is retryable, never DeliveryNotStorable.
      const { recordEvent } = createEventActivities({ db, logger: createLogger('test', 'silent'), deliveryDeadlineSeconds: 60 });
      const event: NormalizedEvent = { provider: 'gitlab', deliveryId: atInsert.deliveryId, kind: 'push', repository: { externalId: attached.gitlab.externalId, fullName: attached.gitlab.fullName }, ref: { type: 'branch', name: 'main', before: 'a', after: 'b' } };
      const error = await new MockActivityEnvironment()
        .run(recordEvent, { provider: 'gitlab' as const, deliveryId: atInsert.deliveryId, receivedAt: new Date().toISOString(), events: [event], connectionId: attached.gitlab.connectionId })
        .then(() => undefined, (e: unknown) => e);
      expect(error).toMatchObject({ code: '22023' });
      expect(error).not.toBeInstanceOf(ApplicationFailure);
    } finally {
      await refusedAtConnect.end();
      await good.end();
    }
  });

  it('records a GitHub installation gaining, then losing, 65,600 repositories for a bound connection within its 30 s activity (a few statements, not two a repository)', { timeout: 300_000 }, async () => {
    const installationId = randomInt(1e9, 2e9);
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'github', baseUrl: 'https://api.github.test', externalKey: String(installationId) });
    const base = randomInt(4e9, 5e9);
    const repositories = Array.from({ length: 65_600 }, (_, i) => ({ id: base + i, full_name: `o/r${i}` }));
    const deliver = async (action: 'added' | 'removed') => {
      const payload = { action, installation: { id: installationId }, repository_selection: 'selected', repositories_added: action === 'added' ? repositories : [], repositories_removed: action === 'removed' ? repositories : [], sender: { login: 'octocat' } };
      const d = delivery('github', payload, { deliveryId: randomUUID(), secret: attached.github.hook.secret, githubEvent: 'installation_repositories' });
      const res = await send(h, d);
      expect(res.status, await res.clone().text()).toBe(202);
      const { workflowId } = (await res.json()) as { workflowId: string };
      const result = await resultOf<EventResult>(h, workflowId);
      // Within its first attempt: no activity of the run was tried again (a timed-out one is).
      const history = await h.client.workflow.getHandle(workflowId).fetchHistory();
      expect(history.events!.filter((e) => (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1)).toEqual([]);
      return result;
    };
    const cached = async (vanished: boolean) =>
      Number((await h.db.selectFrom('repositories').select((eb) => eb.fn.countAll().as('n')).where('connection_id', '=', connectionId).where('vanished_at', vanished ? 'is not' : 'is', null).executeTakeFirstOrThrow()).n);

    expect(await deliver('added')).toMatchObject({ recorded: 65_600 });
    expect(await cached(false)).toBe(65_600);
    const [first] = await h.db.selectFrom('repositories').select(['id', 'full_name']).where('connection_id', '=', connectionId).where('external_id', '=', String(base + 7)).execute();
    expect(first!.full_name).toBe('o/r7');
    expect(await deliver('removed')).toMatchObject({ recorded: 65_600 });
    expect(await cached(true)).toBe(65_600);
  });

  it('fails the run of a stored delivery PostgreSQL refuses to record (a row from before the byte limit), instead of retrying it every minute for good', { timeout: 45_000 }, async () => {
    const deliveryId = `stored-${randomUUID()}`;
    const { connectionId, externalId } = attached.gitlab;
    const event = { provider: 'gitlab', deliveryId, kind: 'push', repository: { externalId, fullName: `g/${ideographs(1000)}` }, ref: { type: 'branch', name: 'main', before: 'a', after: 'b' } };
    await h.db
      .insertInto('webhook_deliveries')
      .values({
        provider: 'gitlab',
        delivery_id: deliveryId,
        connection_id: connectionId,
        events: JSON.stringify([event]),
        start: JSON.stringify({ taskQueue: h.taskQueue, summary: { events: 1, kinds: { push: 1 }, repositories: [] } }),
      })
      .execute();
    const failure = await resultOf(h, runOf('gitlab', deliveryId)).then(
      () => undefined,
      (error: { cause?: { type?: string; message?: string } }) => error.cause,
    );
    expect(failure).toMatchObject({ type: 'DeliveryNotStorable', message: expect.stringMatching(/^PostgreSQL refused the delivery's events \(54000\): index row size/) });
    expect(await eventsOfDelivery(h.db, 'gitlab', deliveryId)).toEqual([]);
  });

  it('answers 200 ignored (counted "unstorable") for an insert PostgreSQL refuses for its content (22021, 22P02, 22P05, 23503, 54000), 503 for anything else', async () => {
    // The write fails as the delivery id says: `raise-<SQLSTATE>-…`.
    await sql`create or replace function hostile_input_raise() returns trigger language plpgsql as $$
      begin raise exception 'refused by the test' using errcode = substr(new.delivery_id, 7, 5); end $$`.execute(h.db);
    await sql`create trigger hostile_input_raise before insert on webhook_deliveries for each row
      when (new.delivery_id like 'raise-%') execute function hostile_input_raise()`.execute(h.db);
    try {
      const answers: Record<string, number> = {};
      const metrics = createApiMetrics();
      const app = h.appWith({ metrics });
      for (const code of ['22P05', '22021', '22P02', '23503', '54000', '22023', '22012', '23505', '54001', '42804', '53300', '57P01', '08006', '40001', '40P01', '55P03', '57014']) {
        const payload = withRepository('gitlab', fixture(PUSH_FIXTURES.gitlab), attached.gitlab);
        const d = delivery('gitlab', payload, { deliveryId: `raise-${code}-${randomUUID()}`, ...attached.gitlab.hook });
        const res = await app.request(d.path, { method: 'POST', headers: d.headers, body: d.body });
        answers[code] = res.status;
        if (res.status === 200) expect(await res.json()).toEqual({ status: 'ignored', reason: 'the delivery cannot be stored' });
        expect(await h.db.selectFrom('webhook_deliveries').select('delivery_id').where('delivery_id', '=', d.deliveryId).execute()).toEqual([]);
      }
      // Only the SQLSTATEs a delivery's content causes (lib/db/errors.ts); 22023, 22012, 23505,
      // 54001 and 42804 come from a setting or our own SQL, and are 503 like an outage.
      expect(answers).toEqual({
        '22P05': 200, '22021': 200, '22P02': 200, '23503': 200, '54000': 200,
        '22023': 503, '22012': 503, '23505': 503, '54001': 503, '42804': 503,
        '53300': 503, '57P01': 503, '08006': 503, '40001': 503, '40P01': 503, '55P03': 503, '57014': 503,
      });
      expect(h.logs.join('\n')).toMatch(/"sqlState":"22P05".*cannot be stored/);
      // Counted apart from "ignored", for operators to alert on.
      expect(await metrics.registry.getSingleMetricAsString('forgelink_webhook_deliveries_total')).toMatch(/forgelink_webhook_deliveries_total\{provider="gitlab",outcome="unstorable"\} 5\b/);
    } finally {
      await sql`drop trigger hostile_input_raise on webhook_deliveries`.execute(h.db);
      await sql`drop function hostile_input_raise()`.execute(h.db);
    }
  });
});

describe('a start failure the intake table cannot hold as given', () => {
  it('records a failed start whose reason holds a NUL or half a surrogate pair, and marks the rows behind it started', async () => {
    const databaseUrl = inject('databaseUrl');
    const session = new pg.Client({ connectionString: databaseUrl });
    await session.connect();
    const taskQueue = `hostile-${randomUUID()}`;
    const ids = [`poison-${randomUUID()}`, `next-${randomUUID()}`, `last-${randomUUID()}`];
    try {
      const start = JSON.stringify({ taskQueue, summary: { events: 0, kinds: {}, repositories: [] } });
      for (const [i, id] of ids.entries()) {
        await session.query(`insert into webhook_deliveries (provider, delivery_id, events, start, received_at) values ('github', $1, '[]', $2, now() - make_interval(secs => $3))`, [id, start, 60 - i]);
      }
      const outcome = await startPendingDeliveries(session, taskQueue, 50, async (pending) =>
        pending.map((p) => (p.deliveryId === ids[0] ? { started: false as const, error: `INVALID_ARGUMENT: ${p.deliveryId}\u0000 \ud83d`, retryInMs: 60_000 } : { started: true as const })),
      );
      expect(outcome).toEqual({ locked: 3, started: 2, more: false });
      const rows = (await session.query(`select delivery_id, attempts, last_error, started_at is not null as started from webhook_deliveries where delivery_id = any($1) order by received_at`, [ids])).rows;
      expect(rows).toEqual([
        { delivery_id: ids[0], attempts: 1, last_error: `INVALID_ARGUMENT: ${ids[0]}\uFFFD \uFFFD`, started: false },
        { delivery_id: ids[1], attempts: 0, last_error: null, started: true },
        { delivery_id: ids[2], attempts: 0, last_error: null, started: true },
      ]);
    } finally {
      await session.query(`delete from webhook_deliveries where delivery_id = any($1)`, [ids]);
      await session.end();
    }
  });
});
