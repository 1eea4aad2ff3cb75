import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { sql } from 'kysely';
import { createHookActivities, deliveryUrl, READ_AHEAD_CLAIM_MS } from '../../activities/hooks.ts';
import { createInlineAdmission, type InlineAdmission } from '../../activities/inline-admission.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { createAnswerBudget } from '../../activities/providers/answer-budget.ts';
import { seal } from '../../lib/crypto.ts';
import { createDb, type Db } from '../../lib/db/index.ts';
import { createLogger } from '../../lib/logger.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { startFlakyProxy, type FlakyProxy } from '../support/flaky-proxy.ts';
import { seedConnection, seedRepository } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * An attach's local provider steps (activities/hooks.ts readingTarget): a later step makes its
 * first read with the adapter an earlier step of the run left, beside its read of the row, and
 * acts only on what the row says now. For a hook set of one hook (GitLab's), the step before
 * starts that read already once its own provider work is done (readAhead): the lookup the
 * ensure's listing, the ensure the prune's. Such a read serves only the activity the run schedules
 * right after the one that made it (activity id + 1, as the workflow SDK numbers a run's regular and
 * local activities from one sequence): a step run as a regular activity in between (refused
 * admission), or a later attach of the same run, lists again.
 */
describe("an attach's local steps reuse the run's adapter only for the target the row still names", () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  /** In front of `gitlab`, for the connections of `repository({ proxied: true })`. */
  let proxy: FlakyProxy;
  let org: { id: string };
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    gitlab = await startFakeGitlab();
    proxy = await startFlakyProxy(gitlab.url);
    ({ org } = await createOrgWithToken(h));
  }, 60_000);
  afterAll(async () => {
    await proxy?.close();
    await gitlab?.close();
    await h?.close();
  });

  /**
   * The worker's answer budget (activities/providers/answer-budget.ts): a listing made ahead holds
   * its answer there until the step that takes it ends, or until it is dropped, not until the step
   * that started it ends.
   */
  const newAnswerBudget = () => createAnswerBudget({ limit: 64 * 1024 * 1024, perOrganization: 64 * 1024 * 1024 });
  const activities = (inline?: InlineAdmission, db: Db = h.db, answerBudget = newAnswerBudget()) =>
    createHookActivities({
      db,
      keys: h.keys,
      providers: createProviderFactory({ outbound: testOutbound, answerBudget }),
      logger: createLogger('test', 'error'),
      settings: { publicUrl: TEST_PUBLIC_URL },
      ...(inline ? { inline } : {}),
    });
  /**
   * The steps of one run, numbered as the workflow SDK numbers them (activity id `${seq}`, one
   * sequence for a run's regular and local activities): called, a local activity (inside the
   * workflow task); `.activity`, a regular one (a step refused admission); `.skip`, activities the
   * run scheduled that do not matter here.
   */
  const run = () => {
    const workflowExecution = { workflowId: `repository:${randomUUID()}`, runId: randomUUID() };
    let seq = 0;
    const as = (isLocal: boolean) => <T>(step: () => Promise<T>): Promise<T> => new MockActivityEnvironment({ isLocal, activityId: String(++seq), workflowExecution }).run(step) as Promise<T>;
    return Object.assign(as(true), { activity: as(false), skip: (n = 1) => void (seq += n) });
  };
  /** A hook at the connection's delivery URL made at GitLab by someone else than this run's steps (a stray one). */
  async function strayHook(token: string, connectionId: string, projectId: number): Promise<string> {
    const response = await fetch(`${gitlab.url}/api/v4/projects/${projectId}/hooks`, {
      method: 'POST',
      headers: { 'PRIVATE-TOKEN': token, 'content-type': 'application/json' },
      body: JSON.stringify({ url: deliveryUrl(TEST_PUBLIC_URL, 'gitlab', connectionId), push_events: true }),
    });
    expect(response.status).toBe(201);
    return String(((await response.json()) as { id: number }).id);
  }
  async function repository({ proxied = false } = {}) {
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: proxied ? proxy.url : gitlab.url, secret: token });
    const project = gitlab.addProject({ pathWithNamespace: `platform/${randomUUID().slice(0, 8)}` });
    const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'gitlab', externalId: String(project.id), fullName: project.pathWithNamespace });
    return { token, connectionId, project, key: { organizationId: org.id, repositoryId } };
  }
  const callsAt = (from: number) => gitlab.server.calls.slice(from).map((c) => `${c.operation} ${c.status}`);
  /** Resolves once the fake has answered `times` calls of `operation` after the first `from` calls, with no step running; rejects after `ms`. */
  /** An attach's begin and lookup as steps of `step`'s run, until the ensure's listing the lookup made ahead has been answered. */
  async function beginAndLookUp(step: ReturnType<typeof run>, hooks: ReturnType<typeof activities>, key: Parameters<ReturnType<typeof activities>['verifyRepository']>[0]): Promise<void> {
    await step(() => hooks.beginAttachment(key));
    const fromLookup = gitlab.server.calls.length;
    await step(() => hooks.verifyRepository(key));
    await answered(fromLookup, 'listHooks');
  }

  async function answered(from: number, operation: string, times = 1, ms = 5_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (gitlab.server.calls.slice(from).filter((c) => c.operation === operation).length < times) {
      if (Date.now() > deadline) throw new Error(`no ${operation} answered within ${ms} ms: ${callsAt(from).join(', ')}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it('a token replaced between two steps: the listing made ahead with the old one is dropped, the step lists and creates with the new one', async () => {
    const hooks = activities();
    const { connectionId, token, project, key } = await repository();
    const step = run();
    await beginAndLookUp(step, hooks, key);
    const newToken = `glpat-${randomUUID()}`;
    gitlab.addToken({ token: newToken, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });
    gitlab.revokeToken(token);
    await h.db.updateTable('connections').set({ credential: seal(h.keys, newToken, connectionId) }).where('id', '=', connectionId).execute();
    const before = gitlab.server.calls.length;
    const { outcome } = await step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }));
    expect(outcome).toBe('created');
    // The last listing is the prune's, made ahead by the step with the new token.
    await answered(before, 'listHooks', 2);
    expect(callsAt(before)).toEqual(['listHooks 200', 'createHook 201', 'listHooks 200']);
    expect(gitlab.hooks(project.id)).toHaveLength(1);
  });

  it('a disconnect asked between two steps: the step fails as before, and only a read went out', async () => {
    const hooks = activities();
    const { connectionId, project, key } = await repository();
    const step = run();
    await step(() => hooks.beginAttachment(key));
    const before = gitlab.server.calls.length;
    await step(() => hooks.verifyRepository(key));
    // The listing made ahead has been answered (a step that fails while it runs aborts it).
    await answered(before, 'listHooks');
    await h.db.updateTable('connections').set({ disconnect_requested_at: new Date() }).where('id', '=', connectionId).execute();
    await expect(step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }))).rejects.toMatchObject({ type: 'ConnectionNotActive' });
    expect(callsAt(before)).toEqual(['getProject 200', 'listHooks 200']);
    expect(gitlab.hooks(project.id)).toEqual([]);
  });

  it('unchanged, the steps make the calls they made before, each listing started by the step before, and the prune forgets the run', async () => {
    const answerBudget = newAnswerBudget();
    const hooks = activities(undefined, h.db, answerBudget);
    const { key } = await repository();
    const step = run();
    await step(() => hooks.beginAttachment(key));
    const before = gitlab.server.calls.length;
    await step(() => hooks.verifyRepository(key));
    // The ensure's listing is made with no step running: the lookup started it.
    await answered(before, 'listHooks');
    const afterLookup = gitlab.server.calls.length;
    const { providerHookId } = await step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }));
    // And the prune's, by the ensure, after its creation.
    await answered(afterLookup, 'listHooks');
    expect(callsAt(afterLookup)).toEqual(['createHook 201', 'listHooks 200']);
    expect(await step(() => hooks.pruneHooks({ ...key, keepHookIds: [providerHookId], completeAttachment: true }))).toEqual({ removed: [], attachmentCompleted: true });
    expect(callsAt(before)).toEqual(['getProject 200', 'listHooks 200', 'createHook 201', 'listHooks 200']);
    // Each listing made ahead was held by the step that took it, and given back when that step ended.
    expect(answerBudget.held(org.id)).toBe(0);
    // The prune, the attach's last step, forgot the run's adapter: a later step of the run reads the row first.
    const other = run();
    expect(await other(() => hooks.pruneHooks({ ...key, keepHookIds: [providerHookId] }))).toEqual({ removed: [] });
    expect(answerBudget.held(org.id)).toBe(0);
  });

  it("the ensure's listing made ahead is not taken by a later attach's ensure of the run once an ensure ran as an activity in between", async () => {
    const hooks = activities();
    const { project, key } = await repository();
    const step = run();
    // Attach 1: the lookup inside the workflow task starts the ensure's listing; the ensure, refused there, runs as an activity and creates the hook.
    await beginAndLookUp(step, hooks, key);
    const first = await step.activity(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }));
    expect(first.outcome).toBe('created');
    step.skip(3); // its prune as an activity; attach 2's begin, and its lookup as an activity
    // Attach 2's ensure, admitted: it lists again, finds the hook and adopts it.
    const second = await step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }));
    expect(second).toMatchObject({ outcome: 'adopted', providerHookId: first.providerHookId });
    expect(gitlab.hooks(project.id)).toHaveLength(1);
  });

  it("the prune's listing made ahead is not taken by a later prune of the run: a stray hook made since is removed", async () => {
    const hooks = activities();
    const { token, connectionId, project, key } = await repository();
    const step = run();
    await step(() => hooks.beginAttachment(key));
    await step(() => hooks.verifyRepository(key));
    const fromEnsure = gitlab.server.calls.length;
    const { providerHookId } = await step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }));
    // The ensure started the prune's listing; the prune, refused, runs as an activity.
    await answered(fromEnsure, 'listHooks');
    expect(await step.activity(() => hooks.pruneHooks({ ...key, keepHookIds: [providerHookId], completeAttachment: true }))).toEqual({ removed: [], attachmentCompleted: true });
    const stray = await strayHook(token, connectionId, project.id);
    step.skip(3); // attach 2's begin, lookup and ensure, the last two as activities
    expect(await step(() => hooks.pruneHooks({ ...key, keepHookIds: [providerHookId], completeAttachment: true }))).toEqual({ removed: [stray], attachmentCompleted: true });
    expect(gitlab.hooks(project.id).map((hook) => String(hook.id))).toEqual([providerHookId]);
  });

  it("an ensure failing after it started the prune's listing drops it: the next step of the run lists again", async () => {
    const answerBudget = newAnswerBudget();
    const hooks = activities(undefined, h.db, answerBudget);
    const { token, connectionId, project, key } = await repository();
    const step = run();
    await beginAndLookUp(step, hooks, key);
    // The hook's record fails (PostgreSQL refuses it), after the hook was saved and the prune's listing started.
    const attachment = await h.db.selectFrom('attachments').select('id').where('repository_id', '=', key.repositoryId).executeTakeFirstOrThrow();
    const fn = `refuse_hook_${randomUUID().replace(/-/g, '')}`;
    await sql.raw(`create function ${fn}() returns trigger language plpgsql as $$ begin raise exception 'hook record refused by the test'; end $$`).execute(h.db);
    await sql.raw(`create trigger ${fn} before insert on hooks for each row when (new.attachment_id = '${attachment.id}') execute function ${fn}()`).execute(h.db);
    const fromEnsure = gitlab.server.calls.length;
    try {
      await expect(step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }))).rejects.toThrow(/hook record refused by the test/);
    } finally {
      await sql.raw(`drop trigger ${fn} on hooks; drop function ${fn}()`).execute(h.db);
    }
    // The prune's listing, started before the failure, was aborted by it (or had been answered already).
    expect(callsAt(fromEnsure)[0]).toBe('createHook 201');
    const [saved] = gitlab.hooks(project.id);
    const stray = await strayHook(token, connectionId, project.id);
    // The activity the run schedules right after the ensure (here its prune) does not take the listing made before the failure.
    expect(await step(() => hooks.pruneHooks({ ...key, keepHookIds: [String(saved!.id)] }))).toEqual({ removed: [stray] });
    // The dropped listing gave back what it held.
    expect(answerBudget.held(org.id)).toBe(0);
  });

  it("a run's entry older than RUN_TARGET_TTL_MS is not used, nor the listing made ahead with it: the next step lists again", async () => {
    const answerBudget = newAnswerBudget();
    const hooks = activities(undefined, h.db, answerBudget);
    const { project, key } = await repository();
    const step = run();
    await beginAndLookUp(step, hooks, key);
    const fromEnsure = gitlab.server.calls.length;
    // The ensure runs 61 s after the lookup (the clock moved on, not waited for).
    const now = Date.now;
    const later = vi.spyOn(Date, 'now').mockImplementation(() => now() + 61_000);
    try {
      expect((await step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }))).outcome).toBe('created');
    } finally {
      later.mockRestore();
    }
    await answered(fromEnsure, 'listHooks', 2);
    expect(callsAt(fromEnsure)).toEqual(['listHooks 200', 'createHook 201', 'listHooks 200']);
    expect(gitlab.hooks(project.id)).toHaveLength(1);
    // The prune takes the listing the ensure made ahead; the stale one, dropped, gave back what it held, and so does the prune as it ends.
    const [hook] = gitlab.hooks(project.id);
    expect(await step(() => hooks.pruneHooks({ ...key, keepHookIds: [String(hook!.id)], completeAttachment: true }))).toMatchObject({ removed: [] });
    expect(answerBudget.held(org.id)).toBe(0);
  });

  describe("a read made ahead counts within its organization's inline admission", () => {
    /** The worker's inline admission with one place for the organization: whether another run of it could take that place now. */
    const placeFree = (inline: InlineAdmission) => {
      const release = inline.tryAdmit(org.id, `another-run-${randomUUID()}`);
      release?.();
      return release !== undefined;
    };

    it('it holds its run\'s place until the next step takes it; that step is admitted beside it, and the place is free once the run\'s steps end', async () => {
      const inline = createInlineAdmission({ perWorker: 4, perOrganization: 1 });
      const hooks = activities(inline);
      const { key } = await repository();
      const step = run();
      await step(() => hooks.beginAttachment(key));
      const before = gitlab.server.calls.length;
      await step(() => hooks.verifyRepository({ ...key, askAdmission: true }));
      // The lookup has ended; the ensure's listing it started holds the organization's one place.
      expect(placeFree(inline)).toBe(false);
      await answered(before, 'listHooks');
      expect(placeFree(inline)).toBe(false);
      const { providerHookId } = await step(() => hooks.ensureHook({ ...key, askAdmission: true, hookKey: 'project-hook' }));
      // The ensure took it (no listing of its own) and started the prune's, which holds the place in turn.
      expect(placeFree(inline)).toBe(false);
      expect(await step(() => hooks.pruneHooks({ ...key, askAdmission: true, keepHookIds: [providerHookId], completeAttachment: true }))).toEqual({ removed: [], attachmentCompleted: true });
      expect(callsAt(before)).toEqual(['getProject 200', 'listHooks 200', 'createHook 201', 'listHooks 200']);
      expect(placeFree(inline)).toBe(true);
    });

    it(`one its step never takes is aborted (its socket closed) after READ_AHEAD_CLAIM_MS (${READ_AHEAD_CLAIM_MS} ms), and its place given back`, async () => {
      const inline = createInlineAdmission({ perWorker: 4, perOrganization: 1 });
      const hooks = activities(inline);
      const { key } = await repository({ proxied: true });
      let closed!: () => void;
      const listingClosed = new Promise<void>((resolve) => (closed = resolve));
      let held!: () => void;
      const listingHeld = new Promise<void>((resolve) => (held = resolve));
      const never = new Promise<void>(() => undefined);
      // The provider never answers the hook listing.
      proxy.fault = (request) =>
        request.method === 'GET' && /\/hooks(\?|$)/.test(request.url) ? { kind: 'hold-request', onHeld: held, release: never, onReleased: () => undefined, onClientGone: closed } : undefined;
      try {
        const step = run();
        await step(() => hooks.beginAttachment(key));
        const startedAt = Date.now();
        await step(() => hooks.verifyRepository({ ...key, askAdmission: true }));
        await listingHeld;
        expect(placeFree(inline)).toBe(false);
        // The run goes on elsewhere (its next step on another worker, or the run ended): nobody takes the listing.
        await listingClosed;
        expect(Date.now() - startedAt).toBeGreaterThanOrEqual(READ_AHEAD_CLAIM_MS - 50);
        expect(Date.now() - startedAt).toBeLessThan(READ_AHEAD_CLAIM_MS + 5_000);
        expect(placeFree(inline)).toBe(true);
      } finally {
        proxy.fault = () => undefined;
      }
    });

    it('with no place free, nothing is read ahead', async () => {
      const inline = createInlineAdmission({ perWorker: 4, perOrganization: 1 });
      const hooks = activities(inline);
      const { key } = await repository();
      const step = run();
      await step(() => hooks.beginAttachment(key));
      // Another run of the organization holds its one place; this run's lookup asks none (a run from before admission).
      const other = inline.tryAdmit(org.id, `another-run-${randomUUID()}`)!;
      const before = gitlab.server.calls.length;
      try {
        await step(() => hooks.verifyRepository(key));
      } finally {
        other();
      }
      expect(placeFree(inline)).toBe(true);
      // The ensure, run as an activity, lists itself: the only listing.
      expect((await step.activity(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }))).outcome).toBe('created');
      expect(callsAt(before)).toEqual(['getProject 200', 'listHooks 200', 'createHook 201']);
    });
  });
  /**
   * Each attach step runs in a call scope of its own (activities/hooks.ts admittedStep,
   * activities/call-scope.ts): a read it started and did not await is aborted when it ends, so no
   * call of the organization runs on once the admission that counted it has given its place back.
   * The step here fails (a disconnect was asked) while its listing is held at the provider.
   */
  describe('a read still running when its step ends is aborted with the step', () => {
    const placeFree = (inline: InlineAdmission) => {
      const release = inline.tryAdmit(org.id, `another-run-${randomUUID()}`);
      release?.();
      return release !== undefined;
    };
    /** The provider never answers a hook listing: held until the client closes it. */
    function holdListings() {
      let held!: () => void;
      let closed!: () => void;
      const listing = { held: new Promise<void>((resolve) => (held = resolve)), closed: new Promise<void>((resolve) => (closed = resolve)), count: 0 };
      const never = new Promise<void>(() => undefined);
      proxy.fault = (request) =>
        request.method === 'GET' && /\/hooks(\?|$)/.test(request.url)
          ? { kind: 'hold-request', onHeld: () => (listing.count++, held()), release: never, onReleased: () => undefined, onClientGone: closed }
          : undefined;
      return listing;
    }
    /**
     * `closed` within `ms`: an aborted request's socket closes in milliseconds; one left running
     * would stay open until its 30 s timeout.
     */
    const closedWithin = (closed: Promise<void>, ms: number) =>
      Promise.race([
        closed.then(() => 'closed'),
        new Promise<string>((resolve) => setTimeout(() => resolve(`still open ${ms} ms after its step ended`), ms).unref()),
      ]);
    const disconnect = (connectionId: string) => h.db.updateTable('connections').set({ disconnect_requested_at: new Date() }).where('id', '=', connectionId).execute();

    it('a read made ahead that the next step took, when that step fails before using it', async () => {
      const inline = createInlineAdmission({ perWorker: 4, perOrganization: 1 });
      const hooks = activities(inline);
      const { connectionId, key } = await repository({ proxied: true });
      const listing = holdListings();
      try {
        const step = run();
        await step(() => hooks.beginAttachment(key));
        await step(() => hooks.verifyRepository({ ...key, askAdmission: true }));
        // The lookup's read ahead for the ensure is at GitLab, holding the organization's one place.
        await listing.held;
        expect(placeFree(inline)).toBe(false);
        await disconnect(connectionId);
        // The ensure takes the listing, then reads the row: the connection is no longer active.
        await expect(step(() => hooks.ensureHook({ ...key, askAdmission: true, hookKey: 'project-hook' }))).rejects.toMatchObject({ type: 'ConnectionNotActive' });
        expect(placeFree(inline)).toBe(true);
        expect(await closedWithin(listing.closed, 5_000)).toBe('closed');
        expect(listing.count).toBe(1);
      } finally {
        proxy.fault = () => undefined;
      }
    });

    it('its early read beside the row\'s, when the row it reads then fails the step', async () => {
      const inline = createInlineAdmission({ perWorker: 4, perOrganization: 1 });
      // The steps' one database connection: held by the test, it keeps the ensure's read of the row waiting while its early listing goes out.
      const gated = createDb(inject('databaseUrl'), { max: 1 });
      const hooks = activities(inline, gated);
      const { connectionId, key } = await repository({ proxied: true });
      const listing = holdListings();
      try {
        const step = run();
        await step(() => hooks.beginAttachment(key));
        // Another run of the organization holds its one place: the lookup (asking none) reads nothing ahead, and leaves the run's adapter.
        const other = inline.tryAdmit(org.id, `another-run-${randomUUID()}`)!;
        try {
          await step(() => hooks.verifyRepository(key));
        } finally {
          other();
        }
        await disconnect(connectionId);
        let taken!: () => void;
        const connectionTaken = new Promise<void>((resolve) => (taken = resolve));
        const gate = gated.connection().execute(async () => {
          taken();
          await listing.held;
        });
        await connectionTaken;
        // The ensure lists with the run's adapter at once; its row, read once the listing is at GitLab, fails it.
        await expect(step(() => hooks.ensureHook({ ...key, askAdmission: true, hookKey: 'project-hook' }))).rejects.toMatchObject({ type: 'ConnectionNotActive' });
        await gate;
        expect(placeFree(inline)).toBe(true);
        expect(await closedWithin(listing.closed, 5_000)).toBe('closed');
        expect(listing.count).toBe(1);
      } finally {
        proxy.fault = () => undefined;
        await gated.destroy();
      }
    });
  });
});
