import { open, type EncryptionKeys } from '../lib/crypto.ts';
import type { Db } from '../lib/db/index.ts';
import {
  failCredentialRotation,
  loadConnectionSecrets,
  markConnectionActive,
  markConnectionDisconnected,
  markConnectionFailed,
  markDisconnectRequested,
  promoteCredentialRotation,
  recordDisconnectIncomplete,
} from '../lib/db/repositories/connections.ts';
import { purgeDisconnectedCache } from '../lib/db/repositories/repository-cache.ts';
import { ensureWebhookCredential, hasWebhookCredential } from '../lib/db/repositories/webhook-credentials.ts';
import type { Logger } from '../lib/logger.ts';
import { ApplicationFailure } from '@temporalio/common';
import { admitActivity, holdingAdmission } from './activity-admission.ts';
import { classified } from './errors.ts';
import { activityContext } from './outbound.ts';
import type { InlineAdmission } from './inline-admission.ts';
import type { ProviderFactory, ValidationOutcome } from './providers/port.ts';

export interface ConnectionActivityDeps {
  /** Admission of tenant-facing activities into activity slots (activities/activity-admission.ts), one per worker. */
  activitySlots?: InlineAdmission;
  db: Db;
  keys: EncryptionKeys;
  providers: ProviderFactory;
  logger: Logger;
}

export function createConnectionActivities({ db, keys, providers, logger, activitySlots }: ConnectionActivityDeps) {
  return holdingAdmission({
    /**
     * Checks a credential against the provider: a rotation's own credential (`rotationId`), else the
     * one awaiting its first validation, else the stored one.
     *
     * The provider is the tenant's (its base URL), and a slow one holds the activity slot while it
     * answers: run by a connect that can take a refusal (`askAdmission`), it asks the worker's
     * admission into activity slots for the connection's organization before the call
     * (activities/activity-admission.ts); refused, it calls nothing and fails ActivityNotAdmitted,
     * and the run schedules it again after a timer, from the same attempt.
     */
    async validateConnection({ connectionId, rotationId, askAdmission }: { connectionId: string; rotationId?: string; askAdmission?: boolean }): Promise<ValidationOutcome> {
      const row = await loadConnectionSecrets(db, connectionId);
      if (!row) throw ApplicationFailure.create({ type: 'ConnectionNotFound', message: `connection ${connectionId} does not exist`, nonRetryable: true });
      if (rotationId && (row.rotation_id !== rotationId || row.rotation_status !== 'validating' || !row.pending_credential)) {
        return { ok: false, reason: `credential rotation ${rotationId} is no longer the one being validated` };
      }
      admitActivity(activitySlots, { organizationId: row.organization_id, askAdmission });
      const sealed = row.pending_credential ?? row.credential;
      const secret = sealed ? open(keys, sealed, row.id) : undefined;
      const adapter = providers({ connectionId: row.id, organizationId: row.organization_id, provider: row.provider, baseUrl: row.base_url, externalKey: row.external_key, secret });
      const outcome = await classified(() => adapter.validate());
      logger.info({ connectionId, provider: row.provider, ok: outcome.ok, reason: outcome.ok ? undefined : outcome.reason }, 'connection validated');
      return outcome;
    },

    /**
     * Records the validation outcome; safe to repeat. A rotation's outcome is the rotation's: a bad
     * new credential leaves the connection on its old one, a good one replaces exactly that. An
     * active connection to GitLab, Bitbucket or Azure DevOps gets its own webhook credential here,
     * for the hooks its attaches create.
     */
    async recordConnectionOutcome({ connectionId, rotationId, outcome }: { connectionId: string; rotationId?: string; outcome: ValidationOutcome }): Promise<void> {
      if (!outcome.ok) {
        if (rotationId) await failCredentialRotation(db, connectionId, rotationId, outcome.reason);
        else await markConnectionFailed(db, connectionId, outcome.reason);
        return;
      }
      await db.transaction().execute(async (trx) => {
        if (rotationId) await promoteCredentialRotation(trx, connectionId, rotationId, outcome.identity.account);
        else await markConnectionActive(trx, connectionId, outcome.identity.account);
        const row = await loadConnectionSecrets(trx, connectionId);
        if (row && row.status === 'active' && hasWebhookCredential(row.provider)) await ensureWebhookCredential(trx, keys, row);
      });
    },

    /** First step of a disconnect: from now on the connection takes no new attach. */
    async beginDisconnect({ connectionId }: { connectionId: string }): Promise<void> {
      await markDisconnectRequested(db, connectionId);
      logger.info({ connectionId }, 'disconnect requested: no new attach from now on');
    },

    /** A disconnect ended without detaching everything: the connection keeps its credential and says why. */
    async recordDisconnectIncomplete({ connectionId, reason }: { connectionId: string; reason: string }): Promise<void> {
      await recordDisconnectIncomplete(db, connectionId, reason);
      logger.warn({ connectionId, reason }, 'disconnect incomplete: credential kept');
    },

    /**
     * The disconnect's last step: deletes the credentials, then what the connection's repository
     * cache holds that nothing else needs (purgeDisconnectedCache: the rows no attachment or event
     * refers to, and the listing pages). Without it every connect/disconnect cycle of a provider a
     * tenant controls left up to a listing's cap of rows in the database for good, and a former
     * tenant's repository names stayed. The purge runs in batches for at most half the step's
     * timeout; with rows left, the step fails retryable and its retry (the marking is idempotent)
     * goes on where it stopped.
     */
    async markConnectionDisconnected({ connectionId }: { connectionId: string }): Promise<void> {
      await markConnectionDisconnected(db, connectionId);
      logger.info({ connectionId }, 'connection disconnected; credential deleted');
      const context = activityContext();
      const purged = await purgeDisconnectedCache(db, connectionId, {
        maxBatches: Infinity,
        between: () => context?.heartbeat(),
        stopAt: context ? Date.now() + context.info.startToCloseTimeoutMs / 2 : undefined,
      });
      logger.info({ connectionId, ...purged }, 'disconnected connection\'s repository cache deleted');
      if (!purged.done) {
        throw ApplicationFailure.create({
          type: 'DisconnectPurgeUnfinished',
          message: `connection ${connectionId}: ${purged.repositories} cached repositories and ${purged.listingPages} listing pages deleted, more left for the retry`,
        });
      }
    },
  });
}
