import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEMPORAL_RETRY_AFTER_SECONDS } from '../../api/problem.ts';
import { workflowIds } from '../../workflows/contract.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { ownTemporalServer, stallingProxy } from '../support/temporal-outage.ts';

/**
 * The API's calls to Temporal for a request end within one deadline (temporal.requestDeadlineSeconds,
 * api/temporal-deadline.ts), on a Temporal dev server of this file's own that the test stops, with
 * the API's client behind a proxy that can lose Temporal's answers. Without the deadline a stopped
 * server held GET /api/v1/workflows/{id} ~19 s (the client's retries) before its 503, and a start
 * whose answer never came waited for ever. No worker: the runs started stay running, so a retried
 * start meets the run its first attempt began.
 */
const DEADLINE_MS = 2000;
/** Answering takes the deadline plus the request's own work; a loaded machine's slack. */
const MARGIN_MS = 1500;

describe("the API's Temporal deadline (a dev server of its own)", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-deadline-'));
  let server: Awaited<ReturnType<typeof ownTemporalServer>> | undefined;
  let proxy: Awaited<ReturnType<typeof stallingProxy>> | undefined;
  let h: Harness;
  let app: Harness['app'];

  beforeAll(async () => {
    server = await ownTemporalServer(dir);
    await server.start();
    proxy = await stallingProxy(server.address);
    h = await startHarness({ temporalAddress: server.address, apiTemporalAddress: proxy.address, withoutWorker: true, withoutIntakeRelay: true });
    app = h.appWith({ temporalDeadlineMs: DEADLINE_MS });
  });
  afterAll(async () => {
    await h?.close();
    await proxy?.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The request through the app with the test's deadline, and how long it took. */
  async function timed(method: string, url: string, token?: string, body?: unknown) {
    const started = performance.now();
    const res = await app.request(url, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return { res, ms: Math.round(performance.now() - started) };
  }
  const refresh = (org: { slug: string }, token: string) => timed('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, token);
  const workflow = (id: string, token: string) => timed('GET', `/api/v1/workflows/${encodeURIComponent(id)}`, token);
  const connections = (org: { id: string }) => h.db.selectFrom('connections').select('id').where('organization_id', '=', org.id).execute();

  async function expectUnavailable({ res, ms }: { res: Response; ms: number }, detail: RegExp) {
    const problem = (await res.json()) as { status: number; detail: string };
    expect({ status: res.status, type: res.headers.get('content-type'), retryAfter: res.headers.get('retry-after'), detail: problem.detail }).toEqual({ status: 503, type: 'application/problem+json', retryAfter: String(TEMPORAL_RETRY_AFTER_SECONDS), detail: expect.stringMatching(detail) });
    expect(ms, 'answered within the deadline and a margin').toBeLessThan(DEADLINE_MS + MARGIN_MS);
  }

  it('answers as before while Temporal answers', async () => {
    const { org, token } = await createOrgWithToken(h);
    const started = await refresh(org, token);
    expect(started.res.status).toBe(202);
    const { workflowId } = (await started.res.json()) as { workflowId: string };
    const shown = await workflow(workflowId, token);
    expect(shown.res.status).toBe(200);
    expect(await shown.res.json()).toMatchObject({ workflowId, status: 'RUNNING' });
  });

  it("answers 503 by the deadline when Temporal's answers are lost; a retry joins the run the first start began, and a connect's retry leaves one connection", async () => {
    const { org, token } = await createOrgWithToken(h);
    const workflowId = workflowIds.refreshOrganization(org.id);
    proxy!.loseAnswers();
    try {
      await expectUnavailable(await refresh(org, token), new RegExp(`did not answer in time; try again \\(a retry joins run ${workflowId}`));
      await expectUnavailable(await timed('POST', `/api/v1/orgs/${org.slug}/connections`, token, { provider: 'gitlab', baseUrl: 'http://127.0.0.1:9', token: 'glpat-deadline' }), /the pending connection was removed; try again$/);
      expect(await connections(org)).toEqual([]);
    } finally {
      proxy!.heal();
    }
    // The start reached Temporal: its run is there, though the API never heard so.
    const first = await h.client.workflow.getHandle(workflowId).describe();
    const retried = await refresh(org, token);
    expect(retried.res.status).toBe(202);
    expect(await retried.res.json()).toEqual({ workflowId });
    expect((await h.client.workflow.getHandle(workflowId).describe()).runId).toBe(first.runId);

    const connected = await timed('POST', `/api/v1/orgs/${org.slug}/connections`, token, { provider: 'gitlab', baseUrl: 'http://127.0.0.1:9', token: 'glpat-deadline' });
    expect(connected.res.status).toBe(202);
    expect((await connections(org)).map((c) => c.id)).toEqual([((await connected.res.json()) as { id: string }).id]);
  });

  it('answers GET workflow, a start and /readyz with 503 by the deadline while Temporal is stopped, and as before once it is back', { timeout: 180_000 }, async () => {
    const { org, token } = await createOrgWithToken(h);
    const started = await refresh(org, token);
    expect(started.res.status).toBe(202);
    const { workflowId } = (await started.res.json()) as { workflowId: string };

    const other = await createOrgWithToken(h);
    await server!.stop();
    try {
      const outage = {
        workflow: await workflow(workflowId, token),
        start: await refresh(other.org, other.token),
        readyz: await timed('GET', '/readyz'),
      };
      console.log(`time to 503 with Temporal stopped (deadline ${DEADLINE_MS} ms): GET workflow ${outage.workflow.ms} ms, start ${outage.start.ms} ms, /readyz ${outage.readyz.ms} ms`);
      await expectUnavailable(outage.workflow, /^the workflow engine \(Temporal\) is unavailable; try again$/);
      await expectUnavailable(outage.start, /did not answer in time; try again/);
      expect(outage.readyz.res.status).toBe(503);
      expect(await outage.readyz.res.json()).toMatchObject({ checks: { temporal: 'unavailable' } });
      expect(outage.readyz.ms).toBeLessThan(DEADLINE_MS + MARGIN_MS);
    } finally {
      await server!.start();
    }
    // The client connects again within its reconnect backoff; then every answer is as before.
    await expect.poll(async () => (await workflow(workflowId, token)).res.status, { timeout: 60_000, interval: 500 }).toBe(200);
    const back = await refresh(other.org, other.token);
    expect(back.res.status).toBe(202);
    expect(await back.res.json()).toEqual({ workflowId: workflowIds.refreshOrganization(other.org.id) });
    expect((await timed('GET', '/readyz')).res.status).toBe(200);
  });
});
