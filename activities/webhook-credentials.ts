import { ApplicationFailure } from '@temporalio/common';
import type { EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import {
  dropUnusedWebhookCredentials,
  ensureWebhookCredentialVersion,
  webhookCredentialRotationRefusal,
  webhookCredentialVersions,
} from '../lib/db/repositories/webhook-credentials.ts';
import type { Logger } from '../lib/logger.ts';
import type { WebhookCredentialRotationResult } from '../workflows/contract.ts';

/** Failure types of a webhook-credential rotation, as an operator reads them in the Temporal UI. */
export const WebhookCredentialFailureTypes = {
  connectionNotFound: 'ConnectionNotFound',
  rotationRefused: 'WebhookCredentialRotationRefused',
} as const;

/**
 * The database steps of a webhook-credential rotation (webhookCredentialRotationWorkflow). The new
 * credential is made and kept here, sealed; the workflow only ever sees its version number. Saving
 * the hooks with it is the hook-health check's (reconcileHooks, hooks.ts), which re-saves a hook
 * whose recorded credential version is not the current one.
 */
export function createWebhookCredentialActivities({ db, keys, logger }: { db: Db; keys: EncryptionKeys; logger: Logger }) {
  async function rotatableConnection(organizationId: string, connectionId: string) {
    const row = await db
      .selectFrom('connections')
      .select(['id', 'provider', 'status', 'disconnect_requested_at'])
      .where('organization_id', '=', organizationId)
      .where('id', '=', connectionId)
      .executeTakeFirst();
    if (!row) throw ApplicationFailure.create({ type: WebhookCredentialFailureTypes.connectionNotFound, message: `connection ${connectionId} does not exist`, nonRetryable: true });
    const refusal = webhookCredentialRotationRefusal(row);
    if (refusal) throw ApplicationFailure.create({ type: WebhookCredentialFailureTypes.rotationRefused, message: refusal, nonRetryable: true });
    return row;
  }

  return {
    /**
     * Where a rotation starts: the versions accepted now (highest first). Reads only, so the
     * workflow fixes the new version (one above the highest) in its history before anything is made.
     */
    async planWebhookCredentialRotation(input: { organizationId: string; connectionId: string }): Promise<{ accepted: number[] }> {
      await rotatableConnection(input.organizationId, input.connectionId);
      return { accepted: await webhookCredentialVersions(db, input.connectionId) };
    },

    /**
     * Makes the rotation's new credential, version `version`, which becomes the current one: new
     * hooks get it, the receiver accepts it beside the older ones. Repeating it makes nothing more.
     */
    async addWebhookCredentialVersion(input: { organizationId: string; connectionId: string; version: number }): Promise<void> {
      const connection = await rotatableConnection(input.organizationId, input.connectionId);
      await ensureWebhookCredentialVersion(db, keys, connection, input.version);
      logger.info({ connectionId: input.connectionId, version: input.version }, 'webhook credential made');
    },

    /**
     * The end of a rotation: drops every older credential no recorded hook carries any more, and
     * lists the hooks still carrying one (their credential stays accepted), with why their
     * repository's check failed where it did. `previous`: the versions accepted when it began.
     */
    async finishWebhookCredentialRotation(input: { organizationId: string; connectionId: string; version: number; previous: number[] }): Promise<Pick<WebhookCredentialRotationResult, 'dropped' | 'notUpdated'>> {
      const { stillCarried } = await dropUnusedWebhookCredentials(db, input.connectionId, input.version);
      const accepted = new Set(await webhookCredentialVersions(db, input.connectionId));
      // Also those a hook-health check dropped on the way, once their last hook carried the new one.
      const dropped = input.previous.filter((version) => version < input.version && !accepted.has(version)).sort((a, b) => a - b);
      const notUpdated = stillCarried.map((hook) => ({
        repositoryId: hook.repositoryId,
        providerHookId: hook.providerHookId,
        credentialVersion: hook.credentialVersion,
        ...(hook.hookHealthStatus === 'failing' && hook.hookHealthReason ? { reason: hook.hookHealthReason } : {}),
      }));
      logger[notUpdated.length > 0 ? 'warn' : 'info']({ connectionId: input.connectionId, version: input.version, dropped, notUpdated: notUpdated.length }, 'webhook credential rotation finished');
      return { dropped, notUpdated };
    },
  };
}
