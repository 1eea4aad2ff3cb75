import type { Db } from '../lib/db/index.ts';
import { countAttachmentsWithLegacyHooks } from '../lib/db/repositories/attachments.ts';
import type { Provider } from '../lib/domain.ts';
import type { Logger } from '../lib/logger.ts';
import type { WebhookSecrets } from './context.ts';

/** Providers whose legacy hooks' deliveries the receivers accept: those with a global secret configured (webhooks.acceptLegacyHooks on). */
export function legacyHookProviders(secrets: WebhookSecrets): Provider[] {
  return [...(secrets.gitlab.length > 0 ? (['gitlab'] as const) : []), ...(secrets.bitbucket.length > 0 ? (['bitbucket'] as const) : []), ...(secrets.azureDevOps ? (['azure-devops'] as const) : [])];
}

/**
 * Says at start what the legacy-hook window means, with what the migration has left (attachments
 * still holding a legacy hook, by provider): open, that the global secrets are a credential for every
 * such attachment in the hands of any tenant that ran its own server; closed with some left, that
 * their deliveries are refused until the hook-health reconcile moves them. Never stops the start.
 */
export async function noticeLegacyHooks(deps: { db: Db; logger: Logger; webhooks: WebhookSecrets }): Promise<void> {
  const accepting = legacyHookProviders(deps.webhooks);
  let remaining: Partial<Record<Provider, number>>;
  try {
    remaining = await countAttachmentsWithLegacyHooks(deps.db);
  } catch (error) {
    deps.logger.warn({ err: error }, 'could not count the attachments still holding a legacy hook');
    remaining = {};
  }
  const left = Object.values(remaining).reduce((sum, n) => sum + n, 0);
  const reconcile = 'the hook-health reconcile (Schedule forgelink-hook-health; `temporal schedule trigger --schedule-id forgelink-hook-health` runs it now), a re-attach or the connection\'s webhook-credential rotation moves each to its connection\'s own credential';
  if (accepting.length > 0) {
    deps.logger.warn(
      { acceptLegacyHooks: true, providers: accepting, attachmentsWithLegacyHooks: remaining },
      `webhooks.acceptLegacyHooks is on: deliveries to the bare receiver URL with the global legacy secrets are accepted for the ${left} attachments still holding a legacy hook. Treat those secrets as known to every tenant that ran its own GitLab, Bitbucket Data Center or Azure DevOps Server: it can sign with them a delivery naming another organization's repository that still has one. ${reconcile}; turn the window off and remove the keys once none is left`,
    );
  } else if (left > 0) {
    deps.logger.warn(
      { acceptLegacyHooks: false, attachmentsWithLegacyHooks: remaining },
      `${left} attachments still hold a legacy hook, whose deliveries (the bare receiver URL, the global secret) are refused (401) while webhooks.acceptLegacyHooks is off: ${reconcile}`,
    );
  }
}
