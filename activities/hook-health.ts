import type { Db } from '../lib/db/index.ts';
import { attachedRepositoriesPage, connectionsWithAttachedHooks, pendingHookSweepsPage, recordHookHealth } from '../lib/db/repositories/attachments.ts';
import type { HookHealth, Provider } from '../lib/domain.ts';
import type { Logger } from '../lib/logger.ts';
import type { RepositoryKey } from './hooks.ts';

/** The hook-health reconcile's database steps; the check itself is reconcileHooks (hooks.ts). */
export function createHookHealthActivities({ db, logger }: { db: Db; logger: Logger }) {
  return {
    /** A batch of the active connections (GitLab, Bitbucket, Azure DevOps) with an attached repository or one due for a sweep, of one organization or all, in id order after `after`. */
    async listHookHealthConnections(input: { organizationId?: string; after?: string; limit?: number }): Promise<{ organizationId: string; organizationSlug: string; connectionId: string; provider: Provider }[]> {
      return connectionsWithAttachedHooks(db, input);
    },

    /** A page of the connection's attached repositories, in id order after `after`. */
    async listAttachedRepositories(input: { connectionId: string; after?: string; limit: number }): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
      return attachedRepositoriesPage(db, input.connectionId, input);
    },

    /** The connection's repositories due for the sweep of unattached hooks (failed, or left attaching/detaching), at most `limit`: not yet tried for their status first (longest waiting first), then the longest since tried. */
    async listPendingHookSweeps(input: { connectionId: string; limit: number }): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
      return pendingHookSweepsPage(db, input.connectionId, input.limit);
    },

    /**
     * Records a hook-health check that could not be carried out (the provider kept failing) on an
     * attached repository. On one that is not attached the failed step was its sweep: nothing is
     * recorded (it stays due, behind the connection's other due repositories) and `recorded` says so.
     */
    async recordHookHealth(input: RepositoryKey & HookHealth): Promise<{ recorded: boolean }> {
      const { organizationId: _organizationId, repositoryId, ...hookHealth } = input;
      const recorded = await recordHookHealth(db, repositoryId, hookHealth);
      if (recorded) logger.warn({ repositoryId, ...hookHealth }, 'hook health check failed');
      else logger.warn({ repositoryId, reason: hookHealth.reason }, 'sweep of an unattached repository failed as a whole; still due');
      return { recorded };
    },
  };
}
