import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { Agent, request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import { type Client, WorkflowFailedError } from '@temporalio/client';
import { Random } from './random.ts';
import { fuzzRequest, type FuzzRequest } from './requests.ts';
import { resultOnceStarted, type World } from './world.ts';

/**
 * Runs a fuzz campaign against a world and checks what must hold after it:
 * - no answer is 5xx, and every request gets an answer;
 * - a receiver starts a run (202) only for a delivery carrying a hook's credential exactly, and an
 *   API request whose token may not act on what it names never succeeds;
 * - the API and the worker are still running;
 * - every event run in Temporal was acknowledged to a validly credentialed delivery, every event
 *   recorded belongs to the organization whose credential it came with (GitHub: whose installation), and every
 *   run ends (none fails or hangs).
 */
export interface FuzzOptions {
  seed: number;
  requests: number;
  concurrency: number;
  /** Send only these requests of the run (to replay failures). */
  only?: number[];
  /** How long the runs started may take to finish after the last request. */
  drainMs?: number;
  log?: (line: string) => void;
}

export interface Failure {
  problem: string;
  request?: Record<string, unknown>;
  answer?: { status: number; body: string };
}

export interface FuzzReport {
  seed: number;
  requests: number;
  durationMs: number;
  /** Answers by status, per target. */
  statuses: { receiver: Record<string, number>; api: Record<string, number> };
  /** Receiver requests carrying a valid credential, and runs they started. */
  validDeliveries: number;
  runsStarted: number;
  runsFailed: number;
  eventsRecorded: number;
  /** Error-level log lines of the API and the worker during the run (not failures in themselves). */
  errorLogLines: { api: number; worker: number };
  failures: Failure[];
}

interface Answer {
  status: number;
  body: string;
}

const guarded = new WeakSet<Socket>();

/** Sends one request as built: raw path, headers as given, chunked or not. */
function send(agent: Agent, request: FuzzRequest, timeoutMs: number): Promise<Answer> {
  const [, origin, path] = /^(https?:\/\/[^/?]+)(.*)$/.exec(request.url)!;
  const { hostname, port } = new URL(origin!);
  // A declared length the body never reaches: the answer (413) comes before the body, on a connection of its own.
  const declared = request.headers['content-length'] !== undefined;
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path: path || '/', method: request.method, headers: request.headers, agent: declared ? false : agent, timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body = (body + chunk.toString('utf8')).slice(0, 2000)));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    // A server may answer and close before the body is written (413, 431): the write then fails on the socket.
    req.on('socket', (socket) => {
      if (!guarded.has(socket)) socket.on('error', () => guarded.add(socket));
      guarded.add(socket);
    });
    if (!request.body) req.end();
    else if (request.chunked) {
      const half = Math.floor(request.body.length / 2);
      req.write(request.body.subarray(0, half));
      req.end(request.body.subarray(half));
    } else req.end(request.body);
  });
}

/** What a failure report shows of a request: enough to see it and replay it, not megabytes of body. */
function describe(request: FuzzRequest, seed: number): Record<string, unknown> {
  const body = request.body;
  return {
    replay: `npm run fuzz -- --seed=${seed} --only=${request.index}`,
    label: request.label,
    method: request.method,
    url: request.url.length > 300 ? `${request.url.slice(0, 300)}…` : request.url,
    headers: Object.fromEntries(Object.entries(request.headers).map(([k, v]) => [k, v.length > 120 ? `${v.slice(0, 120)}… (${v.length})` : v])),
    ...(body ? { bodyBytes: body.length, bodySha256: createHash('sha256').update(body).digest('hex'), bodyExcerpt: body.subarray(0, 300).toString('utf8') } : {}),
    ...(request.chunked ? { chunked: true } : {}),
  };
}

function judge(request: FuzzRequest, answer: Answer): string | undefined {
  if (answer.status >= 500) return `answered ${answer.status}`;
  if (request.target === 'receiver' && answer.status === 202 && request.credentialOf === undefined) return 'a run was started (202) for a delivery without a valid credential';
  if (request.target === 'api' && request.authorized === false && answer.status < 400) return `answered ${answer.status} to a token that may not act on what the request names`;
  return undefined;
}

async function inParallel<T>(items: Iterable<T>, concurrency: number, each: (item: T) => Promise<void>): Promise<void> {
  const iterator = items[Symbol.iterator]();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let next = iterator.next(); !next.done; next = iterator.next()) await each(next.value);
    }),
  );
}

function* range(from: number, to: number) {
  for (let i = from; i < to; i++) yield i;
}

export async function runFuzz(world: World, options: FuzzOptions): Promise<FuzzReport> {
  const log = options.log ?? console.log;
  const { seed } = options;
  const { stack } = world;
  const failures: Failure[] = [];
  const statuses: FuzzReport['statuses'] = { receiver: {}, api: {} };
  // Runs the receivers acknowledged, with the organizations whose credential came with them.
  const accepted = new Map<string, Set<string>>();
  const firstRequest = new Map<string, FuzzRequest>();
  let validDeliveries = 0;
  const errorsBefore = stack.services();
  const agent = new Agent({ keepAlive: true, maxSockets: options.concurrency });
  const started = performance.now();
  let sent = 0;

  const indices = options.only ?? range(0, options.requests);
  await inParallel(indices, options.concurrency, async (index) => {
    const request = fuzzRequest(Random.of(seed, index), world, index, seed);
    if (request.credentialOf) validDeliveries++;
    let answer: Answer;
    try {
      answer = await send(agent, request, 60_000);
    } catch (error) {
      failures.push({ problem: `no answer: ${(error as Error).message}`, request: describe(request, seed) });
      return;
    }
    const counts = statuses[request.target];
    counts[answer.status] = (counts[answer.status] ?? 0) + 1;
    const problem = judge(request, answer);
    if (problem) failures.push({ problem, request: describe(request, seed), answer });
    if (request.target === 'receiver' && answer.status === 202) {
      const workflowId = (JSON.parse(answer.body) as { workflowId: string }).workflowId;
      if (!firstRequest.has(workflowId)) firstRequest.set(workflowId, request);
      accepted.set(workflowId, new Set([...(accepted.get(workflowId) ?? []), ...(request.credentialOf ?? [])]));
    }
    if (++sent % 1000 === 0) log(`  ${sent} requests sent, ${failures.length} failures`);
  });
  agent.destroy();
  const durationMs = Math.round(performance.now() - started);

  const ended = Object.entries(stack.services()).filter(([, state]) => state.exitCode !== null || state.signal !== null);
  for (const [name, state] of ended) failures.push({ problem: `the ${name} process ended (${state.exitCode ?? state.signal}) during the run:\n${state.tail}` });

  // Every run started ends, without failing; what a hung one waits on is in its report.
  let runsFailed = 0;
  const deadline = new AbortController();
  setMaxListeners(32, deadline.signal);
  // With a process gone, runs may never end: no use waiting for them.
  const timer = setTimeout(() => deadline.abort(), ended.length > 0 ? 0 : (options.drainMs ?? 120_000));
  let explained = 0;
  await inParallel(accepted.keys(), 16, async (workflowId) => {
    try {
      if (deadline.signal.aborted) throw deadline.signal.reason;
      await stack.temporal.withAbortSignal(deadline.signal, () => resultOnceStarted(stack.temporal, workflowId, deadline.signal));
      return;
    } catch (error) {
      runsFailed++;
      const request = describe(firstRequest.get(workflowId)!, seed);
      if (error instanceof WorkflowFailedError) failures.push({ problem: `event run ${workflowId} failed: ${error.cause?.message ?? error.message}`, request });
      else {
        const why = ended.length === 0 && explained++ < 5 ? `: ${await whyRunning(stack.temporal, workflowId)}` : '';
        failures.push({ problem: `event run ${workflowId} still running after the drain${why}`, request });
      }
    }
  });
  clearTimeout(timer);

  // Every event run in Temporal is one a validly credentialed delivery was told about.
  const known = (workflowId: string) => accepted.has(workflowId) || world.setupRuns.has(workflowId);
  for await (const run of stack.temporal.workflow.list({ query: `WorkflowType = 'eventWorkflow' AND TaskQueue = '${stack.taskQueue}'` })) {
    if (!known(run.workflowId)) failures.push({ problem: `event run ${run.workflowId} exists but no validly credentialed delivery was acknowledged with it` });
  }

  // Every event recorded came with its organization's credential.
  const orgIds = [...world.tenants, world.sandbox].map((o) => o.id);
  const events = await stack.db.selectFrom('events').select(['organization_id', 'provider', 'delivery_id']).where('organization_id', 'in', orgIds).execute();
  // Events name the delivery, not the connection whose hook delivered it (the run id's `@<connection>`).
  const ofDelivery = (workflowId: string) => workflowId.replace(/^(event:[a-z-]+)@[0-9a-f-]{36}:/, '$1:');
  const acceptedByDelivery = new Map<string, Set<string>>();
  for (const [workflowId, organizations] of accepted) {
    const key = ofDelivery(workflowId);
    acceptedByDelivery.set(key, new Set([...(acceptedByDelivery.get(key) ?? []), ...organizations]));
  }
  const setupDeliveries = new Set([...world.setupRuns.keys()].map(ofDelivery));
  let eventsRecorded = 0;
  for (const event of events) {
    const workflowId = `event:${event.provider}:${event.delivery_id}`;
    if (setupDeliveries.has(workflowId)) continue;
    eventsRecorded++;
    const credential = acceptedByDelivery.get(workflowId);
    if (credential === undefined) failures.push({ problem: `event ${workflowId} recorded in ${event.organization_id} from no acknowledged valid delivery` });
    else if (!credential.has(event.organization_id)) {
      failures.push({ problem: `event ${workflowId} recorded in organization ${event.organization_id}, but its delivery carried the credential of ${[...credential].join(', ')}` });
    }
  }

  const after = stack.services();
  return {
    seed,
    requests: sent,
    durationMs,
    statuses,
    validDeliveries,
    runsStarted: accepted.size,
    runsFailed,
    eventsRecorded,
    errorLogLines: { api: after.api.errorLines - errorsBefore.api.errorLines, worker: after.worker.errorLines - errorsBefore.worker.errorLines },
    failures,
  };
}

/** The last failure a running workflow met: of its workflow task, or of a pending activity. */
async function whyRunning(client: Client, workflowId: string): Promise<string> {
  const handle = client.workflow.getHandle(workflowId);
  const history = await handle.fetchHistory();
  const taskFailure = history.events?.findLast((e) => e.workflowTaskFailedEventAttributes)?.workflowTaskFailedEventAttributes?.failure?.message;
  const localActivityFailure = history.events?.findLast((e) => e.markerRecordedEventAttributes?.failure)?.markerRecordedEventAttributes?.failure;
  const { raw } = await handle.describe();
  const activity = raw.pendingActivities?.[0];
  return [
    taskFailure ? `workflow task failed: ${taskFailure}` : undefined,
    localActivityFailure ? `local activity failed: ${localActivityFailure.cause?.message ?? localActivityFailure.message}` : undefined,
    activity ? `activity ${activity.activityType?.name} attempt ${activity.attempt}: ${activity.lastFailure?.message ?? 'no failure yet'}` : undefined,
  ].filter(Boolean).join('; ') || `${history.events?.length ?? 0} history events, the last ${JSON.stringify(history.events?.slice(-3).map((e) => Object.keys(e).find((k) => k.endsWith('Attributes'))))}`;
}

/** The report as text: the numbers, then each failure (at most `maxFailures`). */
export function formatReport(report: FuzzReport, maxFailures = 20): string {
  const counts = (c: Record<string, number>) => Object.entries(c).map(([s, n]) => `${s}: ${n}`).join(', ');
  const lines = [
    `seed ${report.seed}: ${report.requests} requests in ${(report.durationMs / 1000).toFixed(1)} s`,
    `  receivers: ${counts(report.statuses.receiver)}`,
    `  API:       ${counts(report.statuses.api)}`,
    `  ${report.validDeliveries} deliveries with a valid credential; ${report.runsStarted} event runs started, ${report.runsFailed} failed or hung; ${report.eventsRecorded} events recorded`,
    `  error log lines: API ${report.errorLogLines.api}, worker ${report.errorLogLines.worker}`,
    `  failures: ${report.failures.length}`,
  ];
  for (const failure of report.failures.slice(0, maxFailures)) lines.push(JSON.stringify(failure, null, 2));
  return lines.join('\n');
}
