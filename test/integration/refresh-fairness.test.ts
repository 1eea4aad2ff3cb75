import { randomUUID } from 'node:crypto';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDb, type Db } from '../../lib/db/index.ts';
import { migrateToLatest } from '../../lib/db/migrate.ts';
import { lastListing } from '../../lib/db/repositories/repository-cache.ts';
import type { RefreshResult } from '../../workflows/contract.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection } from '../support/attachments.ts';
import { holding, startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { createOrgWithToken, startHarness, type Harness } from '../support/harness.ts';
import { historyEvents, recordHistory } from '../support/histories.ts';

/** More of A's connections than the refresh has lanes (8): in batch order they would take every one. */
const A_CONNECTIONS = 12;
/** B's connections sort after all of A's (connections are read in id order). */
const B_CONNECTION_IDS = ['ffffffff-ffff-4fff-bfff-fffffffffffe', 'ffffffff-ffff-4fff-bfff-ffffffffffff'];
/** Under a provider call's 30 s timeout: A's first calls are all still open when B must be listed. */
const B_WITHIN_MS = 25_000;
/**
 * Reading ahead: 4 connections a batch, in rounds. H's 4 connections to a server that never answers
 * are its rounds 1-4, F's 6 are F's rounds 1-6, so the batches are [H1 F1 H2 F2] [H3 F3 H4 F4] [F5
 * F6] (H and F in either order within a round): two of H's hung listings in each of the first two
 * batches. A batch that ends with its slowest listing keeps F3-F6 waiting for H's (10 attempts,
 * about 13 minutes each batch).
 */
const READ_AHEAD = { batchSize: 4, hungConnections: 4, fineConnections: 6 };

/** Resolves once `check` holds, looking every 100 ms (a row the worker writes, which nothing tells the test of). */
async function until(check: () => Promise<boolean>, what: string | (() => string), timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** `proxy` made into a tenant's server that takes every request and answers none until `release`, when it forwards them all. */
function hanging(proxy: FlakyProxy) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let held = true;
  let arrived = 0;
  proxy.fault = () => (held ? { kind: 'hold-request', onHeld: () => arrived++, release: released, onReleased: () => {} } : undefined);
  return {
    url: proxy.url,
    get arrived() {
      return arrived;
    },
    release() {
      held = false;
      release();
    },
  };
}

/**
 * The nightly refresh reads every organization's connections, so this file has a database of its
 * own: another file's connections (to fakes long closed) would share the run's lanes.
 */
describe("nightly refresh: one organization's servers that never answer and another organization's listings", () => {
  const database = `forgelink_refresh_fair_${randomUUID().replaceAll('-', '')}`;
  let admin: Db;
  let h: Harness;
  let gitlab: FakeGitlab;
  let proxy: FlakyProxy;

  beforeAll(async () => {
    admin = createDb(inject('databaseUrl'), { max: 1 });
    await sql`create database ${sql.id(database)}`.execute(admin);
    const url = new URL(inject('databaseUrl'));
    url.pathname = `/${database}`;
    const db = createDb(url.toString(), { max: 1 });
    await migrateToLatest(db);
    await db.destroy();
    [h, gitlab] = await Promise.all([startHarness({ databaseUrl: url.toString() }), startFakeGitlab()]);
    proxy = await startFlakyProxy(gitlab.url);
  });
  afterAll(async () => {
    await proxy?.close();
    await gitlab?.close();
    await h?.close();
    await sql`drop database if exists ${sql.id(database)} with (force)`.execute(admin);
    await admin.destroy();
  });

  function newToken() {
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'lister', scopes: ['api', 'read_user', 'read_repository'] });
    return token;
  }

  it("B's connections are listed while A's connections to a hung server hold 6 of the 8 lanes; released, A's are listed too", async () => {
    const [a, b] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    gitlab.addProject({ pathWithNamespace: 'shared/one' });
    const hungA = hanging(proxy);
    const aIds: string[] = [];
    for (let i = 0; i < A_CONNECTIONS; i++) aIds.push(await seedConnection(h, { organizationId: a.org.id, provider: 'gitlab', baseUrl: hungA.url, secret: newToken() }));
    for (const id of B_CONNECTION_IDS) await seedConnection(h, { id, organizationId: b.org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: newToken() });

    // As the Schedule starts it: every organization.
    const workflowId = `refresh-fair-${randomUUID()}`;
    const startedAt = performance.now();
    const run = await h.client.workflow.start('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{}] });
    const bListed = async () => (await Promise.all(B_CONNECTION_IDS.map((id) => lastListing(h.db, id)))).every((listing) => listing !== undefined);
    await until(bListed, "B's connections listed", B_WITHIN_MS);
    const bMs = Math.round(performance.now() - startedAt);
    const aHeld = hungA.arrived;
    console.log(`B's 2 connections were listed ${bMs} ms after the nightly run started, with ${aHeld} of A's listing calls held at A's server`);
    // Each the first call of one of A's listings (the 2 lanes B gave back went to A): none timed out and was tried again.
    expect(aHeld).toBeLessThanOrEqual(8);

    hungA.release();
    const result: RefreshResult = await run.result();
    expect(result).toMatchObject({ connections: A_CONNECTIONS + B_CONNECTION_IDS.length, refreshed: A_CONNECTIONS + B_CONNECTION_IDS.length, failedCount: 0 });
    for (const id of aIds) expect(await lastListing(h.db, id)).toMatchObject({ rowsWritten: 1 });
    // The 8 lanes' first listings: A was given a lane only while B had as many going, so B's 2 were
    // among them, beside 6 of A's (in batch order, A's 12 first, the first 8 would all be A's).
    const listed = (await historyEvents(h.client, workflowId)).flatMap((e) => {
      const scheduled = e.activityTaskScheduledEventAttributes;
      if (scheduled?.activityType?.name !== 'listRepositoriesChunk') return [];
      return [defaultPayloadConverter.fromPayload<{ connectionId: string }>(scheduled.input!.payloads![0] as Payload).connectionId];
    });
    expect(listed.slice(0, 8).filter((id) => B_CONNECTION_IDS.includes(id))).toHaveLength(B_CONNECTION_IDS.length);
    await recordHistory(h.client, workflowId, 'refresh-all-lanes-by-organization-reading-ahead');
  }, 120_000);

  it("reads every organization's connections in rounds across batches and runs: one organization's connections beyond another's count come after all of the other's", async () => {
    const [p, q] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    const pIds: string[] = [];
    for (let i = 0; i < 3; i++) pIds.push(await seedConnection(h, { organizationId: p.org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: newToken() }));
    // In id order Q's one connection would come after P's (and the previous test's A's) in the last batches.
    const qId = await seedConnection(h, { id: 'ffffffff-ffff-4fff-bfff-fffffffffffd', organizationId: q.org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: newToken() });

    // Three connections a batch, one batch a run: the place in the rounds is carried from run to run.
    const workflowId = `refresh-rounds-${randomUUID()}`;
    const first = await h.client.workflow.start('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ batchSize: 3, batchesPerRun: 1 }] });
    const result: RefreshResult = await first.result();
    const all = await h.db.selectFrom('connections').select(['id', 'organization_id']).where('status', '=', 'active').execute();
    expect(result).toMatchObject({ connections: all.length, refreshed: all.length, failedCount: 0 });

    const listed: string[] = [];
    let runs = 0;
    for (let runId: string | undefined = first.firstExecutionRunId; runId; runs++) {
      const { events } = await h.client.workflow.getHandle(workflowId, runId).fetchHistory();
      for (const e of events ?? []) {
        const scheduled = e.activityTaskScheduledEventAttributes;
        if (scheduled?.activityType?.name === 'listRepositoriesChunk') listed.push(defaultPayloadConverter.fromPayload<{ connectionId: string }>(scheduled.input!.payloads![0] as Payload).connectionId);
      }
      runId = events!.at(-1)!.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
    }
    expect(runs).toBe(Math.ceil((all.length + 1) / 3));
    expect([...listed].sort()).toEqual(all.map((c) => c.id).sort());
    // Each organization's k-th connection (by creation) is listed after every organization's (k-1)-th.
    const roundOf = new Map<string, number>();
    const seen = new Map<string, number>();
    for (const id of listed) {
      const organizationId = all.find((c) => c.id === id)!.organization_id;
      seen.set(organizationId, (seen.get(organizationId) ?? 0) + 1);
      roundOf.set(id, seen.get(organizationId)!);
    }
    const rounds = listed.map((id) => roundOf.get(id)!);
    expect(rounds).toEqual([...rounds].sort((x, y) => x - y));
    expect(listed.indexOf(qId)).toBeLessThan(listed.indexOf(pIds[1]!));
    expect(pIds.map((id) => roundOf.get(id))).toEqual([1, 2, 3]);
    await recordHistory(h.client, workflowId, 'refresh-all-in-rounds-continued-as-new-reading-ahead', first.firstExecutionRunId);
    await recordHistory(h.client, workflowId, 'refresh-all-in-rounds-last-batch-reading-ahead');
  }, 120_000);
  it("reads ahead across batches: F's connections in batches after H's hung listings are listed while H's first calls are all still held", async () => {
    // The tests before leave connections the nightly run would read too: set aside, the batches hold only this test's.
    await h.db.updateTable('connections').set({ status: 'disconnected' }).where('status', '=', 'active').execute();
    const [hungOrg, fineOrg] = [await createOrgWithToken(h), await createOrgWithToken(h)];
    gitlab.addProject({ pathWithNamespace: 'shared/read-ahead' });
    const hungProxy = await startFlakyProxy(gitlab.url);
    try {
      const hung = holding(hungProxy);
      const hungIds: string[] = [];
      const fineIds: string[] = [];
      // Created in turn, so each organization's k-th connection (by creation) is its round k.
      for (let i = 0; i < READ_AHEAD.fineConnections; i++) {
        if (i < READ_AHEAD.hungConnections) hungIds.push(await seedConnection(h, { organizationId: hungOrg.org.id, provider: 'gitlab', baseUrl: hung.url, secret: newToken() }));
        fineIds.push(await seedConnection(h, { organizationId: fineOrg.org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: newToken() }));
      }

      // As the Schedule starts it (every organization), in batches of 4 and all in one run.
      const workflowId = `refresh-read-ahead-${randomUUID()}`;
      const startedAt = performance.now();
      const run = await h.client.workflow.start('refreshRepositoriesWorkflow', { taskQueue: h.taskQueue, workflowId, args: [{ batchSize: READ_AHEAD.batchSize, batchesPerRun: 10 }] });
      const listedMs = new Map<string, number>();
      await until(
        async () => {
          for (const id of fineIds) if (!listedMs.has(id) && (await lastListing(h.db, id))) listedMs.set(id, Math.round(performance.now() - startedAt));
          return listedMs.size === fineIds.length;
        },
        () => `F's ${fineIds.length} connections listed (${listedMs.size} were: ${[...listedMs.values()].join(', ')} ms)`,
        B_WITHIN_MS,
      );
      const heldAtServer = hung.arrived;
      console.log(`F's connections (rounds 1-${fineIds.length}) listed ${fineIds.map((id) => listedMs.get(id)).join(', ')} ms after the nightly run started; ${heldAtServer} of H's listing calls held at H's server`);
      // H's first calls, one per hung connection: none timed out and was tried again while F waited.
      expect(heldAtServer).toBeLessThanOrEqual(READ_AHEAD.hungConnections);
      for (const id of hungIds) expect(await lastListing(h.db, id)).toBeUndefined();

      hung.release();
      const result: RefreshResult = await run.result();
      const all = READ_AHEAD.hungConnections + READ_AHEAD.fineConnections;
      expect(result).toMatchObject({ connections: all, refreshed: all, failedCount: 0 });
      // The fake's projects are every token's (the tests before added theirs): each listing wrote them all.
      for (const id of [...hungIds, ...fineIds]) expect((await lastListing(h.db, id))?.rowsWritten).toBeGreaterThan(0);
      await recordHistory(h.client, workflowId, 'refresh-all-reading-ahead');
    } finally {
      await hungProxy.close();
    }
  }, 120_000);
});
