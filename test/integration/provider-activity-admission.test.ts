import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { ACTIVITY_NOT_ADMITTED, workflowIds, type ConnectResult, type RepositoryWorkflowResult } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { holding, startFlakyProxy, type ProxyFault } from '../support/flaky-proxy.ts';
import { gitlabWorld, requestAttachment } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { recordHistory } from '../support/histories.ts';

/** A small worker: 4 activity slots, of which one organization's provider calls may hold 1 (worker.activityCallsPerOrganization, by default a quarter). */
const SIZING = { ...WORKER_SIZING_DEFAULTS, maxConcurrentActivityTaskExecutions: 4 };
/** Enough of A's provider steps to fill every activity slot if each were admitted. */
const A_STEPS = SIZING.maxConcurrentActivityTaskExecutions;
/** A's calls the worker lets wait for A's provider at once: its share of the activity slots. */
const A_ADMITTED = activityCallsPerOrganization(SIZING);

const SCOPES = ['api', 'read_user', 'read_repository'];

/**
 * A provider in front of a fake GitLab that, while held, takes every request and answers none
 * (a tenant's server that hangs), until `release`, when it forwards them all. With `first`, the
 * first request gets that answer at once instead (`firstAnswered` resolves once it has).
 */
async function hangingProvider(gitlab: FakeGitlab, first?: ProxyFault) {
  return holding(await startFlakyProxy(gitlab.url), first);
}

/** Resolves once `check` holds, looking every 100 ms (a state of the server's, which nothing tells the test of). */
async function until(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const isRefusal = (e: temporal.api.history.v1.IHistoryEvent) => {
  const failure = e.activityTaskFailedEventAttributes?.failure;
  return (failure?.cause?.applicationFailureInfo ?? failure?.applicationFailureInfo)?.type === ACTIVITY_NOT_ADMITTED;
};

async function historyOf(h: Harness, workflowId: string) {
  return (await h.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
}

/** How the run's activities went: those refused an activity slot, activities scheduled, timers started. */
async function shapeOf(h: Harness, workflowId: string) {
  const events = await historyOf(h, workflowId);
  const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
  const refusals = events.filter(isRefusal).length;
  return { workflowId, refusals, activities: types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length, timers: types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length };
}

/** The shapes of A's ended runs that were refused an activity slot: at least A's steps beyond its share (A_STEPS − A_ADMITTED). */
async function refusedRuns(h: Harness, aRuns: string[]) {
  const refused = (await Promise.all(aRuns.map((run) => shapeOf(h, run)))).filter((s) => s.refusals > 0);
  expect(refused.length).toBeGreaterThanOrEqual(A_STEPS - A_ADMITTED);
  return refused;
}

describe("activity slots: one organization's hung provider and another organization's provider steps", () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  const closers: (() => Promise<void>)[] = [];
  let n = 0;

  beforeAll(async () => {
    [h, gitlab] = await Promise.all([startHarness({ sizing: SIZING }), startFakeGitlab()]);
  });
  afterAll(async () => {
    await Promise.all(closers.map((close) => close()));
    await gitlab?.close();
    await h?.close();
  });

  function newToken() {
    const token = `glpat-adm-${++n}-${Math.random().toString(36).slice(2)}`;
    gitlab.addToken({ token, username: `adm${n}`, scopes: SCOPES });
    return token;
  }

  /** Starts a connect of the organization to GitLab at `baseUrl`; answers its run's id (without waiting for it). */
  async function connect(o: { org: { slug: string }; token: string }, baseUrl: string): Promise<string> {
    const res = await h.request('POST', `/api/v1/orgs/${o.org.slug}/connections`, { token: o.token, body: { provider: 'gitlab', baseUrl, token: newToken() } });
    expect(res.status, await res.clone().text()).toBe(202);
    return ((await res.json()) as { workflowId: string }).workflowId;
  }

  it("B's connect validates while A's hung provider holds A's share; A's refused validations wait on timers", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const hungA = await hangingProvider(gitlab);
    closers.push(() => hungA.close());

    const aRuns: string[] = [];
    for (let i = 0; i < A_STEPS; i++) aRuns.push(await connect(a, hungA.url));
    // A's admitted validations wait for A's provider; the others, refused a slot, wait on timers.
    await hungA.arrivals(A_ADMITTED);

    const bStartedAt = performance.now();
    const bRun = await connect(b, gitlab.url);
    expect(await resultOf<ConnectResult>(h, bRun)).toMatchObject({ status: 'active' });
    const bMs = Math.round(performance.now() - bStartedAt);
    const aArrived = hungA.arrived;
    console.log(`B's connect was active ${bMs} ms after it was asked for, with ${aArrived} of A's validations held at A's provider`);
    // While A's admitted calls were all still open (a call that timed out would have been tried
    // again and arrived once more), and none of A's refused ones had reached A's provider.
    expect(aArrived).toBe(A_ADMITTED);

    hungA.release();
    for (const run of aRuns) expect(await resultOf<ConnectResult>(h, run)).toMatchObject({ status: 'active' });
    const refused = await refusedRuns(h, aRuns);
    // Each refusal is a timer and the same validation scheduled again; the recording of the outcome is one more activity.
    for (const s of refused) expect(s).toMatchObject({ activities: s.refusals + 2, timers: s.refusals });
    await recordHistory(h.client, refused[0]!.workflowId, 'connect-validation-not-admitted');
    await recordHistory(h.client, bRun, 'connect-validation-admitted');
  }, 120_000);

  it('a validation refused after a failed attempt goes on from the attempt it did not make, with that attempt\'s backoff', async () => {
    const a = await createOrgWithToken(h);
    // A's provider throttles the first call (Retry-After 4 s), then hangs.
    const throttlingA = await hangingProvider(gitlab, { kind: 'answer', status: 429, headers: { 'retry-after': '4' } });
    closers.push(() => throttlingA.close());
    const throttled = await connect(a, throttlingA.url);
    await throttlingA.firstAnswered;
    // Another of A's validations holds A's share while the first waits out its Retry-After.
    const holding = await connect(a, throttlingA.url);
    await throttlingA.arrivals(1);
    await until(async () => (await historyOf(h, throttled)).some(isRefusal), "the throttled validation's second attempt refused");
    throttlingA.release();
    for (const run of [throttled, holding]) expect(await resultOf<ConnectResult>(h, run)).toMatchObject({ status: 'active' });

    const validations = (await historyOf(h, throttled)).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'validateConnection');
    const policies = validations.map((e) => {
      const policy = e.activityTaskScheduledEventAttributes!.retryPolicy!;
      return { maximumAttempts: policy.maximumAttempts, initialIntervalSeconds: Number(policy.initialInterval?.seconds ?? 0) };
    });
    // Attempt 1 failed (429), attempt 2 was refused: the validation is scheduled again as attempt 2
    // of 10, with attempt 2's backoff (2 s), however often it was refused.
    expect(policies[0]).toEqual({ maximumAttempts: 10, initialIntervalSeconds: 1 });
    expect(policies.slice(1).length).toBeGreaterThanOrEqual(1);
    for (const policy of policies.slice(1)) expect(policy).toEqual({ maximumAttempts: 9, initialIntervalSeconds: 2 });
    const started = (await historyOf(h, throttled)).filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
    expect(started[0]).toBe(2);
    await recordHistory(h.client, throttled, 'connect-validation-not-admitted-after-attempt');
  }, 120_000);

  it("B's detach deletes its hooks while A's hung provider holds A's share; A's refused detaches wait on timers", async () => {
    const [a, b] = await Promise.all([createOrgWithToken(h), createOrgWithToken(h)]);
    const [orgA, orgB] = [
      { ...a.org, token: a.token },
      { ...b.org, token: b.token },
    ];
    const [worldA, worldB] = await Promise.all([gitlabWorld(h, orgA), gitlabWorld(h, orgB)]);
    closers.push(() => worldA.close(), () => worldB.close());
    // B's repository is attached (its hook set made) before anything hangs.
    const repositoryB = await worldB.newRepository();
    expect(await resultOf<RepositoryWorkflowResult>(h, await requestAttachment(h, orgB, repositoryB.repositoryId, 'PUT'))).toMatchObject({ status: 'attached' });
    expect(repositoryB.hooks()).toHaveLength(1);

    // A's provider hangs; A asks for a detach of each of its repositories.
    const hungA = holding(worldA.proxy);
    const repositoriesA = await Promise.all(Array.from({ length: A_STEPS }, () => worldA.newRepository()));
    const aRuns: string[] = [];
    for (const repository of repositoriesA) aRuns.push(await requestAttachment(h, orgA, repository.repositoryId, 'DELETE'));
    await hungA.arrivals(A_ADMITTED);

    const bStartedAt = performance.now();
    const bRun = await requestAttachment(h, orgB, repositoryB.repositoryId, 'DELETE');
    expect(await resultOf<RepositoryWorkflowResult>(h, bRun)).toMatchObject({ status: 'detached' });
    const bMs = Math.round(performance.now() - bStartedAt);
    const aArrived = hungA.arrived;
    console.log(`B's detach was done ${bMs} ms after it was asked for, with ${aArrived} of A's detach calls held at A's provider`);
    expect(repositoryB.hooks()).toHaveLength(0);
    // A's admitted call still open (one that timed out would have been tried again), none of A's refused ones at A's provider.
    expect(aArrived).toBe(A_ADMITTED);

    hungA.release();
    for (const run of aRuns) expect(await resultOf<RepositoryWorkflowResult>(h, run)).toMatchObject({ status: 'detached' });
    const refused = await refusedRuns(h, aRuns);
    // Each refusal is a timer and the same sweep scheduled again; beginning and finishing the detach are two more activities.
    for (const s of refused) expect(s).toMatchObject({ activities: s.refusals + 3, timers: s.refusals });
    await recordHistory(h.client, refused[0]!.workflowId, 'repository-detach-activity-not-admitted');
    await recordHistory(h.client, bRun, 'repository-attach-then-detach-activity-admitted');
  }, 120_000);

  it("B's hook-health check runs while A's hung provider holds A's share; A's refused checks wait on timers", async () => {
    const [a, b] = await Promise.all([createOrgWithToken(h), createOrgWithToken(h)]);
    const [orgA, orgB] = [
      { ...a.org, token: a.token },
      { ...b.org, token: b.token },
    ];
    const [worldA, worldB] = await Promise.all([gitlabWorld(h, orgA), gitlabWorld(h, orgB)]);
    closers.push(() => worldA.close(), () => worldB.close());
    const repositoryB = await worldB.newRepository();
    expect(await resultOf<RepositoryWorkflowResult>(h, await requestAttachment(h, orgB, repositoryB.repositoryId, 'PUT'))).toMatchObject({ status: 'attached' });

    /** The hook-health check of one repository, as the nightly reconcile asks its repository workflow for it. */
    const reconcile = async (organizationId: string, repositoryId: string) => {
      const workflowId = workflowIds.repository(organizationId, repositoryId);
      await h.client.workflow.start('repositoryWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ organizationId, repositoryId, pending: [{ action: 'reconcile' }] }] });
      return workflowId;
    };
    // A's repositories are attached (as far as forgelink knows) at a provider that hangs.
    const hungA = holding(worldA.proxy);
    const repositoriesA = await Promise.all(Array.from({ length: A_STEPS }, () => worldA.newRepository()));
    await h.db
      .insertInto('attachments')
      .values(repositoriesA.map((r) => ({ organization_id: orgA.id, repository_id: r.repositoryId, status: 'attached' as const })))
      .execute();
    const aRuns: string[] = [];
    for (const repository of repositoriesA) aRuns.push(await reconcile(orgA.id, repository.repositoryId));
    await hungA.arrivals(A_ADMITTED);

    const bStartedAt = performance.now();
    const bRun = await reconcile(orgB.id, repositoryB.repositoryId);
    expect(await resultOf<RepositoryWorkflowResult>(h, bRun)).toMatchObject({ status: 'attached', hookIds: [repositoryB.hooks()[0]!.id] });
    const bMs = Math.round(performance.now() - bStartedAt);
    const aArrived = hungA.arrived;
    console.log(`B's hook-health check was done ${bMs} ms after it was asked for, with ${aArrived} of A's checks held at A's provider`);
    expect(aArrived).toBe(A_ADMITTED);

    hungA.release();
    for (const run of aRuns) await resultOf(h, run);
    const refused = await refusedRuns(h, aRuns);
    // Each refusal is a timer and the same check scheduled again.
    for (const s of refused) expect(s).toMatchObject({ activities: s.refusals + 1, timers: s.refusals });
    await recordHistory(h.client, refused[0]!.workflowId, 'repository-reconcile-activity-not-admitted');
    await recordHistory(h.client, bRun, 'repository-reconcile-activity-admitted');
  }, 120_000);

  it("B's connect validates while A's attaches, refused inside the workflow task, hold A's share of activity slots; A's refused steps wait on timers", async () => {
    const [a, b] = await Promise.all([createOrgWithToken(h), createOrgWithToken(h)]);
    const orgA = { ...a.org, token: a.token };
    const worldA = await gitlabWorld(h, orgA);
    closers.push(() => worldA.close());
    // A's provider hangs: A's first attaches hold A's places inside workflow tasks
    // (worker.inlineCallsPerOrganization), the next run their steps as activities.
    const aInline = SIZING.inlineCallsPerOrganization;
    const hungA = holding(worldA.proxy);
    const repositoriesA = await Promise.all(Array.from({ length: aInline + A_STEPS }, () => worldA.newRepository()));
    const aRuns: string[] = [];
    for (const repository of repositoriesA) aRuns.push(await requestAttachment(h, orgA, repository.repositoryId, 'PUT'));
    await hungA.arrivals(aInline + A_ADMITTED);

    const bStartedAt = performance.now();
    const bRun = await connect(b, gitlab.url);
    expect(await resultOf<ConnectResult>(h, bRun)).toMatchObject({ status: 'active' });
    const bMs = Math.round(performance.now() - bStartedAt);
    const aArrived = hungA.arrived;
    console.log(`B's connect was active ${bMs} ms after it was asked for, with ${aArrived} of A's attach steps held at A's provider`);
    expect(aArrived).toBe(aInline + A_ADMITTED);

    hungA.release();
    for (const run of aRuns) expect(await resultOf<RepositoryWorkflowResult>(h, run)).toMatchObject({ status: 'attached' });
    for (const repository of repositoriesA) expect(repository.hooks()).toHaveLength(1);
    const refused = await refusedRuns(h, aRuns);
    for (const s of refused) expect(s.timers).toBeGreaterThanOrEqual(s.refusals);
    await recordHistory(h.client, refused[0]!.workflowId, 'repository-attach-gitlab-activity-not-admitted');
  }, 120_000);
});
