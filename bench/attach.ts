/**
 * Attach benchmark: an Azure DevOps attach (three Service Hook subscriptions) and a GitLab attach
 * (one project hook) through the API, with the fake providers answering each call `latencyMs`
 * after it arrives. Each attach's wall time (PUT …/attachment until its run's result) is set
 * against its critical path: the provider calls that must happen one after another, × latency.
 *
 * The critical path is derived from the calls each attach made, in its three phases (the
 * workflow's steps run one after another): the repository's lookup (verifyRepository: every call
 * before the first hook call; the Azure DevOps SDK discovers its route before it asks), then each
 * hook's listing and creation (ensureHook; the hooks side by side, so one branch counts: the
 * phase's calls ÷ the hooks), then the listing that prunes strays (pruneHooks). The longest chain
 * of calls that really ran one after another is reported beside it; the smaller judges the run.
 *
 * The Temporal floor runs beside them, in the same rounds: bench/floor-attach-workflow.ts
 * `attachShapedWorkflow` on a floor worker of the worker's sizing (bench/floor-worker.ts), started
 * as the API starts an attach (signalWithStart of attachmentRequested, with the same run labels)
 * and waited for as the attaches are (the run's result), making the critical path's calls to the
 * same fake at the same latency as the attach's local provider steps do, in one workflow task: what
 * the SDK and the server add to the calls before forgelink does anything (no API, no database).
 */
import { randomBytes } from 'node:crypto';
import proto from '@temporalio/proto';
import { attachmentRequested, type RepositoryWorkflowInput, type RepositoryWorkflowResult } from '../workflows/contract.ts';
import { runLabels } from '../workflows/run-labels.ts';
import { startFakeAzureDevOps } from '../test/fakes/azure-devops.ts';
import type { FakeHttpServer, RecordedCall } from '../test/fakes/base.ts';
import { startFakeGitlab } from '../test/fakes/gitlab.ts';
import type { AttachShape } from './floor-attach-workflow.ts';
import { schedulerMs, stackProcesses } from './scheduler.ts';
import { callApi, type BenchStack, startService, stopService } from './stack.ts';

/** `floorPatches` > 0 adds, in every round, a floor run making that many patched() calls (what the attach's patch markers cost). */
export const DEFAULT_ATTACH_OPTIONS = { latencyMs: 50, attaches: 7, floorPatches: 0 };

const EventType = proto.temporal.api.enums.v1.EventType;
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]!;
const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;

type HookProvider = 'azure-devops' | 'gitlab';

interface ProviderSetup {
  provider: HookProvider;
  server: FakeHttpServer;
  /** The fake's operation names of hook listing and creation. */
  ops: { list: string; create: string };
  /** Hooks an attach makes. */
  hooks: number;
  /** Repository ids in the cache, each attached once. */
  repositories: string[];
}

/** Total length of the union of intervals. */
function unionMs(intervals: (readonly [number, number])[]): number {
  let total = 0;
  let end = -Infinity;
  for (const [from, to] of [...intervals].sort((a, b) => a[0] - b[0])) {
    if (to <= end) continue;
    total += to - Math.max(from, end);
    end = to;
  }
  return Math.round(total);
}

/** The longest chain of calls each starting after the one before it was answered. */
function longestChain(calls: RecordedCall[]): RecordedCall[] {
  const sorted = [...calls].sort((a, b) => a.receivedAt - b.receivedAt);
  const best: { length: number; previous?: number }[] = [];
  for (let i = 0; i < sorted.length; i++) {
    best[i] = { length: 1 };
    for (let j = 0; j < i; j++) {
      if (sorted[j]!.answeredAt <= sorted[i]!.receivedAt && best[j]!.length + 1 > best[i]!.length) best[i] = { length: best[j]!.length + 1, previous: j };
    }
  }
  const end = best.reduce((at, b, i) => (b.length > best[at]!.length ? i : at), 0);
  const chain: RecordedCall[] = [];
  for (let i: number | undefined = end; i !== undefined; i = best[i]!.previous) chain.unshift(sorted[i]!);
  return chain;
}

/** The attach's calls in its three phases, and the critical path through them (see the file's comment). */
function criticalPath(calls: RecordedCall[], setup: ProviderSetup) {
  const isHookCall = (c: RecordedCall) => c.operation === setup.ops.list || c.operation === setup.ops.create;
  const creates = calls.filter((c) => c.operation === setup.ops.create);
  if (creates.length !== setup.hooks) throw new Error(`${setup.provider}: expected ${setup.hooks} hook creations, saw ${creates.length} (${calls.map((c) => c.operation).join(', ')})`);
  const firstHookCall = Math.min(...calls.filter(isHookCall).map((c) => c.receivedAt));
  const lastCreateAnswered = Math.max(...creates.map((c) => c.answeredAt));
  const verify = calls.filter((c) => c.receivedAt < firstHookCall);
  const ensure = calls.filter((c) => c.receivedAt >= firstHookCall && c.receivedAt < lastCreateAnswered);
  const prune = calls.filter((c) => c.receivedAt >= lastCreateAnswered);
  if (ensure.length % setup.hooks !== 0) throw new Error(`${setup.provider}: ${ensure.length} calls in the hook phase do not split into ${setup.hooks} equal branches`);
  const perBranch = ensure.length / setup.hooks;
  const byStart = (list: RecordedCall[]) => [...list].sort((a, b) => a.receivedAt - b.receivedAt).map((c) => c.operation);
  const modelCalls = verify.length + perBranch + prune.length;
  const observed = longestChain(calls);
  return {
    calls: Math.min(modelCalls, observed.length),
    model: { calls: modelCalls, verifyRepository: byStart(verify), ensureHookPerBranch: perBranch, ensureHookAll: byStart(ensure), pruneHooks: byStart(prune) },
    observedLongestChain: observed.map((c) => c.operation),
    // Whether all the hooks' creations were in flight at one instant, and whether they were at least not made one after another.
    creationsAllAtOnce: Math.max(...creates.map((c) => c.receivedAt)) < Math.min(...creates.map((c) => c.answeredAt)),
    creationsChain: longestChain(creates).length,
  };
}

/**
 * Where the run's time went, from its history's event times (milliseconds since `startedAtEpochMs`,
 * when the benchmark sent the PUT): until the run started (the API and signalWithStart), in
 * workflow tasks (workflow code and local activities), in activities (at least one running: the
 * provider calls and the activities' own database work), and the rest: hand-offs through the
 * server between them (a completed step until the next task starts, a scheduled activity until it starts).
 */
async function historyShape(stack: BenchStack, workflowId: string, startedAtEpochMs: number) {
  const history = await stack.temporal.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const ms = (e: (typeof events)[number]) => Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6 - startedAtEpochMs;
  const count = (type: number) => events.filter((e) => e.eventType === type).length;
  /** Total length of the union of intervals opened by `open` events and closed by the event naming them. */
  const busy = (open: number, closes: (e: (typeof events)[number]) => string | undefined) => {
    const opened = new Map(events.filter((e) => e.eventType === open).map((e) => [String(e.eventId), ms(e)]));
    return unionMs(
      events.flatMap((e) => {
        const id = closes(e);
        const start = id === undefined ? undefined : opened.get(id);
        return start === undefined ? [] : [[start, ms(e)] as const];
      }),
    );
  };
  const started = events[0] ? ms(events[0]) : Number.NaN;
  const closed = events.length ? ms(events[events.length - 1]!) : Number.NaN;
  const inWorkflowTasks = busy(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED, (e) => e.workflowTaskCompletedEventAttributes?.startedEventId?.toString());
  const inActivities = busy(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED, (e) => {
    const done = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
    return done?.startedEventId?.toString();
  });
  return {
    workflowTasks: count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
    activities: count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED),
    localActivities: events.filter((e) => e.markerRecordedEventAttributes && e.markerRecordedEventAttributes.markerName !== 'core_patch').length,
    events: events.length,
    untilRunStartedMs: Math.round(started),
    // When the worker took the run's first workflow task, and completed its last (for a run of one task: the provider steps' end, before the run's completion).
    firstTaskStartedMs: Math.round(ms(events.find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED) ?? events[0]!)),
    lastTaskCompletedMs: Math.round(ms(events.findLast((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) ?? events[0]!)),
    inWorkflowTasksMs: inWorkflowTasks,
    inActivitiesMs: inActivities,
    handOffsMs: Math.round(closed - started - inWorkflowTasks - inActivities),
    runClosedAtMs: Math.round(closed),
  };
}

export async function runAttachBench(stack: BenchStack, options: { latencyMs: number; attaches: number; floorPatches: number }) {
  const [azure, gitlab] = await Promise.all([startFakeAzureDevOps({ organization: 'bench-attach' }), startFakeGitlab()]);
  let floorWorker: Awaited<ReturnType<typeof startService>> | undefined;
  try {
    azure.addPat({ pat: 'ado-attach-bench', displayName: 'Attach bench', canManageHooks: true });
    azure.addProject({ name: 'Attach' });
    gitlab.addToken({ token: 'glpat-attach-bench', username: 'attach-bench', scopes: ['api', 'read_user', 'read_repository'] });
    // One warm-up attach per provider (the worker's first attach compiles the client libraries), then the measured ones.
    const perProvider = options.attaches + 1;
    for (let i = 0; i < perProvider; i++) {
      azure.addRepository({ projectName: 'Attach', name: `ado-attach-${i}` });
      gitlab.addProject({ pathWithNamespace: `attach/gl-${i}` });
    }

    const api = (method: string, path: string, token: string, body?: unknown) => callApi(stack, method, path, token, body);
    const org = await api('POST', '/api/v1/orgs', stack.adminToken, { slug: `attach-${Date.now()}`, name: 'Attach bench' });
    const { token } = await api('POST', `/api/v1/orgs/${org.slug}/tokens`, stack.adminToken);
    const connect = async (body: object) => {
      const { id, workflowId } = await api('POST', `/api/v1/orgs/${org.slug}/connections`, token!, body);
      const result = (await stack.temporal.workflow.getHandle(workflowId!).result()) as { status: string; reason?: string };
      if (result.status !== 'active') throw new Error(`connect ${JSON.stringify(body)} failed: ${result.reason}`);
      return id as string;
    };
    const connections = {
      'azure-devops': await connect({ provider: 'azure-devops', organizationUrl: azure.url, token: 'ado-attach-bench' }),
      gitlab: await connect({ provider: 'gitlab', baseUrl: gitlab.url, token: 'glpat-attach-bench' }),
    };
    const { workflowId: refreshId } = await api('POST', `/api/v1/orgs/${org.slug}/repositories/refresh`, token!);
    await stack.temporal.workflow.getHandle(refreshId!).result();
    const repositoriesOf = async (connectionId: string) =>
      (await stack.db.selectFrom('repositories').select('id').where('connection_id', '=', connectionId).orderBy('full_name').execute()).map((r) => r.id);

    const setups: ProviderSetup[] = [
      { provider: 'azure-devops', server: azure.server, ops: { list: 'querySubscriptions', create: 'createSubscription' }, hooks: 3, repositories: await repositoriesOf(connections['azure-devops']) },
      { provider: 'gitlab', server: gitlab.server, ops: { list: 'listHooks', create: 'createHook' }, hooks: 1, repositories: await repositoriesOf(connections.gitlab) },
    ];
    for (const setup of setups) {
      if (setup.repositories.length !== perProvider) throw new Error(`${setup.provider}: ${setup.repositories.length} repositories cached, expected ${perProvider}`);
      setup.server.latencyMs = options.latencyMs;
    }

    const pids = stackProcesses();
    const scheduler = () => Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, schedulerMs(pid)]));
    const attach = async (setup: ProviderSetup, repositoryId: string) => {
      const schedulerBefore = scheduler();
      const before = setup.server.calls.length;
      const startedAtEpochMs = Date.now();
      const started = performance.now();
      const { workflowId } = await api('PUT', `/api/v1/orgs/${org.slug}/repositories/${repositoryId}/attachment`, token!);
      const result = (await stack.temporal.workflow.getHandle(workflowId!).result()) as RepositoryWorkflowResult;
      const ended = performance.now();
      const wallMs = ended - started;
      const schedulerAfter = scheduler();
      // What each process of the stack did during the attach: CPU used, and time spent ready to run but waiting for a CPU.
      const processes = Object.fromEntries(
        Object.keys(pids).map((name) => [
          name,
          {
            cpuMs: Math.round(schedulerAfter[name]!.cpuMs - schedulerBefore[name]!.cpuMs),
            waitingForCpuMs: Math.round(schedulerAfter[name]!.waitingForCpuMs - schedulerBefore[name]!.waitingForCpuMs),
          },
        ]),
      );
      if (result.status !== 'attached' || result.hookIds.length !== setup.hooks) throw new Error(`${setup.provider} attach ended ${JSON.stringify(result)}`);
      const calls = setup.server.calls.slice(before);
      const path = criticalPath(calls, setup);
      const criticalPathMs = path.calls * options.latencyMs;
      const at = (t: number) => Math.round(t - started);
      return {
        wallMs: Math.round(wallMs),
        criticalPathCalls: path.calls,
        criticalPathMs,
        ratioToCriticalPath: Math.round((wallMs / criticalPathMs) * 100) / 100,
        apiCalls: calls.length,
        // Where the time beyond the provider's went: before the first call, after the last, and between the calls of the critical path.
        untilFirstCallMs: at(Math.min(...calls.map((c) => c.receivedAt))),
        afterLastCallMs: Math.round(ended - Math.max(...calls.map((c) => c.answeredAt))),
        callsSpanMs: Math.round(Math.max(...calls.map((c) => c.answeredAt)) - Math.min(...calls.map((c) => c.receivedAt))),
        // Time with at least one provider call in flight.
        callsBusyMs: unionMs(calls.map((c) => [c.receivedAt, c.answeredAt] as const)),
        processes,
        creationsAllAtOnce: path.creationsAllAtOnce,
        creationsChain: path.creationsChain,
        path,
        calls: [...calls].sort((a, b) => a.receivedAt - b.receivedAt).map((c) => ({ operation: c.operation, status: c.status, startMs: at(c.receivedAt), endMs: at(c.answeredAt) })),
        history: { ...(await historyShape(stack, workflowId!, startedAtEpochMs)), resultSeenAtMs: Math.round(wallMs) },
      };
    };

    // The Temporal floor (see the file's comment): its worker, on a task queue of its own.
    const floorTaskQueue = `forgelink-floor-${randomBytes(4).toString('hex')}`;
    floorWorker = await startService('floor worker', 'bench/floor-worker.ts', { ...stack.env, FLOOR_TASK_QUEUE: floorTaskQueue }, 'floor worker running', { mode: stack.runMode, nodeArgs: stack.workerNodeArgs });
    const floorPids = { floorWorker: floorWorker.child.pid, temporal: pids.temporal };
    const floorScheduler = () => Object.fromEntries(Object.entries(floorPids).map(([name, pid]) => [name, schedulerMs(pid)]));
    const fullNames = new Map(
      (await stack.db.selectFrom('repositories').select(['id', 'full_name']).where('connection_id', 'in', Object.values(connections)).execute()).map((r) => [r.id, r.full_name]),
    );
    /** The floor's run for one of `setup`'s repositories: started and waited for as `attach` does through the API, `shape`'s calls made by the floor worker. */
    const temporalFloor = async (setup: ProviderSetup, repositoryId: string, shape: AttachShape) => {
      const schedulerBefore = floorScheduler();
      const before = setup.server.calls.length;
      const workflowId = `floor-attach:${setup.provider}:${randomBytes(4).toString('hex')}`;
      const input: RepositoryWorkflowInput & { shape: AttachShape } = { organizationId: org.id, repositoryId, pending: [], shape };
      const startedAtEpochMs = Date.now();
      const started = performance.now();
      await stack.temporal.workflow.signalWithStart('attachShapedWorkflow', {
        taskQueue: floorTaskQueue,
        workflowId,
        args: [input],
        signal: attachmentRequested,
        signalArgs: [{ action: 'attach' }],
        ...runLabels('attach', {
          organization: { id: org.id, slug: org.slug },
          provider: setup.provider,
          connectionId: connections[setup.provider],
          repository: { id: repositoryId, fullName: fullNames.get(repositoryId) },
        }),
      });
      const result = (await stack.temporal.workflow.getHandle(workflowId).result()) as RepositoryWorkflowResult;
      const ended = performance.now();
      const wallMs = ended - started;
      const schedulerAfter = floorScheduler();
      const calls = setup.server.calls.slice(before);
      const expected = shape.verifyCalls + shape.hooks * shape.callsPerHook + shape.pruneCalls;
      if (result.status !== 'attached' || result.hookIds.length !== setup.hooks || calls.length !== expected) {
        throw new Error(`${setup.provider} floor ended ${JSON.stringify(result)} after ${calls.length} calls, expected ${expected}`);
      }
      return {
        wallMs: Math.round(wallMs),
        untilFirstCallMs: Math.round(Math.min(...calls.map((c) => c.receivedAt)) - started),
        afterLastCallMs: Math.round(ended - Math.max(...calls.map((c) => c.answeredAt))),
        callsBusyMs: unionMs(calls.map((c) => [c.receivedAt, c.answeredAt] as const)),
        processes: Object.fromEntries(
          Object.keys(floorPids).map((name) => [
            name,
            {
              cpuMs: Math.round(schedulerAfter[name]!.cpuMs - schedulerBefore[name]!.cpuMs),
              waitingForCpuMs: Math.round(schedulerAfter[name]!.waitingForCpuMs - schedulerBefore[name]!.waitingForCpuMs),
            },
          ]),
        ),
        history: { ...(await historyShape(stack, workflowId, startedAtEpochMs)), resultSeenAtMs: Math.round(wallMs) },
      };
    };

    const perProviderRuns: Record<string, Awaited<ReturnType<typeof attach>>[]> = { 'azure-devops': [], gitlab: [] };
    const floorRuns: Record<string, Awaited<ReturnType<typeof temporalFloor>>[]> = { 'azure-devops': [], gitlab: [] };
    const patchedFloorRuns: Record<string, Awaited<ReturnType<typeof temporalFloor>>[]> = { 'azure-devops': [], gitlab: [] };
    const shapes: Record<string, AttachShape> = {};
    const warmUp: Record<string, number> = {};
    const floorWarmUp: Record<string, number> = {};
    for (const setup of setups) {
      const warm = await attach(setup, setup.repositories[0]!);
      warmUp[setup.provider] = warm.wallMs;
      // The floor makes the calls of the attach's critical path, step by step as the attach made them.
      const { model } = warm.path;
      shapes[setup.provider] = { url: `${setup.server.url}/floor/call`, verifyCalls: model.verifyRepository.length, hooks: setup.hooks, callsPerHook: model.ensureHookPerBranch, pruneCalls: model.pruneHooks.length };
      // As the attach's warm-up: the floor worker's first run compiles its code.
      floorWarmUp[setup.provider] = (await temporalFloor(setup, setup.repositories[0]!, shapes[setup.provider]!)).wallMs;
    }
    // Alternating, so both providers meet the same moments of a loaded machine; each attach beside
    // its floor, which goes first every other round, so neither always follows the other.
    for (let i = 1; i <= options.attaches; i++) {
      for (const setup of setups) {
        const floor = () => temporalFloor(setup, setup.repositories[i]!, shapes[setup.provider]!);
        const patchedFloor = async () => {
          if (options.floorPatches > 0) patchedFloorRuns[setup.provider]!.push(await temporalFloor(setup, setup.repositories[i]!, { ...shapes[setup.provider]!, patches: options.floorPatches }));
        };
        if (i % 2 === 0) {
          await patchedFloor();
          floorRuns[setup.provider]!.push(await floor());
        }
        perProviderRuns[setup.provider]!.push(await attach(setup, setup.repositories[i]!));
        if (i % 2 === 1) {
          floorRuns[setup.provider]!.push(await floor());
          await patchedFloor();
        }
      }
    }

    const summary = Object.fromEntries(
      setups.map(({ provider }) => {
        const runs = perProviderRuns[provider]!;
        const floor = floorRuns[provider]!;
        const wallMs = median(runs.map((r) => r.wallMs));
        const floorWallMs = median(floor.map((r) => r.wallMs));
        const toFloor = runs.map((r, i) => ratio(r.wallMs, floor[i]!.wallMs));
        // Every run of a provider makes the same calls; the smallest critical path of the runs judges the median.
        const criticalPathMs = Math.min(...runs.map((r) => r.criticalPathMs));
        return [
          provider,
          {
            criticalPathCalls: criticalPathMs / options.latencyMs,
            criticalPathMs,
            criticalPath: runs[0]!.path.model,
            wallMs: runs.map((r) => r.wallMs),
            medianWallMs: wallMs,
            medianRatioToCriticalPath: Math.round((wallMs / criticalPathMs) * 100) / 100,
            medianOverheadMs: wallMs - criticalPathMs,
            medianUntilFirstCallMs: median(runs.map((r) => r.untilFirstCallMs)),
            medianAfterLastCallMs: median(runs.map((r) => r.afterLastCallMs)),
            apiCalls: runs[0]!.apiCalls,
            history: runs[0]!.history,
            // Medians over the runs of where the wall time went (see historyShape).
            medianTimeMs: Object.fromEntries(
              (['untilRunStartedMs', 'firstTaskStartedMs', 'inWorkflowTasksMs', 'inActivitiesMs', 'handOffsMs'] as const).map((k) => [k, median(runs.map((r) => r.history[k]))]),
            ),
            medianProcesses: Object.fromEntries(
              Object.keys(pids).map((name) => [
                name,
                { cpuMs: median(runs.map((r) => r.processes[name]!.cpuMs)), waitingForCpuMs: median(runs.map((r) => r.processes[name]!.waitingForCpuMs)) },
              ]),
            ),
            medianActivityTimeOutsideProviderCallsMs: median(runs.map((r) => r.history.inActivitiesMs - r.callsBusyMs)),
            medianResultSeenAfterCloseMs: median(runs.map((r) => r.history.resultSeenAtMs - r.history.runClosedAtMs)),
            creationsAllAtOnce: `${runs.filter((r) => r.creationsAllAtOnce).length} of ${runs.length} runs`,
            // 1 when the creations overlapped in every run; the hook count if they ever ran one after another.
            longestChainOfCreations: Math.max(...runs.map((r) => r.creationsChain)),
            // The same calls in a bare Temporal run of the attach's shape (see the file's comment), measured in the same rounds.
            temporalFloor: {
              shape: { ...shapes[provider]!, url: undefined, calls: criticalPathMs / options.latencyMs },
              wallMs: floor.map((r) => r.wallMs),
              medianWallMs: floorWallMs,
              medianRatioToCriticalPath: ratio(floorWallMs, criticalPathMs),
              medianOverheadMs: floorWallMs - criticalPathMs,
              medianUntilFirstCallMs: median(floor.map((r) => r.untilFirstCallMs)),
              medianAfterLastCallMs: median(floor.map((r) => r.afterLastCallMs)),
              history: floor[0]!.history,
              medianTimeMs: Object.fromEntries(
                (['untilRunStartedMs', 'firstTaskStartedMs', 'inWorkflowTasksMs', 'inActivitiesMs', 'handOffsMs'] as const).map((k) => [k, median(floor.map((r) => r.history[k]))]),
              ),
              medianProcesses: Object.fromEntries(
                Object.keys(floor[0]!.processes).map((name) => [
                  name,
                  { cpuMs: median(floor.map((r) => r.processes[name]!.cpuMs)), waitingForCpuMs: median(floor.map((r) => r.processes[name]!.waitingForCpuMs)) },
                ]),
              ),
              medianResultSeenAfterCloseMs: median(floor.map((r) => r.history.resultSeenAtMs - r.history.runClosedAtMs)),
            },
            ...(options.floorPatches > 0
              ? {
                  temporalFloorWithPatches: {
                    patches: options.floorPatches,
                    wallMs: patchedFloorRuns[provider]!.map((r) => r.wallMs),
                    medianWallMs: median(patchedFloorRuns[provider]!.map((r) => r.wallMs)),
                    // Against the plain floor run of the same round.
                    medianBeyondTemporalFloorMs: median(patchedFloorRuns[provider]!.map((r, i) => r.wallMs - floor[i]!.wallMs)),
                    medianAfterLastCallMs: median(patchedFloorRuns[provider]!.map((r) => r.afterLastCallMs)),
                    medianUntilFirstCallMs: median(patchedFloorRuns[provider]!.map((r) => r.untilFirstCallMs)),
                    history: patchedFloorRuns[provider]![0]!.history,
                    medianProcesses: Object.fromEntries(
                      Object.keys(floor[0]!.processes).map((name) => [name, { cpuMs: median(patchedFloorRuns[provider]!.map((r) => r.processes[name]!.cpuMs)) }]),
                    ),
                  },
                }
              : {}),
            // Each attach against the floor run of its own round: what forgelink adds to what any Temporal run of this shape costs.
            toTemporalFloor: { ratios: toFloor, median: median(toFloor) },
            medianBeyondTemporalFloorMs: median(runs.map((r, i) => r.wallMs - floor[i]!.wallMs)),
          },
        ];
      }),
    );
    const ado = summary['azure-devops']!;
    const gl = summary.gitlab!;
    return {
      options,
      note: 'Measured on a 2-core machine shared with other engineers\' builds and tests (see machine.loadAverage): the numbers are as measured, not corrected for the load.',
      // The floor each provider's wall time is judged against: its critical path × latency.
      floorMs: { 'azure-devops': ado.criticalPathMs, gitlab: gl.criticalPathMs },
      // Per provider, medians: the critical path (the target's floor), the Temporal floor, forgelink's attach, and its ratios to both (details in `summary`).
      table: Object.fromEntries(
        Object.entries(summary).map(([provider, p]) => [
          provider,
          {
            criticalPathMs: p.criticalPathMs,
            temporalFloorMs: p.temporalFloor.medianWallMs,
            measuredMs: p.medianWallMs,
            ratioToCriticalPath: p.medianRatioToCriticalPath,
            temporalFloorRatioToCriticalPath: p.temporalFloor.medianRatioToCriticalPath,
            ratioToTemporalFloor: p.toTemporalFloor.median,
          },
        ]),
      ),
      summary,
      warmUpWallMs: warmUp,
      temporalFloorWarmUpWallMs: floorWarmUp,
      runs: perProviderRuns,
      temporalFloorRuns: floorRuns,
      targets: {
        azureDevOpsWithin1_25xCriticalPath: ado.medianRatioToCriticalPath <= 1.25,
        gitlabWithin1_25xCriticalPath: gl.medianRatioToCriticalPath <= 1.25,
        azureDevOpsSubscriptionsNeverOneAfterAnother: ado.longestChainOfCreations < 3,
      },
      // Whether the Temporal floor (the same calls in a bare Temporal run of the attach's shape, no
      // forgelink) is itself within each wall-time target in this run: where it is not, no attach of
      // this shape could meet the target on this machine in this run.
      floorWithinTarget: {
        azureDevOpsWithin1_25xCriticalPath: ado.temporalFloor.medianRatioToCriticalPath <= 1.25,
        gitlabWithin1_25xCriticalPath: gl.temporalFloor.medianRatioToCriticalPath <= 1.25,
      },
      peakRssMiB: stack.peakRssMiB(),
    };
  } finally {
    if (floorWorker) await stopService(floorWorker);
    await Promise.all([azure.close(), gitlab.close()]);
  }
}
