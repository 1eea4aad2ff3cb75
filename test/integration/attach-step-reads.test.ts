import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHookActivities } from '../../activities/hooks.ts';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { seal } from '../../lib/crypto.ts';
import { createLogger } from '../../lib/logger.ts';
import { startFakeGitlab, type FakeGitlab } from '../fakes/gitlab.ts';
import { seedConnection, seedRepository } from '../support/attachments.ts';
import { createOrgWithToken, startHarness, TEST_PUBLIC_URL, type Harness } from '../support/harness.ts';
import { testOutbound } from '../support/outbound.ts';

/**
 * An attach's local provider steps (activities/hooks.ts readingTarget): a later step makes its
 * first read with the adapter an earlier step of the run left, beside its read of the row, and
 * acts only on what the row says now. For a hook set of one hook (GitLab's), the step before
 * starts that read already once its own provider work is done (readAhead): the lookup the
 * ensure's listing, the ensure the prune's.
 */
describe("an attach's local steps reuse the run's adapter only for the target the row still names", () => {
  let h: Harness;
  let gitlab: FakeGitlab;
  let org: { id: string };
  beforeAll(async () => {
    h = await startHarness({ withoutWorker: true });
    gitlab = await startFakeGitlab();
    ({ org } = await createOrgWithToken(h));
  }, 60_000);
  afterAll(async () => {
    await gitlab?.close();
    await h?.close();
  });

  const activities = () =>
    createHookActivities({ db: h.db, keys: h.keys, providers: createProviderFactory({ outbound: testOutbound }), logger: createLogger('test', 'error'), settings: { publicUrl: TEST_PUBLIC_URL } });
  /** The steps of one run, as its workflow task runs them: local activities of that run. */
  const run = () => {
    const env = new MockActivityEnvironment({ isLocal: true, workflowExecution: { workflowId: `repository:${randomUUID()}`, runId: randomUUID() } });
    return <T>(step: () => Promise<T>): Promise<T> => env.run(step) as Promise<T>;
  };
  async function repository() {
    const token = `glpat-${randomUUID()}`;
    gitlab.addToken({ token, username: 'ci-bot', scopes: ['api', 'read_user', 'read_repository'] });
    const connectionId = await seedConnection(h, { organizationId: org.id, provider: 'gitlab', baseUrl: gitlab.url, secret: token });
    const project = gitlab.addProject({ pathWithNamespace: `platform/${randomUUID().slice(0, 8)}` });
    const repositoryId = await seedRepository(h, { organizationId: org.id, connectionId, provider: 'gitlab', externalId: String(project.id), fullName: project.pathWithNamespace });
    return { token, connectionId, project, key: { organizationId: org.id, repositoryId } };
  }
  const callsAt = (from: number) => gitlab.server.calls.slice(from).map((c) => `${c.operation} ${c.status}`);
  /** Resolves once the fake has answered `times` calls of `operation` after the first `from` calls, with no step running; rejects after `ms`. */
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
    await step(() => hooks.beginAttachment(key));
    const fromLookup = gitlab.server.calls.length;
    await step(() => hooks.verifyRepository(key));
    await answered(fromLookup, 'listHooks');
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
    await h.db.updateTable('connections').set({ disconnect_requested_at: new Date() }).where('id', '=', connectionId).execute();
    await expect(step(() => hooks.ensureHook({ ...key, hookKey: 'project-hook' }))).rejects.toMatchObject({ type: 'ConnectionNotActive' });
    // Let the early read end before looking at what was called.
    await answered(before, 'listHooks');
    expect(callsAt(before)).toEqual(['getProject 200', 'listHooks 200']);
    expect(gitlab.hooks(project.id)).toEqual([]);
  });

  it('unchanged, the steps make the calls they made before, each listing started by the step before, and the prune forgets the run', async () => {
    const hooks = activities();
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
    // The prune, the attach's last step, forgot the run's adapter: a later step of the run reads the row first.
    const other = run();
    expect(await other(() => hooks.pruneHooks({ ...key, keepHookIds: [providerHookId] }))).toEqual({ removed: [] });
  });
});
