import { randomUUID } from 'node:crypto';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activityCallsPerOrganization, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';
import { lastListing } from '../../lib/db/repositories/repository-cache.ts';
import { createWorkerMetrics } from '../../lib/metrics.ts';
import { ACTIVITY_NOT_ADMITTED, type ConnectResult, type RefreshResult } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { holding, startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, recordHistory } from '../support/histories.ts';

/** A small worker: 4 activity slots, of which one organization's tenant-facing activities may hold 1 (a quarter). */
const SIZING = { ...WORKER_SIZING_DEFAULTS, maxConcurrentActivityTaskExecutions: 4 };
/** Enough of A's connections for the refresh's lanes (8) to fill every activity slot if each listing were admitted. */
const A_CONNECTIONS = SIZING.maxConcurrentActivityTaskExecutions;
/** A's listings the worker lets wait for A's server at once: its share of the activity slots. */
const A_ADMITTED = activityCallsPerOrganization(SIZING);
/** Under a listing call's 30 s timeout: A's admitted call is still open when B's connect must be done. */
const B_WITHIN_MS = 25_000;

const SCOPES = ['api', 'read_user', 'read_repository'];

const isRefusal = (e: temporal.api.history.v1.IHistoryEvent) => {
  const failure = e.activityTaskFailedEventAttributes?.failure;
  return (failure?.cause?.applicationFailureInfo ?? failure?.applicationFailureInfo)?.type === ACTIVITY_NOT_ADMITTED;
};

describe("activity slots: one organization's repository listings at a server that hangs and another organization's activities", () => {
  const metrics = createWorkerMetrics();
  let h: Harness;
  let gitlab: FakeGitlab;
  let proxy: FlakyProxy;

  beforeAll(async () => {
    [h, gitlab] = await Promise.all([startHarness({ sizing: SIZING, metrics }), startFakeGitlab()]);
    proxy = await startFlakyProxy(gitlab.url);
  });
  afterAll(async () => {
    await proxy?.close();
    await gitlab?.close();
    await h?.close();
  });

  function newToken() {
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: SCOPES });
    return token;
  }

  const listingsNotAdmitted = async () =>
    (await metrics.registry.getSingleMetric('forgelink_activities_not_admitted_total')!.get()).values
      .filter((v) => v.labels.slot === 'activity' && v.labels.activity === 'listRepositoriesChunk')
      .reduce((sum, v) => sum + v.value, 0);

  it("B's connect validates while A's listings hold A's share; A's listings beyond it are refused and wait on timers in their lanes", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    gitlab.addProject({ pathWithNamespace: 'shared/listed' });
    const hungA = holding(proxy);
    const aIds: string[] = [];
    for (let i = 0; i < A_CONNECTIONS; i++) aIds.push(await seedConnection(h, { organizationId: a.org.id, provider: 'gitlab', baseUrl: hungA.url, secret: newToken() }));

    // A's on-demand refresh: a lane for each of A's connections.
    const workflowId = `refresh-admission-${randomUUID()}`;
    const run = await h.client.workflow.start('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ organizationId: a.org.id }] });
    await hungA.arrivals(A_ADMITTED);

    const bStartedAt = performance.now();
    const res = await h.request('POST', `/api/v1/orgs/${b.org.slug}/connections`, { token: b.token, body: { provider: 'gitlab', baseUrl: gitlab.url, token: newToken() } });
    expect(res.status, await res.clone().text()).toBe(202);
    const bRun = ((await res.json()) as { workflowId: string }).workflowId;
    expect(await resultOf<ConnectResult>(h, bRun)).toMatchObject({ status: 'active' });
    const bMs = Math.round(performance.now() - bStartedAt);
    const aArrived = hungA.arrived;
    const refusedSoFar = await listingsNotAdmitted();
    console.log(`B's connect was active ${bMs} ms after it was asked for, with ${aArrived} of A's listing calls held at A's server and ${refusedSoFar} of A's listings refused`);
    expect(bMs).toBeLessThan(B_WITHIN_MS);
    // A's admitted listing still open (a call that timed out would have been tried again), none of A's refused ones at A's server.
    expect(aArrived).toBe(A_ADMITTED);
    expect(refusedSoFar).toBeGreaterThanOrEqual(A_CONNECTIONS - A_ADMITTED);

    hungA.release();
    const result: RefreshResult = await run.result();
    expect(result).toMatchObject({ connections: A_CONNECTIONS, refreshed: A_CONNECTIONS, failedCount: 0 });
    for (const id of aIds) expect(await lastListing(h.db, id)).toMatchObject({ rowsWritten: 1 });
    // Each refusal made no call: a timer, and the same listing scheduled again in its lane.
    const events = await historyEvents(h.client, workflowId);
    const types = events.map((e) => temporal.api.enums.v1.EventType[e.eventType ?? 0]);
    const refusals = events.filter(isRefusal).length;
    expect(refusals).toBeGreaterThanOrEqual(A_CONNECTIONS - A_ADMITTED);
    expect(types.filter((t) => t === 'EVENT_TYPE_TIMER_STARTED').length).toBe(refusals);
    expect(types.filter((t) => t === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED').length).toBe(A_CONNECTIONS + refusals);
    await recordHistory(h.client, workflowId, 'refresh-organization-listing-not-admitted');
  }, 180_000);
});
