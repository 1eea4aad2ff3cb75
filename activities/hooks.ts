import { ApplicationFailure } from '@temporalio/common';
import type { ActivitySettings } from './index.ts';
import { classified, toActivityFailure } from './errors.ts';
import { ProviderHttpError, type HookSpec, type ProviderAdapter, type ProviderFactory, type ProviderHook, type RepositoryRef } from './providers/port.ts';
import { open, type EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import {
  attachRefusal,
  attachmentIdOf,
  attachmentOf,
  forgetHooks,
  forgetHooksExcept,
  hooksSharedWithAnotherAttachment,
  listUndetachedRepositories,
  loadRepositoryTarget,
  recordedHookIds,
  recordHook,
  recordHookHealth,
  setAttachmentStatus,
} from '../lib/db/repositories/attachments.ts';
import { markRepositoriesVanished } from '../lib/db/repositories/repository-cache.ts';
import type { HookHealth, Provider } from '../lib/domain.ts';
import type { Logger } from '../lib/logger.ts';

export interface HookActivityDeps {
  db: Db;
  keys: EncryptionKeys;
  providers: ProviderFactory;
  logger: Logger;
  settings: ActivitySettings;
}

/** Which repository of which organization an activity acts on: ids only, never a secret. */
export interface RepositoryKey {
  organizationId: string;
  repositoryId: string;
}

/** Failure types of attach and detach steps, as an operator reads them in the Temporal UI. */
export const HookFailureTypes = {
  repositoryNotFound: 'RepositoryNotFound',
  repositoryNotVisible: 'RepositoryNotVisible',
  connectionNotActive: 'ConnectionNotActive',
  connectionUnavailable: 'ConnectionUnavailable',
  providerNotConfigured: 'ProviderNotConfigured',
  webhookSecretNotConfigured: 'WebhookSecretNotConfigured',
  unknownHook: 'UnknownHook',
  hookPresenceUnknown: 'HookPresenceUnknown',
} as const;

/** Where providers deliver: the webhook receiver of the provider under the public URL. */
export function deliveryUrl(publicUrl: string, provider: Provider): string {
  return `${publicUrl.replace(/\/+$/, '')}/api/events-handler/v1/events/${provider}`;
}

export const AZURE_DEVOPS_HOOK_EVENT_TYPES = ['git.push', 'git.pullrequest.created', 'git.pullrequest.updated'] as const;
export const GITLAB_HOOK_EVENTS = ['push_events', 'tag_push_events', 'merge_requests_events'] as const;
export const BITBUCKET_HOOK_EVENTS = ['repo:refs_changed', 'pr:opened', 'pr:from_ref_updated', 'pr:modified', 'pr:merged', 'pr:declined'] as const;

/** One hook of a repository's hook set: `key` names it to workflows; `spec` (with the secret) stays here. */
interface HookDefinition {
  key: string;
  spec: HookSpec;
}

function nonRetryable(type: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

function requireSetting<T>(value: T | undefined, name: string): T {
  if (value === undefined || value === '') {
    throw nonRetryable(HookFailureTypes.webhookSecretNotConfigured, `${name} is not configured: the receiver could not verify deliveries, so no hook is created`);
  }
  return value;
}

/**
 * The hooks forgelink keeps on one repository. Azure DevOps: one Service Hook subscription per
 * event type, scoped to the repository (never global), the PR-updated one filtered to source-branch
 * pushes, delivering with Basic auth. GitLab: one project hook with the secret token. Bitbucket DC:
 * one repository webhook with the HMAC secret. GitHub: none, the App delivers.
 */
function hookSet(provider: Provider, settings: ActivitySettings): HookDefinition[] {
  const url = deliveryUrl(settings.publicUrl, provider);
  switch (provider) {
    case 'github':
      return [];
    case 'gitlab':
      return [{ key: 'project-hook', spec: { url, events: [...GITLAB_HOOK_EVENTS], secret: requireSetting(settings.gitlabWebhookSecret, 'gitProviders.gitlab.webhookSecret') } }];
    case 'bitbucket':
      return [{ key: 'repository-webhook', spec: { url, events: [...BITBUCKET_HOOK_EVENTS], secret: requireSetting(settings.bitbucketWebhookSecret, 'gitProviders.bitbucket.webhookSecret') } }];
    case 'azure-devops': {
      const auth = requireSetting(settings.azureDevOps, 'gitProviders.azureDevOps.webhookBasicAuthUser/webhookBasicAuthPass');
      return AZURE_DEVOPS_HOOK_EVENT_TYPES.map((eventType) => ({
        key: eventType,
        spec: {
          url,
          events: [eventType],
          basicAuthUser: auth.basicAuthUser,
          secret: auth.basicAuthPass,
          ...(eventType === 'git.pullrequest.updated' ? { filters: { notificationType: 'PushNotification' } } : {}),
        },
      }));
    }
  }
}

const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');

/** Whether a provider hook is the one a definition describes: same URL, and for Azure DevOps the same event type (all three share the URL). */
function isHookFor(provider: Provider, spec: HookSpec, hook: ProviderHook): boolean {
  if (!sameUrl(hook.url, spec.url)) return false;
  return provider !== 'azure-devops' || hook.events[0] === spec.events[0];
}

/** Which hook of the set a provider hook stands for, whatever its URL: Azure DevOps by event type; the others keep one hook. */
const isSameHookKey = (provider: Provider, spec: HookSpec, hook: ProviderHook) => provider !== 'azure-devops' || hook.events[0] === spec.events[0];

const sameSet = (a: string[] = [], b: string[] = []) => a.length === b.length && a.every((x) => b.includes(x));
const sameFilters = (a: Record<string, string> = {}, b: Record<string, string> = {}) =>
  sameSet(Object.keys(a), Object.keys(b)) && Object.entries(a).every(([k, v]) => b[k] === v);

/** How a provider hook differs from its spec, in words for hookHealth; empty when it is as it should be. */
function driftOf(hook: ProviderHook, spec: HookSpec): string[] {
  const drift: string[] = [];
  if (!hook.healthy) drift.push(hook.disabledReason ?? 'disabled');
  if (!sameUrl(hook.url, spec.url)) drift.push('delivery URL');
  if (!sameSet(hook.events, spec.events)) drift.push('events');
  if (!sameFilters(hook.filters, spec.filters)) drift.push('filters');
  return drift;
}

export function createHookActivities({ db, keys, providers, logger, settings }: HookActivityDeps) {
  async function repository(key: RepositoryKey, { requireActive }: { requireActive: boolean }) {
    const row = await loadRepositoryTarget(db, key.organizationId, key.repositoryId);
    if (!row) throw nonRetryable(HookFailureTypes.repositoryNotFound, `repository ${key.repositoryId} is not in the repository cache of organization ${key.organizationId}`);
    const refusal = requireActive ? attachRefusal(row) : undefined;
    if (refusal) throw nonRetryable(HookFailureTypes.connectionNotActive, refusal);
    return row;
  }
  type RepositoryRow = Awaited<ReturnType<typeof repository>>;

  function adapterFor(row: RepositoryRow): ProviderAdapter {
    if (row.provider !== 'github' && !row.credential) {
      throw nonRetryable(HookFailureTypes.connectionUnavailable, `connection ${row.connection_id} (${row.connection_status}) has no credential to reach ${row.provider}`);
    }
    const secret = row.credential ? open(keys, row.credential, row.connection_id) : undefined;
    try {
      return providers({ connectionId: row.connection_id, provider: row.provider, baseUrl: row.base_url, externalKey: row.external_key, secret });
    } catch (error) {
      throw nonRetryable(HookFailureTypes.providerNotConfigured, (error as Error).message);
    }
  }

  const refOf = (row: RepositoryRow, projectId?: string): RepositoryRef => ({ externalId: row.external_id, fullName: row.full_name, ...(projectId ? { projectId } : {}) });

  function definition(row: RepositoryRow, hookKey: string): HookDefinition {
    const found = hookSet(row.provider, settings).find((d) => d.key === hookKey);
    if (!found) throw nonRetryable(HookFailureTypes.unknownHook, `${row.provider} has no hook "${hookKey}" in forgelink's hook set`);
    return found;
  }

  /** Hooks of our delivery URL that no attachment of another organization relies on may be deleted. */
  async function mayDeleteProviderHooks(row: RepositoryRow): Promise<boolean> {
    const shared = await hooksSharedWithAnotherAttachment(db, row.id);
    if (shared) logger.info({ repositoryId: row.id, provider: row.provider }, 'hooks left in place: another attachment of the same provider repository relies on them');
    return !shared;
  }

  /**
   * A 404 proves a hook gone only when the repository itself answers: providers answer 404, not
   * 403, for what the credential cannot see, so a token that lost access gets 404 for a hook that
   * still delivers. The repository missing too is either gone or hidden from us: not counted as deleted.
   */
  async function confirmGone(row: RepositoryRow, adapter: ProviderAdapter, what: string): Promise<void> {
    if (await classified(() => adapter.getRepository(refOf(row)))) return;
    throw nonRetryable(
      HookFailureTypes.hookPresenceUnknown,
      `${row.provider} answered 404 for ${what} and for repository ${row.full_name} itself: the repository is gone, or connection ${row.connection_id} can no longer see it and the hook may still deliver; restore the connection's access and detach again, or delete the hook at the provider`,
    );
  }

  /** Deletes hooks at the provider (one proven gone counts as deleted) and forgets them. */
  async function deleteHooks(row: RepositoryRow, adapter: ProviderAdapter, hookIds: string[]): Promise<void> {
    if (hookIds.length > 0 && (await mayDeleteProviderHooks(row))) {
      for (const hookId of hookIds) {
        if (!(await classified(() => adapter.deleteHook(refOf(row), hookId)))) await confirmGone(row, adapter, `hook ${hookId}`);
      }
    }
    await forgetHooks(db, row.id, hookIds);
  }

  return {
    /** Marks the repository attaching (an attached one stays attached while reconciled); returns the keys of its hook set. */
    async beginAttachment(key: RepositoryKey): Promise<{ provider: Provider; fullName: string; hookKeys: string[]; recordedHookIds: string[] }> {
      const row = await repository(key, { requireActive: true });
      const hookKeys = hookSet(row.provider, settings).map((d) => d.key);
      await setAttachmentStatus(db, { ...key, status: 'attaching', keepAttached: true });
      return { provider: row.provider, fullName: row.full_name, hookKeys, recordedHookIds: await recordedHookIds(db, row.id) };
    },

    /** Proves the connection can see the repository (for GitHub, that the App installation covers it); Azure DevOps also needs its project id. */
    async verifyRepository(key: RepositoryKey): Promise<{ projectId?: string }> {
      const row = await repository(key, { requireActive: true });
      const found = await classified(() => adapterFor(row).getRepository(refOf(row)));
      if (!found) {
        throw nonRetryable(
          HookFailureTypes.repositoryNotVisible,
          `${row.provider} repository ${row.full_name} (id ${row.external_id}) is gone or connection ${row.connection_id} cannot see it`,
        );
      }
      if (row.provider === 'azure-devops' && !found.projectId) throw nonRetryable(HookFailureTypes.repositoryNotVisible, `Azure DevOps gave no project for repository ${row.full_name}`);
      return found.projectId ? { projectId: found.projectId } : {};
    },

    /**
     * Makes one hook of the set exist, and records it. The repository's hooks are listed first: a
     * hook already pointing at our delivery URL (left by a run that crashed between creating and
     * recording it, or deleted from our records) is adopted and saved with our full settings (which
     * re-enables it and restores the secret, write-only at every provider) instead of duplicated;
     * further copies are deleted.
     */
    async ensureHook(input: RepositoryKey & { hookKey: string; projectId?: string }): Promise<{ providerHookId: string; outcome: 'created' | 'adopted'; duplicatesRemoved: number }> {
      const row = await repository(input, { requireActive: true });
      const { spec } = definition(row, input.hookKey);
      const adapter = adapterFor(row);
      const ref = refOf(row, input.projectId);
      const attachmentId = await attachmentIdOf(db, row.id);
      if (!attachmentId) throw nonRetryable(HookFailureTypes.repositoryNotFound, `repository ${row.id} has no attachment to record hooks on`);
      const recorded = new Set(await recordedHookIds(db, row.id));
      const matching = (await classified(() => adapter.listHooks(ref))).filter((hook) => isHookFor(row.provider, spec, hook));
      // The hook we already know wins over any copy.
      matching.sort((a, b) => Number(recorded.has(b.id)) - Number(recorded.has(a.id)));
      const [existing, ...duplicates] = matching;
      const hook = await classified(async () => {
        if (existing) {
          try {
            return await adapter.updateHook(ref, existing.id, spec);
          } catch (error) {
            // Deleted since the listing: create it instead.
            if (!(error instanceof ProviderHttpError && error.status === 404)) throw error;
          }
        }
        return adapter.createHook(ref, spec);
      });
      await recordHook(db, attachmentId, { providerHookId: hook.id, events: spec.events });
      for (const duplicate of duplicates) await classified(() => adapter.deleteHook(ref, duplicate.id));
      await forgetHooks(db, row.id, duplicates.map((d) => d.id));
      const outcome = existing?.id === hook.id ? 'adopted' : 'created';
      logger.info({ repositoryId: row.id, provider: row.provider, hookKey: input.hookKey, providerHookId: hook.id, outcome, duplicatesRemoved: duplicates.length }, 'hook ensured');
      return { providerHookId: hook.id, outcome, duplicatesRemoved: duplicates.length };
    },

    /**
     * Compensation for ensureHook: deletes the hook of that key unless it was recorded before this
     * attach began. Found by listing, so it also undoes a creation whose answer never arrived.
     */
    async removeHook(input: RepositoryKey & { hookKey: string; keepHookIds: string[] }): Promise<{ removed: string[] }> {
      const row = await repository(input, { requireActive: false });
      const { spec } = definition(row, input.hookKey);
      const adapter = adapterFor(row);
      const removed = (await classified(() => adapter.listHooks(refOf(row))))
        .filter((hook) => isHookFor(row.provider, spec, hook) && !input.keepHookIds.includes(hook.id))
        .map((hook) => hook.id);
      await deleteHooks(row, adapter, removed);
      if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, hookKey: input.hookKey, removed }, 'hook removed (compensation)');
      return { removed };
    },

    /** Deletes hooks at our delivery URL outside the hook set (e.g. an event type no longer used) and forgets records of hooks no longer there. */
    async pruneHooks(input: RepositoryKey & { keepHookIds: string[] }): Promise<{ removed: string[] }> {
      const row = await repository(input, { requireActive: true });
      const adapter = adapterFor(row);
      const url = deliveryUrl(settings.publicUrl, row.provider);
      const removed = (await classified(() => adapter.listHooks(refOf(row))))
        .filter((hook) => sameUrl(hook.url, url) && !input.keepHookIds.includes(hook.id))
        .map((hook) => hook.id);
      await deleteHooks(row, adapter, removed);
      await forgetHooksExcept(db, row.id, input.keepHookIds);
      if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, removed }, 'stray hooks at the delivery URL removed');
      return { removed };
    },

    async completeAttachment(key: RepositoryKey): Promise<void> {
      await setAttachmentStatus(db, { ...key, status: 'attached' });
      logger.info({ repositoryId: key.repositoryId }, 'repository attached');
    },

    /**
     * Records why an attach or a detach failed; a repository gone from the cache has nothing to
     * record on. A failed re-attach (reconcile) of an attached repository leaves it attached, with
     * the failure as its reason: its hooks are still in place and deliver, so its events stay routed.
     */
    async failAttachment(input: RepositoryKey & { reason: string }): Promise<void> {
      if (!(await loadRepositoryTarget(db, input.organizationId, input.repositoryId))) return;
      await setAttachmentStatus(db, { organizationId: input.organizationId, repositoryId: input.repositoryId, status: 'failed', reason: input.reason, keepAttached: true });
      logger.warn({ repositoryId: input.repositoryId, reason: input.reason }, 'attach or detach failed');
    },

    /** Marks the repository detaching; returns the hooks recorded for it. */
    async beginDetachment(key: RepositoryKey): Promise<{ provider: Provider; fullName: string; recordedHookIds: string[] }> {
      const row = await repository(key, { requireActive: false });
      await setAttachmentStatus(db, { ...key, status: 'detaching' });
      return { provider: row.provider, fullName: row.full_name, recordedHookIds: await recordedHookIds(db, row.id) };
    },

    /** Deletes one recorded hook; a hook already gone counts as deleted. */
    async deleteRecordedHook(input: RepositoryKey & { providerHookId: string }): Promise<void> {
      const row = await repository(input, { requireActive: false });
      await deleteHooks(row, adapterFor(row), [input.providerHookId]);
    },

    /** Deletes every other hook pointing at our delivery URL: copies our records never knew about. */
    async sweepHooks(key: RepositoryKey): Promise<{ removed: string[] }> {
      const row = await repository(key, { requireActive: false });
      const adapter = adapterFor(row);
      const url = deliveryUrl(settings.publicUrl, row.provider);
      let hooks: ProviderHook[];
      try {
        hooks = await adapter.listHooks(refOf(row));
      } catch (error) {
        if (!(error instanceof ProviderHttpError && error.status === 404)) throw toActivityFailure(error);
        await confirmGone(row, adapter, 'its hooks');
        throw toActivityFailure(error);
      }
      const removed = hooks.filter((hook) => sameUrl(hook.url, url)).map((hook) => hook.id);
      await deleteHooks(row, adapter, removed);
      if (removed.length > 0) logger.info({ repositoryId: row.id, provider: row.provider, removed }, 'unrecorded hooks at the delivery URL removed');
      return { removed };
    },

    async finishDetachment(key: RepositoryKey): Promise<void> {
      await forgetHooksExcept(db, key.repositoryId, []);
      await setAttachmentStatus(db, { ...key, status: 'detached' });
      logger.info({ repositoryId: key.repositoryId }, 'repository detached');
    },

    /**
     * The hook-health check of one attached repository: each hook of its set must exist, be enabled,
     * deliver to our URL with our events (and filters) and carry the current credential. Drift is
     * repaired in place (a save re-enables and rewrites the hook; a missing one is re-created) and
     * what was found is recorded as the attachment's hookHealth. A healthy set costs two reads and
     * no write at the provider. A repository the provider no longer shows is flagged vanished, never
     * detached. Returns no hookHealth when the repository is not attached (nothing to check).
     */
    async reconcileHooks(key: RepositoryKey): Promise<{ hookHealth?: HookHealth; hookIds: string[] }> {
      const row = await repository(key, { requireActive: false });
      const attachment = await attachmentOf(db, row.id);
      if (attachment?.status !== 'attached') return { hookIds: [] };
      const recorded = await recordedHookIds(db, row.id);
      const finish = async (hookHealth: HookHealth, hookIds: string[]) => {
        await recordHookHealth(db, row.id, hookHealth);
        logger.info({ repositoryId: row.id, provider: row.provider, ...hookHealth }, 'hook health checked');
        return { hookHealth, hookIds };
      };
      const refusal = attachRefusal(row);
      if (refusal) return finish({ status: 'failing', reason: refusal }, recorded);
      const adapter = adapterFor(row);
      const found = await classified(() => adapter.getRepository(refOf(row)));
      if (!found) {
        await markRepositoriesVanished(db, row.connection_id, [row.external_id]);
        return finish({ status: 'failing', reason: `${row.provider} no longer shows ${row.full_name}: flagged vanished, not detached` }, recorded);
      }
      const ref = refOf(row, found.projectId);
      const hooks = await classified(() => adapter.listHooks(ref));
      const repaired: string[] = [];
      const hookIds: string[] = [];
      for (const { key: hookKey, spec } of hookSet(row.provider, settings)) {
        // The hook we recorded is ours even where its URL drifted; otherwise one at our URL is adopted.
        const current = hooks.find((hook) => recorded.includes(hook.id) && isSameHookKey(row.provider, spec, hook)) ?? hooks.find((hook) => isHookFor(row.provider, spec, hook));
        const drift = current ? driftOf(current, spec) : ['missing'];
        let hook = current;
        if (drift.length > 0) {
          hook = await classified(async () => {
            if (current) {
              try {
                return await adapter.updateHook(ref, current.id, spec);
              } catch (error) {
                // Deleted since the listing: create it instead.
                if (!(error instanceof ProviderHttpError && error.status === 404)) throw error;
              }
            }
            return adapter.createHook(ref, spec);
          });
          repaired.push(`${hookKey} ${current?.id === hook.id ? 'updated' : 're-created'} (${drift.join(', ')})`);
        }
        if (!recorded.includes(hook!.id) || drift.length > 0) await recordHook(db, attachment.id, { providerHookId: hook!.id, events: spec.events });
        hookIds.push(hook!.id);
      }
      if (recorded.some((id) => !hookIds.includes(id))) await forgetHooksExcept(db, row.id, hookIds);
      return finish(repaired.length > 0 ? { status: 'repaired', reason: repaired.join('; ') } : { status: 'healthy' }, hookIds);
    },

    /** Repositories of a connection that still need a detach (for disconnect). */
    async listUndetachedRepositories({ connectionId }: { connectionId: string }): Promise<{ repositoryId: string; provider: Provider }[]> {
      return listUndetachedRepositories(db, connectionId);
    },
  };
}
