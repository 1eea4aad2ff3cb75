import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { WebhookDefinition } from '@octokit/webhooks-examples';
import { describe, expect, it } from 'vitest';
import { isPing, MAX_NAME_LENGTH, MAX_SENDER_BYTES, normalizeDelivery, normalizeWebhook, WebhookPayloadError, type WebhookHeaders } from '../../api/webhooks/normalize.ts';
import { MAX_REF_NAME_LENGTH } from '../../lib/ref-glob.ts';
import type { NormalizedEvent, Provider } from '../../lib/domain.ts';

// Payloads are mutated into variants, so they are handled as plain JSON.
type Payload = Record<string, any>;

const githubDefinitions: WebhookDefinition[] = createRequire(import.meta.url)('@octokit/webhooks-examples');

function githubExamples(event: string): Payload[] {
  const definition = githubDefinitions.find((d) => d.name === event);
  if (!definition) throw new Error(`@octokit/webhooks-examples has no "${event}" event`);
  return structuredClone(definition.examples) as Payload[];
}

function githubExample(event: string, match: (example: Payload) => boolean): Payload {
  const example = githubExamples(event).find(match);
  if (!example) throw new Error(`no matching "${event}" example`);
  return example;
}

function fixture(path: string): Payload {
  return JSON.parse(readFileSync(new URL(`../fixtures/${path}`, import.meta.url), 'utf8'));
}

function normalize(provider: Provider, headers: WebhookHeaders, payload: Payload): NormalizedEvent[] {
  return normalizeWebhook(provider, headers, JSON.stringify(payload));
}

const ZERO = '0000000000000000000000000000000000000000';

describe('GitHub', () => {
  const delivery = '72d3162e-cc78-11e3-81ab-4c9367dc0958';
  const headers = (event: string) => ({ 'x-github-event': event, 'x-github-delivery': delivery });
  const helloWorld = { externalId: '186853002', fullName: 'Codertocat/Hello-World' };

  it('turns a push to an existing branch into a push with its commit count', () => {
    expect(normalize('github', headers('push'), fixture('github/push-branch-updated.json'))).toEqual([
      {
        provider: 'github',
        deliveryId: delivery,
        kind: 'push',
        repository: helloWorld,
        ref: {
          type: 'branch',
          name: 'master',
          before: 'a10867b14bb761a232cd80139fbd4c0d33264240',
          after: '6113728f27ae82c7b1a177c8d03f9e96e0adf246',
        },
        commitCount: 2,
        sender: 'Codertocat',
      },
    ]);
  });

  it('replaces a NUL character (the JSON escape \\u0000) in any string of the body or the headers by U+FFFD', () => {
    const payload = fixture('github/push-branch-updated.json');
    payload.ref = 'refs/heads/nul\u0000branch';
    payload.sender.login = 'Coder\u0000tocat';
    const [fromBody] = normalize('github', headers('push'), payload);
    expect(fromBody).toMatchObject({ ref: { name: 'nul\uFFFDbranch' }, sender: 'Coder\uFFFDtocat' });
    // The escape as text (an escaped backslash before u0000) is no NUL, and is kept.
    payload.ref = 'refs/heads/not\\u0000nul';
    expect(normalize('github', headers('push'), payload)[0]).toMatchObject({ ref: { name: 'not\\u0000nul' } });
    const [fromHeader] = normalize('github', { ...headers('push'), 'x-github-delivery': 'id\u0000x' }, fixture('github/push-branch-updated.json'));
    expect(fromHeader!.deliveryId).toBe('id\uFFFDx');
  });

  it('replaces a lone surrogate (the JSON escape \\ud800) by U+FFFD, keeping a surrogate pair', () => {
    const payload = fixture('github/push-branch-updated.json');
    payload.ref = 'refs/heads/x\ud800y\udc00z';
    payload.sender.login = 'emoji\ud83d\ude00';
    const body = Buffer.from(JSON.stringify(payload));
    expect(body.toString()).toContain('\\ud800');
    expect(normalizeWebhook('github', headers('push'), body)[0]).toMatchObject({ ref: { name: 'x\uFFFDy\uFFFDz' }, sender: 'emoji\ud83d\ude00' });
  });

  it('reads the body from a Buffer or a Uint8Array as from a string', () => {
    const payload = fixture('github/push-branch-updated.json');
    const expected = normalize('github', headers('push'), payload);
    const bytes = Buffer.from(JSON.stringify(payload));
    expect(normalizeWebhook('github', headers('push'), bytes)).toEqual(expected);
    expect(normalizeWebhook('github', headers('push'), new Uint8Array(bytes))).toEqual(expected);
  });

  it('turns all-zero before into a creation and all-zero after into a deletion (real payloads)', () => {
    const branchCreated = githubExample('push', (p) => p.ref === 'refs/heads/master' && p.before === ZERO);
    const tagCreated = githubExample('push', (p) => p.ref === 'refs/tags/simple-tag' && p.before === ZERO);
    const tagDeleted = githubExample('push', (p) => p.ref === 'refs/tags/simple-tag' && p.after === ZERO);
    const sha = '6113728f27ae82c7b1a177c8d03f9e96e0adf246';

    expect(normalize('github', headers('push'), branchCreated)).toEqual([
      expect.objectContaining({ kind: 'branch.created', ref: { type: 'branch', name: 'master', before: null, after: sha } }),
    ]);
    expect(normalize('github', headers('push'), tagCreated)).toEqual([
      expect.objectContaining({ kind: 'tag.created', ref: { type: 'tag', name: 'simple-tag', before: null, after: sha } }),
    ]);
    expect(normalize('github', headers('push'), tagDeleted)).toEqual([
      expect.objectContaining({ kind: 'tag.deleted', ref: { type: 'tag', name: 'simple-tag', before: sha, after: null } }),
    ]);
    expect(normalize('github', headers('push'), branchCreated)[0]).not.toHaveProperty('commitCount');
  });

  it('turns a moved tag into tag.updated', () => {
    expect(normalize('github', headers('push'), fixture('github/push-tag-moved.json'))).toEqual([
      expect.objectContaining({
        kind: 'tag.updated',
        ref: { type: 'tag', name: 'simple-tag', before: 'a10867b14bb761a232cd80139fbd4c0d33264240', after: '6113728f27ae82c7b1a177c8d03f9e96e0adf246' },
      }),
    ]);
  });

  it('ignores pushes to refs that are neither branches nor tags', () => {
    const notes = { ...fixture('github/push-branch-updated.json'), ref: 'refs/notes/commits' };
    expect(normalize('github', headers('push'), notes)).toEqual([]);
  });

  it('ignores create and delete events, which repeat what push says', () => {
    const examples = [...githubExamples('create'), ...githubExamples('delete')];
    expect(examples.length).toBeGreaterThan(0);
    for (const example of examples) {
      expect(normalize('github', headers('create'), example)).toEqual([]);
      expect(normalize('github', headers('delete'), example)).toEqual([]);
    }
  });

  it('maps pull_request opened, reopened, synchronize and closed', () => {
    const byAction = (action: string) => githubExample('pull_request', (p) => p.action === action);
    const pullRequest = {
      number: 2,
      sourceBranch: 'changes',
      targetBranch: 'master',
      headSha: 'ec26c3e57ca3a959ca5aad62de7213c562f8c821',
      title: 'Update the README with new information.',
    };
    expect(normalize('github', headers('pull_request'), byAction('opened'))).toEqual([
      { provider: 'github', deliveryId: delivery, kind: 'pull_request.opened', repository: helloWorld, pullRequest, sender: 'Codertocat' },
    ]);
    expect(normalize('github', headers('pull_request'), byAction('reopened'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.opened', pullRequest }),
    ]);
    expect(normalize('github', headers('pull_request'), byAction('synchronize'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.updated', pullRequest }),
    ]);
    expect(normalize('github', headers('pull_request'), byAction('closed'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.closed', pullRequest }),
    ]);
    expect(normalize('github', headers('pull_request'), fixture('github/pull-request-closed-merged.json'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.merged', pullRequest }),
    ]);
  });

  it('ignores pull_request actions that do not push to the source branch or end the pull request', () => {
    const acted = new Set(['opened', 'reopened', 'synchronize', 'closed']);
    const others = githubExamples('pull_request').filter((p) => !acted.has(p.action));
    expect(new Set(others.map((p) => p.action))).toContain('labeled');
    for (const example of others) expect(normalize('github', headers('pull_request'), example)).toEqual([]);
    const edited = { ...githubExample('pull_request', (p) => p.action === 'opened'), action: 'edited' };
    expect(normalize('github', headers('pull_request'), edited)).toEqual([]);
  });

  it('turns installation_repositories into one repository event per repository', () => {
    const added = githubExample('installation_repositories', (p) => p.action === 'added');
    const removed = githubExample('installation_repositories', (p) => p.action === 'removed');
    expect(normalize('github', headers('installation_repositories'), added)).toEqual([
      {
        provider: 'github',
        deliveryId: delivery,
        kind: 'repository.added',
        repository: { externalId: '186853007', fullName: 'Codertocat/Space' },
        sender: 'Codertocat',
      },
    ]);
    expect(normalize('github', headers('installation_repositories'), removed)).toEqual([
      expect.objectContaining({ kind: 'repository.removed', repository: { externalId: '1296269', fullName: 'octocat/Hello-World' } }),
    ]);

    added.repositories_added.push({ ...added.repositories_added[0], id: 186853099, full_name: 'Codertocat/Moon' });
    expect(normalize('github', headers('installation_repositories'), added).map((e) => e.repository)).toEqual([
      { externalId: '186853007', fullName: 'Codertocat/Space' },
      { externalId: '186853099', fullName: 'Codertocat/Moon' },
    ]);
  });

  it('turns installation created and deleted into repository events; other installation actions give none', () => {
    const created = githubExample('installation', (p) => p.action === 'created');
    const deleted = githubExample('installation', (p) => p.action === 'deleted');
    expect(normalize('github', headers('installation'), created)).toEqual([
      expect.objectContaining({ kind: 'repository.added', repository: { externalId: '186853002', fullName: 'Codertocat/Hello-World' } }),
    ]);
    expect(normalize('github', headers('installation'), deleted)).toEqual([
      expect.objectContaining({ kind: 'repository.removed', repository: { externalId: '1296269', fullName: 'octocat/Hello-World' } }),
    ]);
    for (const action of ['suspend', 'unsuspend', 'new_permissions_accepted']) {
      expect(normalize('github', headers('installation'), githubExample('installation', (p) => p.action === action))).toEqual([]);
    }
  });

  it('recognizes ping, which gives no event', () => {
    for (const ping of githubExamples('ping')) {
      const body = JSON.stringify(ping);
      expect(isPing('github', headers('ping'), body)).toBe(true);
      expect(normalizeWebhook('github', headers('ping'), body)).toEqual([]);
    }
    expect(isPing('github', headers('push'), JSON.stringify(fixture('github/push-branch-updated.json')))).toBe(false);
  });

  it('refuses a delivery without its delivery id or event name', () => {
    const push = fixture('github/push-branch-updated.json');
    expect(() => normalize('github', { 'x-github-event': 'push' }, push)).toThrow(
      'GitHub delivery has no x-github-delivery header',
    );
    expect(() => normalize('github', { 'x-github-delivery': delivery }, push)).toThrow(
      'GitHub delivery has no x-github-event header',
    );
  });
});

describe('GitLab', () => {
  const idempotencyKey = 'f2b8cc8a-0c43-4a0f-8d61-4f1b3e0f9a52';
  const headers = { 'x-gitlab-event': 'Push Hook', 'idempotency-key': idempotencyKey, 'x-gitlab-event-uuid': 'a6c1b1c2-uuid' };
  const diaspora = { externalId: '15', fullName: 'mike/diaspora' };

  it('turns a push into a push with total_commits_count, keyed by Idempotency-Key', () => {
    expect(normalize('gitlab', headers, fixture('gitlab/push.json'))).toEqual([
      {
        provider: 'gitlab',
        deliveryId: idempotencyKey,
        kind: 'push',
        repository: diaspora,
        ref: {
          type: 'branch',
          name: 'master',
          before: '95790bf891e76fee5e1747ab589903a6a1f80f22',
          after: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
        },
        commitCount: 4,
        sender: 'jsmith',
      },
    ]);
  });

  it('falls back to X-Gitlab-Event-UUID when GitLab sends no Idempotency-Key, and to the body\'s digest without either', () => {
    const [event] = normalize('gitlab', { 'x-gitlab-event-uuid': 'a6c1b1c2-uuid' }, fixture('gitlab/push.json'));
    expect(event?.deliveryId).toBe('a6c1b1c2-uuid');
    // The oldest GitLab sends neither: the body's digest stands in, the same on every retry.
    const body = fixture('gitlab/push.json');
    const [first] = normalize('gitlab', {}, body);
    expect(first?.deliveryId).toMatch(/^sha256-[0-9a-f]{64}$/);
    expect(normalize('gitlab', {}, body)[0]?.deliveryId).toBe(first?.deliveryId);
  });

  it('turns branch creation and deletion pushes into branch events', () => {
    const created = { ...fixture('gitlab/push.json'), before: ZERO };
    const deleted = { ...fixture('gitlab/push.json'), after: ZERO };
    expect(normalize('gitlab', headers, created)).toEqual([
      expect.objectContaining({
        kind: 'branch.created',
        ref: { type: 'branch', name: 'master', before: null, after: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7' },
      }),
    ]);
    expect(normalize('gitlab', headers, deleted)).toEqual([
      expect.objectContaining({
        kind: 'branch.deleted',
        ref: { type: 'branch', name: 'master', before: '95790bf891e76fee5e1747ab589903a6a1f80f22', after: null },
      }),
    ]);
  });

  it('turns tag pushes into tag created, deleted and updated', () => {
    const tagPush = fixture('gitlab/tag-push.json');
    const sha = '82b3d5ae55f7080f1e6022629cdb57bfae7cccc7';
    expect(normalize('gitlab', headers, tagPush)).toEqual([
      {
        provider: 'gitlab',
        deliveryId: idempotencyKey,
        kind: 'tag.created',
        repository: { externalId: '1', fullName: 'jsmith/example' },
        ref: { type: 'tag', name: 'v1.0.0', before: null, after: sha },
      },
    ]);
    expect(normalize('gitlab', headers, { ...tagPush, before: sha, after: ZERO })).toEqual([
      expect.objectContaining({ kind: 'tag.deleted', ref: { type: 'tag', name: 'v1.0.0', before: sha, after: null } }),
    ]);
    expect(normalize('gitlab', headers, { ...tagPush, before: 'b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327' })).toEqual([
      expect.objectContaining({ kind: 'tag.updated' }),
    ]);
  });

  describe('merge requests', () => {
    const withAction = (action: string, extra: Payload = {}) => {
      const payload = fixture('gitlab/merge-request.json');
      Object.assign(payload.object_attributes, { action, ...extra });
      return payload;
    };
    const pullRequest = {
      number: 1,
      sourceBranch: 'ms-viewport',
      targetBranch: 'master',
      headSha: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
      title: 'MS-Viewport',
    };

    it('turns open and reopen into pull_request.opened', () => {
      expect(normalize('gitlab', headers, fixture('gitlab/merge-request.json'))).toEqual([
        {
          provider: 'gitlab',
          deliveryId: idempotencyKey,
          kind: 'pull_request.opened',
          repository: { externalId: '1', fullName: 'gitlabhq/gitlab-test' },
          pullRequest,
          sender: 'root',
        },
      ]);
      expect(normalize('gitlab', headers, withAction('reopen'))).toEqual([
        expect.objectContaining({ kind: 'pull_request.opened', pullRequest }),
      ]);
    });

    it('turns an update with oldrev (new commits) into pull_request.updated', () => {
      expect(normalize('gitlab', headers, withAction('update', { oldrev: '95790bf891e76fee5e1747ab589903a6a1f80f22' }))).toEqual([
        expect.objectContaining({ kind: 'pull_request.updated', pullRequest }),
      ]);
    });

    it('ignores an update without oldrev (labels, title, draft) and approvals', () => {
      // The documented payload's changes are labels, draft and edit times: no code change.
      expect(normalize('gitlab', headers, withAction('update'))).toEqual([]);
      for (const action of ['approved', 'unapproved', 'approval', 'unapproval']) {
        expect(normalize('gitlab', headers, withAction(action))).toEqual([]);
      }
    });

    it('turns merge and close into merged and closed', () => {
      expect(normalize('gitlab', headers, withAction('merge', { state: 'merged' }))).toEqual([
        expect.objectContaining({ kind: 'pull_request.merged', pullRequest }),
      ]);
      expect(normalize('gitlab', headers, withAction('close', { state: 'closed' }))).toEqual([
        expect.objectContaining({ kind: 'pull_request.closed', pullRequest }),
      ]);
    });
  });

  it('ignores other object kinds and has no ping', () => {
    const note = { object_kind: 'note', project: { id: 5, path_with_namespace: 'gitlab-org/gitlab-test' } };
    expect(normalize('gitlab', headers, note)).toEqual([]);
    expect(isPing('gitlab', headers, JSON.stringify(fixture('gitlab/push.json')))).toBe(false);
  });
});

describe('Bitbucket Data Center', () => {
  const requestId = '9f6a1c2e-4d0b-4b7e-9a51-2f6e8c1d3b70';
  const headers = (eventKey: string) => ({ 'x-event-key': eventKey, 'x-request-id': requestId });
  const repository = { externalId: '84', fullName: 'PROJ/repository' };

  it('turns repo:refs_changed into a push', () => {
    expect(normalize('bitbucket', headers('repo:refs_changed'), fixture('bitbucket/repo-refs-changed.json'))).toEqual([
      {
        provider: 'bitbucket',
        deliveryId: requestId,
        kind: 'push',
        repository,
        ref: {
          type: 'branch',
          name: 'master',
          before: 'ecddabb624f6f5ba43816f5926e580a5f680a932',
          after: '178864a7d521b6f5e720b386b2c2b0ef8563e0dc',
        },
        sender: 'admin',
      },
    ]);
  });

  it('gives one event per ref change of a delivery', () => {
    const events = normalize('bitbucket', headers('repo:refs_changed'), fixture('bitbucket/repo-refs-changed-three-refs.json'));
    expect(events).toEqual([
      expect.objectContaining({
        kind: 'push',
        ref: { type: 'branch', name: 'master', before: '178864a7d521b6f5e720b386b2c2b0ef8563e0dc', after: '5b6a9e0d3f1c2e4a8b7d6c5e4f3a2b1c0d9e8f7a' },
      }),
      expect.objectContaining({
        kind: 'branch.created',
        ref: { type: 'branch', name: 'feature/login', before: null, after: '5b6a9e0d3f1c2e4a8b7d6c5e4f3a2b1c0d9e8f7a' },
      }),
      expect.objectContaining({
        kind: 'tag.deleted',
        ref: { type: 'tag', name: 'v0.9', before: 'ecddabb624f6f5ba43816f5926e580a5f680a932', after: null },
      }),
    ]);
    for (const event of events) {
      expect(event).toMatchObject({ provider: 'bitbucket', deliveryId: requestId, repository, sender: 'admin' });
    }
  });

  it('reads the event key from the body when the header is missing', () => {
    const events = normalize('bitbucket', { 'x-request-id': requestId }, fixture('bitbucket/repo-refs-changed.json'));
    expect(events.map((e) => e.kind)).toEqual(['push']);
  });

  it('maps pr:opened, pr:from_ref_updated, pr:merged and pr:declined', () => {
    expect(normalize('bitbucket', headers('pr:opened'), fixture('bitbucket/pr-opened.json'))).toEqual([
      {
        provider: 'bitbucket',
        deliveryId: requestId,
        kind: 'pull_request.opened',
        repository,
        pullRequest: {
          number: 1,
          sourceBranch: 'a-branch',
          targetBranch: 'master',
          headSha: 'ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca',
          title: 'a new file added',
        },
        sender: 'admin',
      },
    ]);
    expect(normalize('bitbucket', headers('pr:from_ref_updated'), fixture('bitbucket/pr-from-ref-updated.json'))).toEqual([
      expect.objectContaining({
        kind: 'pull_request.updated',
        pullRequest: expect.objectContaining({ number: 1, headSha: 'aab847db30cd1b4f9a1fdf1a8d3b0fa2bb1e0fe5' }),
      }),
    ]);
    expect(normalize('bitbucket', headers('pr:merged'), fixture('bitbucket/pr-merged.json'))).toEqual([
      expect.objectContaining({
        kind: 'pull_request.merged',
        pullRequest: {
          number: 9,
          sourceBranch: 'admin/file-1505781548644',
          targetBranch: 'master',
          headSha: '45f9690c928915a5e1c4366d5ee1985eea03f05d',
          title: 'Awesome feature',
        },
        sender: 'user',
      }),
    ]);
    expect(normalize('bitbucket', headers('pr:declined'), fixture('bitbucket/pr-declined.json'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.closed', pullRequest: expect.objectContaining({ number: 10, sourceBranch: 'decline-me' }) }),
    ]);
  });

  it('ignores pull request changes that are not source pushes (pr:modified, reviewers, comments)', () => {
    expect(normalize('bitbucket', headers('pr:modified'), fixture('bitbucket/pr-modified.json'))).toEqual([]);
    const opened = fixture('bitbucket/pr-opened.json');
    for (const eventKey of ['pr:reviewer:approved', 'pr:reviewer:updated', 'pr:comment:added', 'pr:deleted']) {
      expect(normalize('bitbucket', headers(eventKey), { ...opened, eventKey })).toEqual([]);
    }
  });

  it('recognizes the unsigned diagnostics:ping, which gives no event', () => {
    const ping = JSON.stringify(fixture('bitbucket/diagnostics-ping.json'));
    expect(isPing('bitbucket', { 'x-event-key': 'diagnostics:ping' }, ping)).toBe(true);
    expect(normalizeWebhook('bitbucket', headers('diagnostics:ping'), ping)).toEqual([]);
    expect(isPing('bitbucket', headers('repo:refs_changed'), JSON.stringify(fixture('bitbucket/repo-refs-changed.json')))).toBe(false);
    expect(isPing('bitbucket', {}, 'not json')).toBe(false);
  });

  it('refuses a delivery without X-Request-Id or any event key', () => {
    expect(() =>
      normalize('bitbucket', { 'x-event-key': 'repo:refs_changed' }, fixture('bitbucket/repo-refs-changed.json')),
    ).toThrow('Bitbucket delivery has no x-request-id header');
    expect(() => normalize('bitbucket', { 'x-request-id': requestId }, { test: true })).toThrow(
      'Bitbucket delivery has no x-event-key header and no eventKey',
    );
  });
});

describe('Azure DevOps', () => {
  const withResource = (path: string, resource: Payload) => {
    const payload = fixture(path);
    Object.assign(payload.resource, resource);
    return payload;
  };
  const fabrikam = { externalId: '00000000-0000-0000-0000-000000000000', fullName: 'Fabrikam/Fabrikam', project: 'Fabrikam' };

  it('turns git.push into a push, taking the documented placeholder ids as given', () => {
    expect(normalize('azure-devops', {}, fixture('azure-devops/git-push.json'))).toEqual([
      {
        provider: 'azure-devops',
        deliveryId: '00000000-0000-0000-0000-0000000000000',
        kind: 'push',
        repository: {
          externalId: '00000000-0000-0000-0000-000000000000',
          fullName: 'Fabrikam-Fiber-Git/Fabrikam-Fiber-Git',
          project: 'Fabrikam-Fiber-Git',
        },
        ref: {
          type: 'branch',
          name: 'main',
          before: 'aad331d8d3b131fa9ae03cf5e53965b51942618a',
          // Zeros with dashes are a placeholder, not the all-zero id of a deletion.
          after: '00000000-0000-0000-0000-000000000000',
        },
        commitCount: 1,
        sender: 'Windows Live ID\\fabrikamfiber4@hotmail.com',
      },
    ]);
  });

  it('gives one event per ref update of a push', () => {
    const push = withResource('azure-devops/git-push.json', {
      refUpdates: [
        { name: 'refs/heads/main', oldObjectId: 'aad331d8d3b131fa9ae03cf5e53965b51942618a', newObjectId: '33b55f7cb7e7e245323987634f960cf4a6e6bc74' },
        { name: 'refs/heads/release/1.2', oldObjectId: ZERO, newObjectId: '33b55f7cb7e7e245323987634f960cf4a6e6bc74' },
        { name: 'refs/tags/v1.1', oldObjectId: 'aad331d8d3b131fa9ae03cf5e53965b51942618a', newObjectId: ZERO },
        { name: 'refs/notes/commits', oldObjectId: ZERO, newObjectId: '33b55f7cb7e7e245323987634f960cf4a6e6bc74' },
      ],
    });
    const events = normalize('azure-devops', {}, push);
    expect(events.map((e) => [e.kind, e.ref?.name, e.ref?.before, e.ref?.after])).toEqual([
      ['push', 'main', 'aad331d8d3b131fa9ae03cf5e53965b51942618a', '33b55f7cb7e7e245323987634f960cf4a6e6bc74'],
      ['branch.created', 'release/1.2', null, '33b55f7cb7e7e245323987634f960cf4a6e6bc74'],
      ['tag.deleted', 'v1.1', 'aad331d8d3b131fa9ae03cf5e53965b51942618a', null],
    ]);
    // The push's commit list cannot be split between the refs it moved.
    expect(events[0]).not.toHaveProperty('commitCount');
    expect(new Set(events.map((e) => e.deliveryId))).toEqual(new Set(['00000000-0000-0000-0000-0000000000000']));
  });

  it('turns git.pullrequest.created into pull_request.opened', () => {
    expect(normalize('azure-devops', {}, fixture('azure-devops/git-pullrequest-created.json'))).toEqual([
      {
        provider: 'azure-devops',
        deliveryId: '00000000-0000-0000-0000-000000000000',
        kind: 'pull_request.opened',
        repository: fabrikam,
        pullRequest: {
          number: 1,
          sourceBranch: 'mytopic',
          targetBranch: 'main',
          headSha: '00000000-0000-0000-0000-000000000000',
          title: 'my first pull request',
        },
        sender: 'fabrikamfiber4@hotmail.com',
      },
    ]);
  });

  it('turns git.pullrequest.updated into updated, or merged / closed by the pull request status', () => {
    const kinds = (status: string) =>
      normalize('azure-devops', {}, withResource('azure-devops/git-pullrequest-updated.json', { status })).map((e) => e.kind);
    expect(normalize('azure-devops', {}, fixture('azure-devops/git-pullrequest-updated.json'))).toEqual([
      expect.objectContaining({ kind: 'pull_request.merged', repository: fabrikam, pullRequest: expect.objectContaining({ number: 1 }) }),
    ]);
    expect(kinds('active')).toEqual(['pull_request.updated']);
    expect(kinds('abandoned')).toEqual(['pull_request.closed']);
  });

  it('turns git.pullrequest.merged into merged only for a completed pull request', () => {
    expect(normalize('azure-devops', {}, fixture('azure-devops/git-pullrequest-merged.json'))).toEqual([
      {
        provider: 'azure-devops',
        deliveryId: 'a0a0a0a0-bbbb-cccc-dddd-e1e1e1e1e1e1',
        kind: 'pull_request.merged',
        repository: { externalId: 'c2c2c2c2-dddd-eeee-ffff-a3a3a3a3a3a3', fullName: 'Fabrikam/Fabrikam', project: 'Fabrikam' },
        pullRequest: {
          number: 1,
          sourceBranch: 'mytopic',
          targetBranch: 'master',
          headSha: '53d54ac915144006c2c9e90d2c7d3880920db49c',
          title: 'my first pull request',
        },
      },
    ]);
    const attempt = withResource('azure-devops/git-pullrequest-merged.json', { status: 'active', mergeStatus: 'conflicts' });
    expect(normalize('azure-devops', {}, attempt)).toEqual([]);
  });

  it('ignores other event types and has no ping', () => {
    const build = { id: '4a5d99d6-1c75-4e53-91b9-ee80057d4ce3', eventType: 'build.complete', resource: { id: 2 } };
    expect(normalize('azure-devops', {}, build)).toEqual([]);
    expect(isPing('azure-devops', {}, JSON.stringify(build))).toBe(false);
  });

  it('refuses a payload without its id', () => {
    const { id: _, ...withoutId } = fixture('azure-devops/git-push.json');
    expect(() => normalize('azure-devops', {}, withoutId)).toThrow('Azure DevOps git.push: "id" is missing or not an id');
  });
});

describe('bad input', () => {
  const validHeaders: Record<Provider, WebhookHeaders> = {
    github: { 'x-github-event': 'push', 'x-github-delivery': 'd-1' },
    gitlab: { 'idempotency-key': 'd-1' },
    bitbucket: { 'x-event-key': 'repo:refs_changed', 'x-request-id': 'd-1' },
    'azure-devops': {},
  };

  it.each(Object.keys(validHeaders) as Provider[])('%s: refuses a body that is not a JSON object', (provider) => {
    const headers = validHeaders[provider];
    expect(() => normalizeWebhook(provider, headers, 'payload=%7B%22ref%22')).toThrow(WebhookPayloadError);
    expect(() => normalizeWebhook(provider, headers, '{"ref": ')).toThrow(/^webhook body is not JSON: /);
    expect(() => normalizeWebhook(provider, headers, '[]')).toThrow('webhook body is not a JSON object');
    expect(() => normalizeWebhook(provider, headers, 'null')).toThrow('webhook body is not a JSON object');
    // Bytes that are not UTF-8 read as U+FFFD (mended like a NUL); what is left must still be JSON.
    expect(() => normalizeWebhook(provider, headers, new Uint8Array([0x7b, 0xff, 0x7d]))).toThrow(/^webhook body is not JSON: /);
  });

  it('names the event and the field a payload lacks', () => {
    const githubPush = fixture('github/push-branch-updated.json');
    delete githubPush.repository.id;
    expect(() => normalize('github', validHeaders.github, githubPush)).toThrow(
      new WebhookPayloadError('GitHub push: "repository.id" is missing or not an id'),
    );

    const changes = fixture('bitbucket/repo-refs-changed-three-refs.json');
    delete changes.changes[1].toHash;
    expect(() => normalize('bitbucket', validHeaders.bitbucket, changes)).toThrow(
      'Bitbucket repo:refs_changed: "changes[1].toHash" is missing or not a string',
    );

    const mergeRequest = fixture('gitlab/merge-request.json');
    mergeRequest.object_attributes.iid = 'one';
    expect(() => normalize('gitlab', validHeaders.gitlab, mergeRequest)).toThrow(
      'GitLab merge_request: "object_attributes.iid" is missing or not an integer',
    );

    const azurePush = fixture('azure-devops/git-push.json');
    delete azurePush.resource.refUpdates;
    expect(() => normalize('azure-devops', {}, azurePush)).toThrow(
      'Azure DevOps git.push: "resource.refUpdates" is missing or not an array',
    );

    expect(() => normalize('gitlab', validHeaders.gitlab, { event_name: 'push' })).toThrow(
      'GitLab: "object_kind" is missing or not a string',
    );
    expect(() => normalize('azure-devops', {}, { id: 'x' })).toThrow('Azure DevOps: "eventType" is missing or not a string');
  });
});

describe('normalizeDelivery: the instance a delivery came from', () => {
  const body = (path: string) => JSON.stringify(fixture(path));
  it('reads GitLab\'s project.web_url and Bitbucket\'s links.self; other providers name none', () => {
    expect(normalizeDelivery('gitlab', { 'x-gitlab-event-uuid': 'u-1' }, body('gitlab/push.json')).instanceUrl).toBe('http://example.com/mike/diaspora');
    // Bitbucket's REST representation of a repository links to it; the documentation's samples leave it out.
    const linked = fixture('bitbucket/repo-refs-changed.json') as { repository: Record<string, unknown> };
    linked.repository.links = { self: [{ href: 'https://bitbucket.acme.test/projects/PRJ/repos/app/browse' }] };
    expect(normalizeDelivery('bitbucket', { 'x-request-id': 'r-1', 'x-event-key': 'repo:refs_changed' }, JSON.stringify(linked)).instanceUrl).toBe(
      'https://bitbucket.acme.test/projects/PRJ/repos/app/browse',
    );
    // The documentation's push sample carries no link: the instance stays unknown.
    expect(normalizeDelivery('bitbucket', { 'x-request-id': 'r-2', 'x-event-key': 'repo:refs_changed' }, body('bitbucket/repo-refs-changed.json')).instanceUrl).toBeUndefined();
    expect(normalizeDelivery('azure-devops', {}, body('azure-devops/git-push.json')).instanceUrl).toBeUndefined();
  });

  it("names a GitHub installation event's installation, from the same parse; other events name none", () => {
    const headers = (event: string) => ({ 'x-github-event': event, 'x-github-delivery': 'd-1' });
    const added = githubExample('installation_repositories', (p) => p.action === 'added');
    const { installationId } = normalizeDelivery('github', headers('installation_repositories'), JSON.stringify(added));
    expect(installationId).toBe(String((added.installation as { id: number }).id));
    const push = githubExample('push', () => true);
    expect(normalizeDelivery('github', headers('push'), JSON.stringify(push)).installationId).toBeUndefined();
  });
});


describe('normalizeDelivery: names over the length limits', () => {
  const headers = { 'x-request-id': 'r-long', 'x-event-key': 'repo:refs_changed' };
  const push = (names: string[], actor = 'admin') => {
    const payload = fixture('bitbucket/repo-refs-changed.json');
    const [change] = payload.changes;
    payload.changes = names.map((name) => ({ ...change, ref: { ...change.ref, id: `refs/heads/${name}`, displayId: name }, refId: `refs/heads/${name}` }));
    payload.actor.name = actor;
    return JSON.stringify(payload);
  };

  it('leaves out an event whose branch is longer than MAX_REF_NAME_LENGTH, keeps the rest, and counts it', () => {
    const longest = 'a'.repeat(MAX_REF_NAME_LENGTH);
    const delivery = normalizeDelivery('bitbucket', headers, push(['main', `${longest}b`, longest]));
    expect(delivery.events.map((e) => e.ref?.name)).toEqual(['main', longest]);
    expect(delivery.overlong).toBe(1);
    // A delivery of nothing else is one not acted on (200, never a 4xx the provider would count against its hook).
    expect(normalizeDelivery('bitbucket', headers, push(['x'.repeat(100_000)]))).toEqual({ events: [], overlong: 1 });
    expect(normalizeDelivery('bitbucket', headers, push(['main'])).overlong).toBeUndefined();
  });

  it("leaves out a pull request whose branches are over it, and an event whose repository's name is over MAX_NAME_LENGTH", () => {
    const pr = fixture('bitbucket/pr-opened.json');
    pr.pullRequest.fromRef.id = `refs/heads/${'f'.repeat(MAX_REF_NAME_LENGTH + 1)}`;
    expect(normalizeDelivery('bitbucket', { 'x-request-id': 'r-pr', 'x-event-key': 'pr:opened' }, JSON.stringify(pr))).toMatchObject({ events: [], overlong: 1 });
    const gitlab = fixture('gitlab/push.json');
    gitlab.project.path_with_namespace = `g/${'r'.repeat(MAX_NAME_LENGTH)}`;
    expect(normalizeDelivery('gitlab', { 'x-gitlab-event-uuid': 'u-long' }, JSON.stringify(gitlab))).toMatchObject({ events: [], overlong: 1 });
  });

  it('measures a repository name and project in UTF-8 bytes: 342 three-byte characters are over, 341 are not', () => {
    const azure = (project: string, name: string) => {
      const payload = fixture('azure-devops/git-push.json');
      payload.resource.repository.project.name = project;
      payload.resource.repository.name = name;
      return normalizeDelivery('azure-devops', {}, JSON.stringify(payload));
    };
    // 1,025 and 1,023 bytes of full name (project, "/", name).
    expect(azure('P', '\u4e2d'.repeat(341))).toMatchObject({ events: [], overlong: 1 });
    expect(azure('P', `${'\u4e2d'.repeat(340)}x`).events).toHaveLength(1);
    expect(azure('\u4e2d'.repeat(342), 'r')).toMatchObject({ events: [], overlong: 1 });
    // A surrogate pair is 4 bytes: 256 of them (512 UTF-16 units) are 1,024 bytes of project, over once a name follows.
    expect(azure('\u{1F600}'.repeat(255), 'r').events).toHaveLength(1);
    expect(azure('\u{1F600}'.repeat(256), 'r')).toMatchObject({ events: [], overlong: 1 });
  });

  it('reads bytes that are not UTF-8 as U+FFFD, keeping the delivery', () => {
    const payload = fixture('gitlab/push.json');
    payload.ref = 'refs/heads/MARK';
    const [before, after] = JSON.stringify(payload).split('MARK') as [string, string];
    const body = new Uint8Array(Buffer.concat([Buffer.from(before), Buffer.from([0x80, 0xed, 0xa0, 0x80]), Buffer.from(after)]));
    const [event] = normalizeDelivery('gitlab', { 'x-gitlab-event-uuid': 'u-bytes' }, body).events;
    expect(event!.ref?.name).toBe('\uFFFD\uFFFD\uFFFD\uFFFD');
  });

  it('cuts a sender over 255 bytes of UTF-8 between characters, keeping the event (each ref change repeats it)', () => {
    const senderOf = (sender: string) => normalizeDelivery('bitbucket', headers, push(['main', 'dev'], sender)).events.map((e) => e.sender);
    // 1,000 ideographs (under the 1,024 characters counted before): 85 of them, 255 bytes, on every event.
    const ideographs = '\u4e2d'.repeat(1000);
    expect(senderOf(ideographs)).toEqual(['\u4e2d'.repeat(85), '\u4e2d'.repeat(85)]);
    // 4-byte characters: 63 whole ones (252 bytes), never half a surrogate pair.
    expect(senderOf(`${'\u{1F600}'.repeat(100)}`)).toEqual(['\u{1F600}'.repeat(63), '\u{1F600}'.repeat(63)]);
    expect(senderOf(`ab${'\u{1F600}'.repeat(100)}`)[0]).toBe(`ab${'\u{1F600}'.repeat(63)}`);
    expect(senderOf('s'.repeat(MAX_SENDER_BYTES))[0]).toHaveLength(MAX_SENDER_BYTES);
    expect(senderOf('s'.repeat(100_000))[0]).toBe('s'.repeat(MAX_SENDER_BYTES));
    const [event] = normalizeDelivery('bitbucket', headers, push(['main'], ideographs)).events;
    expect(event).toMatchObject({ kind: 'push', ref: { name: 'main' } });
  });

  describe('maxEventsLength: a list of ref changes or repositories whose events are surely over it is answered before they are made', () => {
    const refChanges = (n: number, limit: number, name = (i: number) => `b${i}`, before = 'a', after = 'b', sender = 'x') => ({
      bitbucket: normalizeDelivery('bitbucket', { 'x-event-key': 'repo:refs_changed', 'x-request-id': 'r-big' }, JSON.stringify({ eventKey: 'repo:refs_changed', actor: { name: sender }, repository: { id: 1, slug: 'r', project: { key: 'P' } }, changes: Array.from({ length: n }, (_, i) => ({ refId: `refs/heads/${name(i)}`, fromHash: before, toHash: after })) }), { maxEventsLength: limit }),
      'azure-devops': normalizeDelivery('azure-devops', {}, JSON.stringify({ id: 'e-big', eventType: 'git.push', resource: { pushedBy: { uniqueName: sender }, repository: { id: 'r', name: 'r', project: { name: 'p' } }, refUpdates: Array.from({ length: n }, (_, i) => ({ name: `refs/tags/${name(i)}`, oldObjectId: before, newObjectId: after })) } }), { maxEventsLength: limit }),
    });
    const installation = (n: number, limit: number) =>
      normalizeDelivery('github', { 'x-github-event': 'installation', 'x-github-delivery': 'd-big' }, JSON.stringify({ action: 'created', installation: { id: 1 }, repositories: Array.from({ length: n }, (_, i) => ({ id: i, full_name: `o/r${i}` })), sender: { login: 'x' } }), { maxEventsLength: limit });

    it('answers overLimit, with no events, for 100,000 short ref changes and as many repositories (events of ~10 MB) against 1 MB', () => {
      for (const delivery of [...Object.values(refChanges(100_000, 1_000_000)), installation(100_000, 1_000_000)]) expect(delivery).toEqual({ events: [], overLimit: true });
    });

    it('never answers overLimit for events within the limit: at their exact size they are made', () => {
      for (const names of [(i: number) => `b${i}`, (i: number) => `t"\\${i}\u0000`]) {
        for (const [before, after] of [['a', 'b'], ['0000', 'b'], ['a', '0'], ['0', '00']]) {
          for (const [provider, made] of Object.entries(refChanges(300, Number.MAX_SAFE_INTEGER, names, before, after))) {
            const exact = JSON.stringify(made.events).length;
            const within = refChanges(300, exact, names, before, after)[provider as 'bitbucket'];
            expect(within.overLimit, `${provider} ${before}..${after}`).toBeUndefined();
            expect(within.events).toHaveLength(300);
            // A fifth less: answered over the limit before the events are made.
            expect(refChanges(300, Math.ceil(exact * 0.8), names, before, after)[provider as 'bitbucket'].overLimit).toBe(true);
          }
        }
      }
      const exact = JSON.stringify(installation(300, Number.MAX_SAFE_INTEGER).events).length;
      expect(installation(300, exact).events).toHaveLength(300);
    });

    it('counts a long sender as the events keep it, cut to its bytes: at their exact size they are made', () => {
      for (const sender of ['s'.repeat(1_000), '\u4e00'.repeat(400), 's'.repeat(2_000)]) {
        for (const [provider, made] of Object.entries(refChanges(300, Number.MAX_SAFE_INTEGER, undefined, 'a', 'b', sender))) {
          const exact = JSON.stringify(made.events).length;
          const within = refChanges(300, exact, undefined, 'a', 'b', sender)[provider as 'bitbucket'];
          expect(within.overLimit, `${provider} sender of ${sender.length}`).toBeUndefined();
          expect(within.events).toHaveLength(300);
        }
      }
    });

    it('answers names over the limits, not the size limit, when every event names a repository over them', () => {
      const body = { eventKey: 'repo:refs_changed', repository: { id: 1, slug: 'r'.repeat(MAX_NAME_LENGTH), project: { key: 'P' } }, changes: Array.from({ length: 5_000 }, (_, i) => ({ refId: `refs/heads/b${i}`, fromHash: 'a', toHash: 'b' })) };
      expect(normalizeDelivery('bitbucket', { 'x-event-key': 'repo:refs_changed', 'x-request-id': 'r-long' }, JSON.stringify(body), { maxEventsLength: 1_000_000 })).toEqual({ events: [], overlong: 5_000 });
    });
  });
});
