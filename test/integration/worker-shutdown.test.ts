import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WorkflowExecutionDescription } from '@temporalio/client';
import { afterAll, describe, expect, it } from 'vitest';
import { attachHeldAtCreate, attachmentOf, gitlabWorld, type HookWorld, type Org } from '../support/attachments.ts';
import { createOrgWithToken, resultOf, startHarness, type Harness, writeHarnessConfig } from '../support/harness.ts';
import { localStepsOf } from '../support/histories.ts';
import { killRemaining, ROOT, startProcess, type StartedProcess } from '../support/processes.ts';

/**
 * A rollout stops a worker (SIGTERM) while an attach's hook creation waits on a provider: the
 * worker takes no new task and gives the step shutdown.workerGraceSeconds. The step runs inside the
 * run's workflow task (a local activity): one that ends in that time completes normally and the
 * stopping worker finishes the task; one that does not is cut (its HTTP call aborted) and fails as
 * WorkerShutdown, retried after a timer by whichever worker takes the run's next task, not silently.
 * Either way the process exits 0 before workerForceSeconds, and the attach ends with exactly one
 * hook. The worker is worker/main.ts, the production entry, in a process of its own. (Runs from
 * before the hooks moved into the workflow task ensure them as activities, which the SDK cancels at
 * the grace time itself: their histories replay in test/unit/workflow-replay.test.ts.)
 */
describe('a worker stopped with SIGTERM during a provider call', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-worker-shutdown-'));
  const started: StartedProcess[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  afterAll(async () => {
    await killRemaining(started);
    for (const cleanup of cleanups) await cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A harness of the test's own (its task queue: no other test's worker takes its tasks), with no worker of its own yet. */
  async function setup(): Promise<{ h: Harness; org: Org; world: HookWorld }> {
    const h = await startHarness({ withoutWorker: true });
    cleanups.push(() => h.close());
    const created = await createOrgWithToken(h);
    const org = { ...created.org, token: created.token };
    const world = await gitlabWorld(h, org);
    cleanups.unshift(() => world.close());
    return { h, org, world };
  }

  /** `node worker/main.ts` on the harness's task queue, database and keys, with these shutdown times. */
  async function startWorker(h: Harness, shutdown: { workerGraceSeconds: number; workerForceSeconds: number }): Promise<StartedProcess> {
    const configFile = writeHarnessConfig(h, path.join(dir, `worker-${randomUUID()}.yml`), {
      security: { allowHttpHosts: ['127.0.0.1'] },
      shutdown,
    });
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, FORGELINK_CONFIG: configFile };
    const worker = await startProcess(['--import', 'tsx', path.join(ROOT, 'worker/main.ts')], { cwd: ROOT, env, readyMessage: 'worker running' });
    started.push(worker);
    return worker;
  }

  const describeRun = (h: Harness, workflowId: string): Promise<WorkflowExecutionDescription> => h.client.workflow.getHandle(workflowId).describe();
  type HistoryEvent = ReturnType<typeof localStepsOf>[number]['event'];
  /** The workflow task whose completion recorded `marker` (its commands follow it in the history): who ran the step. */
  const taskCompletedBefore = (events: HistoryEvent[], marker: HistoryEvent) =>
    events.findLast((e) => e.workflowTaskCompletedEventAttributes && Number(e.eventId) < Number(marker.eventId))?.workflowTaskCompletedEventAttributes;
  const identityOf = (worker: StartedProcess) => `${worker.child.pid}@`;

  // Each starts worker/main.ts under tsx (it bundles the workflows at start): slow on a loaded machine.
  it('lets a step that ends within workerGraceSeconds complete, then exits 0', { timeout: 180_000 }, async () => {
    const { h, org, world } = await setup();
    const worker = await startWorker(h, { workerGraceSeconds: 60, workerForceSeconds: 90 });
    const { repository, hold, workflowId } = await attachHeldAtCreate({ h, org, world });

    worker.child.kill('SIGTERM');
    await worker.waitForOutput('worker draining');
    // Draining, the worker still runs the held step.
    expect(worker.child.exitCode).toBeNull();
    hold.release('answer');
    expect(await worker.exited).toBe(0);
    expect(worker.output()).toContain('worker stopped');

    // The stopping worker completed the step, in a workflow task it finished: nothing is left to retry.
    expect((await describeRun(h, workflowId)).raw.pendingActivities ?? []).toEqual([]);
    const events = (await h.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
    const ensured = localStepsOf(events).find((step) => step.activityType === 'ensureHook')?.event;
    expect(ensured?.markerRecordedEventAttributes?.failure).toBeFalsy();
    expect(taskCompletedBefore(events, ensured!)?.identity).toMatch(new RegExp(`^${identityOf(worker)}`));

    await h.restartWorker();
    await resultOf(h, workflowId);
    expect(await attachmentOf(h, org, repository.repositoryId)).toMatchObject({ status: 'attached' });
    expect(repository.hooks()).toHaveLength(1);
  });

  it('cancels a step still running at workerGraceSeconds: its call is aborted and the step fails for Temporal to retry, not silently; exits 0', { timeout: 180_000 }, async () => {
    const { h, org, world } = await setup();
    const worker = await startWorker(h, { workerGraceSeconds: 1, workerForceSeconds: 60 });
    const { repository, hold, workflowId } = await attachHeldAtCreate({ h, org, world });

    const signalled = performance.now();
    worker.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    // Well before the force time: the cancelled step did not keep the worker.
    expect(performance.now() - signalled).toBeLessThan(15_000);

    // The run has the attempt as failed by the worker's shutdown, recorded by the stopping worker,
    // and the step's retry waiting on a timer (so another worker runs it).
    const events = (await h.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
    const cut = localStepsOf(events).find((step) => step.activityType === 'ensureHook')?.event;
    const failure = cut?.markerRecordedEventAttributes?.failure;
    expect(failure?.message ?? failure?.cause?.message).toMatch(/WORKER_SHUTDOWN/);
    // Typed as what happened, not as the provider being unavailable.
    expect((failure?.applicationFailureInfo ?? failure?.cause?.applicationFailureInfo)?.type).toBe('WorkerShutdown');
    expect(taskCompletedBefore(events, cut!)?.identity).toMatch(new RegExp(`^${identityOf(worker)}`));
    expect(events.some((e) => e.timerStartedEventAttributes && Number(e.eventId) > Number(cut!.eventId))).toBe(true);
    // And the worker's log says which step it cut.
    const cutLines = worker.output().split('\n').filter((line) => line.includes('Activity failed') && line.includes('ensureHook'));
    expect(cutLines.join('\n')).toContain('WORKER_SHUTDOWN');

    hold.release('drop');
    await h.restartWorker();
    await resultOf(h, workflowId);
    // The retry adopted the hook the cut call had made at the provider.
    expect(await attachmentOf(h, org, repository.repositoryId)).toMatchObject({ status: 'attached' });
    expect(repository.hooks()).toHaveLength(1);
  });
});
