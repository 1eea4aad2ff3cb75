import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { NativeConnection, Worker } from '@temporalio/worker';
import { describe, expect, inject, it } from 'vitest';
import { heartbeating } from '../../activities/heartbeat.ts';
import { createHookActivities, SWEEP_MAX_DELETIONS } from '../../activities/hooks.ts';
import { createActivities, type ActivityDeps, type ActivitySettings } from '../../activities/index.ts';
import { createInlineAdmission } from '../../activities/inline-admission.ts';
import { createAnswerBudget, type AnswerBudget } from '../../activities/providers/answer-budget.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { createLogger } from '../../lib/logger.ts';
import { activityInterceptors, workflowSinks } from '../../worker/create-worker.ts';
import { workflowIds, type ConnectionHookHealthResult, type RepositoryWorkflowResult } from '../../workflows/contract.ts';
import { UNATTACHED_SWEEPS_PER_CONNECTION } from '../../workflows/hook-health.ts';
import { manualHold } from '../support/flaky-proxy.ts';
import { testOutbound } from '../support/outbound.ts';
import {
  agePastSweepDelay,
  attachHeldAtCreate,
  attachmentOf,
  outcomeOf,
  requestAttachment,
  runHookHealth,
  seedRepository,
  useHookWorlds,
  type HookProvider,
  type AttachmentAnswer,
  type HookWorld,
  type Org,
} from '../support/attachments.ts';
import type { Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';
import { sql } from 'kysely';
import { pendingHookSweepsPage, setAttachmentStatus } from '../../lib/db/repositories/attachments.ts';
import type { Provider } from '../../lib/domain.ts';

/**
 * The nightly hook-health pass sweeps the hooks at forgelink's delivery URL off repositories that
 * are not attached, once per status: an attach left `attaching` by a terminated run, or `failed`
 * with a hook the provider stored after the undo had listed (attach-faults.test.ts, the cancelled
 * creation). It never deletes a hook an attached repository relies on.
 */
describe('hook-health pass: sweep of unattached repositories', () => {
  let h: Harness;
  let org: Org;
  let worlds: Record<HookProvider, HookWorld>;
  useHookWorlds((setup) => ({ h, org, worlds } = setup));

  const connectionResult = (world: HookWorld) =>
    h.client.workflow.getHandle(workflowIds.hookHealthConnection(org.id, world.connectionId)).result() as Promise<ConnectionHookHealthResult>;

  it('GitLab: an attach whose run an operator terminated after the hook was created is swept an hour later and marked failed, once', { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const { repository, hold, workflowId } = await attachHeldAtCreate({ h, org, world });
    await h.client.workflow.getHandle(workflowId).terminate('operator, Temporal UI');
    hold.release('drop');
    expect(repository.hooks()).toHaveLength(1);
    expect((await attachmentOf(h, org, repository.repositoryId)).status).toBe('attaching');

    // Not yet due: an attaching (or failed) status is swept once it has stood for an hour.
    await runHookHealth(h, org);
    expect(repository.hooks()).toHaveLength(1);
    expect((await attachmentOf(h, org, repository.repositoryId)).status).toBe('attaching');

    await agePastSweepDelay(h, repository.repositoryId);
    await runHookHealth(h, org);
    expect(repository.hooks()).toEqual([]);
    const attachment = await attachmentOf(h, org, repository.repositoryId);
    expect(attachment.status).toBe('failed');
    expect(attachment.reason).toMatch(/terminated/);
    expect(attachment.hooks).toEqual([]);
    expect((await connectionResult(world)).unattachedSwept).toBe(1);
    await recordHistory(h.client, workflowIds.hookHealthConnection(org.id, world.connectionId), 'hook-health-connection-swept-unattached');

    // Swept once per status: the next night asks nothing of the provider for it.
    await agePastSweepDelay(h, repository.repositoryId);
    const calls = world.server.calls.length;
    await runHookHealth(h, org);
    expect(world.server.calls.slice(calls).filter((c) => c.path.includes(`/projects/${repository.externalId}/`))).toEqual([]);

    // PUT again attaches it as usual.
    expect((await outcomeOf(h, await requestAttachment(h, org, repository.repositoryId, 'PUT'))).result?.status).toBe('attached');
    expect(repository.hooks()).toHaveLength(1);
  });

  it("Bitbucket DC: a failed row whose name another, attached repository of the connection now has is swept without touching that repository's hook", { timeout: 120_000 }, async () => {
    const world = worlds.bitbucket;
    const current = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, current.repositoryId, 'PUT'))).result?.status).toBe('attached');
    const [hook] = current.hooks();
    expect(hook).toBeDefined();
    // A row for a repository deleted at Bitbucket whose name was then reused, its attach failed.
    const stale = await seedRepository(h, { organizationId: org.id, connectionId: world.connectionId, provider: 'bitbucket', externalId: '987654', fullName: current.fullName, project: 'CI' });
    await h.db.insertInto('attachments').values({ organization_id: org.id, repository_id: stale, status: 'failed', reason: 'seeded' }).execute();
    await agePastSweepDelay(h, stale);

    const deletes = world.server.count(world.ops.delete);
    await runHookHealth(h, org);
    expect(current.hooks().map((h) => h.id)).toEqual([hook!.id]);
    expect(world.server.count(world.ops.delete)).toBe(deletes);
    expect((await attachmentOf(h, org, current.repositoryId)).status).toBe('attached');
    expect((await connectionResult(world)).unattachedSwept).toBe(1);
    const row = await h.db.selectFrom('attachments').select(['status', 'hooks_swept_at']).where('repository_id', '=', stale).executeTakeFirstOrThrow();
    expect(row.status).toBe('failed');
    expect(row.hooks_swept_at).not.toBeNull();
  });

  /** A repository of the world whose attach failed, its status standing past the sweep delay (`extraAge` seconds more). */
  const failedRepository = async (world: HookWorld, extraAge = 0) => {
    const repository = await world.newRepository();
    await h.db.insertInto('attachments').values({ organization_id: org.id, repository_id: repository.repositoryId, status: 'failed', reason: 'seeded' }).execute();
    await agePastSweepDelay(h, repository.repositoryId);
    if (extraAge > 0) await h.db.updateTable('attachments').set({ updated_at: sql<Date>`updated_at - make_interval(secs => ${extraAge})` }).where('repository_id', '=', repository.repositoryId).execute();
    return repository;
  };
  const sweptAt = async (repositoryId: string) =>
    (await h.db.selectFrom('attachments').select('hooks_swept_at').where('repository_id', '=', repositoryId).executeTakeFirstOrThrow()).hooks_swept_at;
  const projectCalls = (world: HookWorld, from: number, externalId: string) => world.server.calls.slice(from).filter((c) => new RegExp(`^/api/v4/projects/${externalId}(/|$)`).test(c.path));

  it('GitLab: a sweep that failed at workflow level is not picked first the next night: the other due repositories are swept, it comes after them', { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    // The longest waiting, so picked first on the first night.
    const stuck = await failedRepository(world, 600);
    const others = [];
    for (let i = 0; i < UNATTACHED_SWEEPS_PER_CONNECTION; i++) others.push(await failedRepository(world));

    // Night 1: its sweep never completes (the provider holds the answer; the run is then cut short).
    const hold = manualHold();
    let held = false;
    world.proxy.fault = (request) =>
      request.method === 'GET' && new RegExp(`^/api/v4/projects/${stuck.externalId}(\\?|$)`).test(request.url) && !held ? ((held = true), hold.fault) : undefined;
    const night = await h.client.workflow.start('hookHealthWorkflow', { taskQueue: h.taskQueue, workflowId: `hook-health:${org.id}:${randomUUID()}`, args: [{ organizationId: org.id, connectionsAtOnce: 2 }] });
    await hold.held;
    await night.terminate('the pass was cut short');
    await h.client.workflow.getHandle(workflowIds.repository(org.id, stuck.repositoryId)).terminate('the sweep failed at workflow level');
    hold.release('drop');
    world.proxy.fault = () => undefined;
    expect(await sweptAt(stuck.repositoryId)).toBeNull();

    // Night 2: the others, not the one that failed, take the night's sweeps.
    const calls = world.server.calls.length;
    await runHookHealth(h, org);
    for (const other of others) expect(await sweptAt(other.repositoryId), other.fullName).not.toBeNull();
    expect(projectCalls(world, calls, stuck.externalId)).toEqual([]);
    expect(await sweptAt(stuck.repositoryId)).toBeNull();

    // Night 3: it is still due, and swept.
    await runHookHealth(h, org);
    expect(await sweptAt(stuck.repositoryId)).not.toBeNull();
  });

  it("GitLab: a tenant's many slow hooks at our delivery URL cannot make one sweep overrun: it deletes a bounded number, the rest on a later night", { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await failedRepository(world, 1200);
    const many = SWEEP_MAX_DELETIONS + 5;
    for (let i = 0; i < many; i++) await repository.addCopyOfHookSet();
    expect(repository.hooks()).toHaveLength(many);
    world.server.latencyMs = 50;
    try {
      const deletes = world.server.count(world.ops.delete);
      await runHookHealth(h, org);
      expect(world.server.count(world.ops.delete) - deletes).toBe(SWEEP_MAX_DELETIONS);
      expect(repository.hooks()).toHaveLength(many - SWEEP_MAX_DELETIONS);
      // Not done: still due, for the hooks left.
      expect(await sweptAt(repository.repositoryId)).toBeNull();

      await runHookHealth(h, org);
      expect(repository.hooks()).toEqual([]);
      expect(await sweptAt(repository.repositoryId)).not.toBeNull();
    } finally {
      world.server.latencyMs = 0;
    }
  });

  it('picks no repository the sweep would leave alone unrecorded (so picked every night): not GitHub\'s, not a disconnecting connection\'s', async () => {
    const slug = `org-${randomUUID().slice(0, 8)}`;
    const other = await h.db.insertInto('organizations').values({ slug, name: slug }).returning('id').executeTakeFirstOrThrow();
    async function dueFailed(provider: Provider, connection: { disconnect_requested_at?: Date }) {
      const { id: connectionId } = await h.db
        .insertInto('connections')
        .values({ organization_id: other.id, provider, base_url: `https://${provider}.example`, external_key: String(Math.floor(Math.random() * 1e9) + 1), credential: 'sealed', status: 'active', ...connection } as never)
        .returning('id')
        .executeTakeFirstOrThrow();
      const repositoryId = await seedRepository(h, { organizationId: other.id, connectionId, provider, externalId: randomUUID(), fullName: `g/${randomUUID()}` });
      await setAttachmentStatus(h.db, { organizationId: other.id, repositoryId, status: 'failed', reason: 'test' });
      await agePastSweepDelay(h, repositoryId);
      return { connectionId, repositoryId };
    }
    const gitlab = await dueFailed('gitlab', {});
    expect((await pendingHookSweepsPage(h.db, gitlab.connectionId, 10)).map((r) => r.repositoryId)).toEqual([gitlab.repositoryId]);
    const github = await dueFailed('github', {});
    expect(await pendingHookSweepsPage(h.db, github.connectionId, 10)).toEqual([]);
    const disconnecting = await dueFailed('gitlab', { disconnect_requested_at: new Date() });
    expect(await pendingHookSweepsPage(h.db, disconnecting.connectionId, 10)).toEqual([]);
  });

  type Activities = ReturnType<typeof createActivities>;
  /**
   * Runs `fn` with the harness's worker replaced by one of the test's own on its task queue: the
   * same activities on the same database and fakes, with `settings` changed and `reconcileHooks`
   * wrapped (given the worker's dependencies); the harness's worker runs again afterwards.
   */
  async function withOwnWorker(
    {
      settings = {},
      answerBudget,
      reconcileHooks,
    }: { settings?: Partial<ActivitySettings>; answerBudget?: AnswerBudget; reconcileHooks?: (real: Activities['reconcileHooks'], deps: ActivityDeps) => Activities['reconcileHooks'] },
    fn: () => Promise<void>,
  ): Promise<void> {
    const providers = createProviderFactory({ outbound: testOutbound, ...(answerBudget ? { answerBudget } : {}) });
    const deps: ActivityDeps = { db: h.db, keys: h.keys, providers, outbound: testOutbound, logger: createLogger('own-worker', 'silent'), settings: { ...h.settings, ...settings } };
    const activities = createActivities(deps);
    await h.stopWorker();
    const connection = await NativeConnection.connect({ address: inject('temporalAddress') });
    try {
      const worker = await Worker.create({
        connection,
        namespace: 'default',
        taskQueue: h.taskQueue,
        activities: { ...activities, ...(reconcileHooks ? { reconcileHooks: reconcileHooks(activities.reconcileHooks, deps) } : {}) },
        interceptors: { activity: activityInterceptors(deps) },
        sinks: workflowSinks(),
        workflowBundle: { code: readFileSync(inject('workflowBundlePath'), 'utf8') },
      });
      await worker.runUntil(fn);
    } finally {
      await connection.close();
      await h.restartWorker();
    }
  }

  it('GitLab: a sweep that fails as a whole records no hook health (the repository is not attached), its run answers the failure, and it stays due', { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await failedRepository(world);
    await repository.addCopyOfHookSet();
    const refusal = 'gitlab answered 503: every attempt of the sweep failed';
    // Its step fails at workflow level, as after its last retry (the activity's own retries are not what is tested here).
    const failing = (real: Activities['reconcileHooks']): Activities['reconcileHooks'] => async (input) => {
      if (input.repositoryId === repository.repositoryId) throw ApplicationFailure.create({ type: 'ProviderUnavailable', message: refusal, nonRetryable: true });
      return real(input);
    };
    await withOwnWorker({ reconcileHooks: failing }, async () => {
      await runHookHealth(h, org);
    });

    const run = workflowIds.repository(org.id, repository.repositoryId);
    const result = (await h.client.workflow.getHandle(run).result()) as RepositoryWorkflowResult;
    expect(result).toEqual({ status: 'detached', hookIds: [], requests: 1, sweepFailed: `ProviderUnavailable: ${refusal}` });
    const attachment = (await attachmentOf(h, org, repository.repositoryId)) as AttachmentAnswer & { hookHealth?: unknown };
    expect(attachment.status).toBe('failed');
    expect(attachment.hookHealth).toBeUndefined();
    const row = await h.db.selectFrom('attachments').select(['hook_health_status', 'hooks_swept_at']).where('repository_id', '=', repository.repositoryId).executeTakeFirstOrThrow();
    expect(row).toEqual({ hook_health_status: null, hooks_swept_at: null });
    const connection = await connectionResult(world);
    expect(connection).toMatchObject({ unattachedSwept: 0, unattachedSweepsFailed: 1, failing: 0 });
    expect(repository.hooks()).toHaveLength(1);
    await recordHistory(h.client, run, 'repository-reconcile-unattached-sweep-failed');
    await recordHistory(h.client, workflowIds.hookHealthConnection(org.id, world.connectionId), 'hook-health-connection-unattached-sweep-failed');

    // Still due: the next night sweeps it.
    await runHookHealth(h, org);
    expect(repository.hooks()).toEqual([]);
    expect(await sweptAt(repository.repositoryId)).not.toBeNull();
    expect(await connectionResult(world)).toMatchObject({ unattachedSwept: 1 });
  });

  it('GitLab: a sweep starts no deletion once its time is up (the 45 s cut-off, here set to 0): the hooks wait for a later night, the repository still due', { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await failedRepository(world);
    for (let i = 0; i < 3; i++) await repository.addCopyOfHookSet();
    const deletes = world.server.count(world.ops.delete);
    await withOwnWorker({ settings: { sweepDeletionWindowMs: 0 } }, async () => {
      await runHookHealth(h, org);
    });
    expect(world.server.count(world.ops.delete)).toBe(deletes);
    expect(repository.hooks()).toHaveLength(3);
    expect(await sweptAt(repository.repositoryId)).toBeNull();

    // The harness's worker (the default cut-off) deletes them the next night.
    await runHookHealth(h, org);
    expect(repository.hooks()).toEqual([]);
    expect(await sweptAt(repository.repositoryId)).not.toBeNull();
  });

  it("GitLab: a sweep whose provider keeps answering 503 gives up on the step's 4th attempt and records it, though an activity slot was refused between its attempts", { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await failedRepository(world, 1800);
    await repository.addCopyOfHookSet();
    // Every call about it answered 503, Retry-After 1 s (its retries come a second apart, not on the 1 s doubling backoff).
    const itsPath = new RegExp(`^/api/v4/projects/${repository.externalId}(/|\\?|$)`);
    world.proxy.fault = (request) => (itsPath.test(request.url) ? { kind: 'answer', status: 503, headers: { 'retry-after': '1' } } : undefined);
    // Its step is refused an activity slot after every 3 attempts, 3 times at most: the
    // organization's share is taken then (one place, held by another of its activities). Refused
    // so, the step counted from 1 again on each schedule, and its last schedule (1 attempt left of
    // 10) failed the step at workflow level instead of giving the sweep up.
    const attempts: { attempt: number; firstAttempt?: number }[] = [];
    let refusals = 0;
    const refusingEvery4th = (real: Activities['reconcileHooks'], deps: ActivityDeps): Activities['reconcileHooks'] => {
      const slotsTaken = createInlineAdmission({ perWorker: 1, perOrganization: 1 });
      slotsTaken.tryAdmit(org.id);
      const refused = heartbeating(createHookActivities({ ...deps, inline: createInlineAdmission({ perWorker: 1, perOrganization: 1 }), activitySlots: slotsTaken }));
      return async (input) => {
        if (input.repositoryId !== repository.repositoryId) return real(input);
        attempts.push({ attempt: Context.current().info.attempt, ...(input.firstAttempt !== undefined ? { firstAttempt: input.firstAttempt } : {}) });
        if (attempts.length % 4 === 0 && refusals < 3) {
          refusals++;
          return refused.reconcileHooks(input);
        }
        return real(input);
      };
    };
    const before = world.proxy.requests.length;
    await withOwnWorker({ reconcileHooks: refusingEvery4th }, async () => {
      await runHookHealth(h, org);
    });

    // Not a failed step (`sweepFailed`): the sweep gave up.
    const run = workflowIds.repository(org.id, repository.repositoryId);
    expect(await h.client.workflow.getHandle(run).result()).toEqual({ status: 'detached', hookIds: [], requests: 1 });
    // Attempts 1-3 failed, the 4th was refused; scheduled again from attempt 4, it failed and gave up.
    expect(attempts).toEqual([{ attempt: 1 }, { attempt: 2 }, { attempt: 3 }, { attempt: 4 }, { attempt: 1, firstAttempt: 4 }]);
    expect(world.proxy.requests.slice(before).filter((r) => itsPath.test(r.url))).toHaveLength(4);
    expect(await sweptAt(repository.repositoryId)).not.toBeNull();
    const connection = await connectionResult(world);
    expect(connection.unattachedSwept).toBeGreaterThanOrEqual(1);
    expect(connection.unattachedSweepsFailed).toBeUndefined();
    // Given up, as designed: recorded, not tried again until its status changes (its hook stays).
    expect(repository.hooks()).toHaveLength(1);
    await recordHistory(h.client, run, 'repository-reconcile-sweep-refused-between-attempts');
  });

  it("GitLab: a sweep whose 4th attempt the worker's full answer budget refuses is not given up for it: refused as by admission, it asks again and sweeps", { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await failedRepository(world, 2400);
    await repository.addCopyOfHookSet();
    // Its first 3 calls answered 503 (Retry-After 1 s); the provider answers after that.
    const itsPath = new RegExp(`^/api/v4/projects/${repository.externalId}(/|\\?|$)`);
    let failed = 0;
    world.proxy.fault = (request) => (itsPath.test(request.url) && failed < 3 ? (failed++, { kind: 'answer', status: 503, headers: { 'retry-after': '1' } }) : undefined);
    // During its 4th attempt, the organization's share of the worker's answer budget is full of others' answers.
    const answerBudget = createAnswerBudget({ limit: 64 * 1024 * 1024, perOrganization: 16 * 1024 * 1024 });
    let others: (() => void) | undefined;
    const attempts: { attempt: number; firstAttempt?: number }[] = [];
    const budgetFullOn4th = (real: Activities['reconcileHooks']): Activities['reconcileHooks'] => async (input) => {
      if (input.repositoryId !== repository.repositoryId) return real(input);
      attempts.push({ attempt: Context.current().info.attempt, ...(input.firstAttempt !== undefined ? { firstAttempt: input.firstAttempt } : {}) });
      if (attempts.length === 4) others = answerBudget.tryReserve(org.id, answerBudget.perOrganization);
      else others?.();
      return real(input);
    };
    try {
      await withOwnWorker({ answerBudget, reconcileHooks: budgetFullOn4th }, async () => {
        await runHookHealth(h, org);
      });
    } finally {
      others?.();
    }

    // Not given up with the budget's refusal as its failure (recorded swept, its hook left): refused, then swept.
    expect(repository.hooks()).toEqual([]);
    expect(attempts).toEqual([{ attempt: 1 }, { attempt: 2 }, { attempt: 3 }, { attempt: 4 }, { attempt: 1, firstAttempt: 4 }]);
    const run = workflowIds.repository(org.id, repository.repositoryId);
    expect(await h.client.workflow.getHandle(run).result()).toEqual({ status: 'detached', hookIds: [], requests: 1 });
    expect(await sweptAt(repository.repositoryId)).not.toBeNull();
  });

  it("an attached repository whose check fails as a whole while it is not attached (its row gone: RepositoryNotFound) is counted failing by the connection's run, with a reason saying so", { timeout: 120_000 }, async () => {
    const world = worlds.gitlab;
    const repository = await world.newRepository();
    expect((await outcomeOf(h, await requestAttachment(h, org, repository.repositoryId, 'PUT'))).result?.status).toBe('attached');
    // Listed attached by the connection's run; its row removed (the repository gone from the cache) as its step starts.
    const rowGone = (real: Activities['reconcileHooks']): Activities['reconcileHooks'] => async (input) => {
      if (input.repositoryId === repository.repositoryId) await h.db.deleteFrom('repositories').where('id', '=', repository.repositoryId).execute();
      return real(input);
    };
    await withOwnWorker({ reconcileHooks: rowGone }, async () => {
      await runHookHealth(h, org);
    });

    const connection = await connectionResult(world);
    // Other tests' repositories of this connection may be attached and healthy: this one is the only failure.
    expect(connection).toMatchObject({ failing: 1 });
    expect(connection.failures).toHaveLength(1);
    expect(connection.failures[0]!.repositoryId).toBe(repository.repositoryId);
    expect(connection.failures[0]!.reason).toContain('the reconcile of this repository failed while it was not attached');
    expect(connection.failures[0]!.reason).toContain('RepositoryNotFound');
    expect(connection.failures[0]!.reason).not.toContain('sweep');
    await recordHistory(h.client, workflowIds.hookHealthConnection(org.id, world.connectionId), 'hook-health-connection-failed-reconcile-counted');
  });
});
