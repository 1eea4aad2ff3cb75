import type { LegacyHookWindow } from '../lib/config.ts';
import type { Db } from '../lib/db/index.ts';
import { countAttachmentsWithLegacyHooks } from '../lib/db/repositories/attachments.ts';
import type { Provider } from '../lib/domain.ts';
import type { Logger } from '../lib/logger.ts';

const sum = (counts: Partial<Record<Provider, number>>, providers?: readonly Provider[]) =>
  Object.entries(counts).reduce((total, [provider, n]) => total + (!providers || providers.includes(provider as Provider) ? n : 0), 0);

const RECONCILE =
  "the hook-health reconcile (Schedule forgelink-hook-health; `temporal schedule trigger --schedule-id forgelink-hook-health` runs it now), a re-attach or the connection's webhook-credential rotation moves each to its connection's own credential";

/**
 * One warning at start (the API's and the worker's: worker/main.ts calls it too) saying what the legacy-hook window means with what the
 * migration has left: open, that the global secrets are a credential for every such attachment in
 * the hands of any tenant that ran its own server; closed, that legacy deliveries are refused (401,
 * nothing stored or recorded), naming the keys set but unused, with how to migrate or open the
 * window. Nothing is logged when no key is set and no legacy hook is left. Never stops the start.
 */
export async function noticeLegacyHooks(deps: { db: Db; logger: Logger; window: LegacyHookWindow }): Promise<void> {
  const { open, unusedKeys } = deps.window;
  let counts: Awaited<ReturnType<typeof countAttachmentsWithLegacyHooks>>;
  try {
    counts = await countAttachmentsWithLegacyHooks(deps.db);
  } catch (error) {
    deps.logger.warn({ err: error }, 'could not count the attachments still holding a legacy hook');
    counts = { toMigrate: {}, notReconciled: {} };
  }
  const { toMigrate, notReconciled } = counts;
  const fields = { acceptLegacyHooks: open.length > 0, providers: open, unusedKeys, attachmentsWithLegacyHooks: toMigrate, attachmentsWithLegacyHooksNotReconciled: notReconciled };
  const stuck = sum(notReconciled);
  const notReconciledNote = stuck > 0 ? ` ${stuck} more (not attached, or on a connection that is not active) are not visited by the reconcile: re-activate or detach them.` : '';
  const unusedNote = unusedKeys.length > 0 ? ` ${unusedKeys.join(', ')} ${unusedKeys.length === 1 ? 'is' : 'are'} set but unused.` : '';
  if (open.length > 0) {
    const accepted = sum(toMigrate, open);
    const refused = sum(toMigrate) - accepted;
    deps.logger.warn(
      fields,
      `webhooks.acceptLegacyHooks is on (${open.join(', ')}): deliveries to the bare receiver URL with the global legacy secrets are accepted for the ${accepted} attachments still holding a legacy hook. Treat those secrets as known to every tenant that ran its own GitLab, Bitbucket Data Center or Azure DevOps Server: it can sign with them a delivery naming another organization's repository that still has one. ${RECONCILE}; turn the window off and remove the keys once none is left.${refused > 0 ? ` ${refused} attachments of other providers hold a legacy hook whose deliveries are refused (401): no global secret of theirs is configured.` : ''}${notReconciledNote}${unusedNote}`,
    );
    return;
  }
  const left = sum(toMigrate);
  if (left === 0 && stuck === 0 && unusedKeys.length === 0) return;
  deps.logger.warn(
    fields,
    `webhooks.acceptLegacyHooks is off: deliveries of legacy hooks (the bare receiver URL, the global secrets) are refused (401) and nothing of them is stored or recorded.${unusedNote} ${left} attachments still hold a legacy hook: ${RECONCILE}; to keep their deliveries until then, set webhooks.acceptLegacyHooks: true with the global secrets (a migration window) and trigger the reconcile.${notReconciledNote}`,
  );
}
