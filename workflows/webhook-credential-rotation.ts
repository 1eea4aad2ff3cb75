import { continueAsNew, proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { WebhookCredentialRotationInput, WebhookCredentialRotationResult } from './contract.ts';
import { checkConnectionHooks } from './hook-health.ts';

/** Database steps only: a retry finds what the previous attempt did (the new version is fixed in the history first). */
const { planWebhookCredentialRotation, addWebhookCredentialVersion, finishWebhookCredentialRotation } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/**
 * Rotates a connection's webhook credential (`webhook-credential:<org>:<connection>`):
 *
 * 1. makes a new credential, one version above the highest (the activity makes and seals it; the
 *    history holds only the version number). From then on new hooks get it, and the receiver accepts
 *    it beside the older ones;
 * 2. re-saves every hook of the connection with it: the hook-health check of each attached
 *    repository, one after another, each in the repository's own workflow (never interleaved with an
 *    attach or a detach), which saves again any hook whose recorded credential is not the current one
 *    and records the finding on the attachment (hookHealth);
 * 3. drops the older credentials no hook carries any more. A hook whose save failed keeps its
 *    credential accepted, and is listed in the result (`notUpdated`) and on its attachment
 *    (hookHealth failing); the nightly check saves it again and then drops the old credential.
 *
 * A worker lost on the way costs nothing: every step is idempotent and the run goes on elsewhere.
 */
export async function webhookCredentialRotationWorkflow(input: WebhookCredentialRotationInput): Promise<WebhookCredentialRotationResult> {
  const { organizationId, connectionId } = input;
  let rotation = input.rotation;
  if (!rotation) {
    const { accepted } = await planWebhookCredentialRotation({ organizationId, connectionId });
    const version = (accepted[0] ?? 0) + 1;
    await addWebhookCredentialVersion({ organizationId, connectionId, version });
    rotation = { version, previous: accepted, after: '', counts: { healthy: 0, repaired: 0, failing: 0, failures: [] } };
  }
  const { version, previous } = rotation;
  const checked = await checkConnectionHooks(
    { organizationId, connectionId, ...(rotation.after ? { after: rotation.after, counts: rotation.counts } : {}) },
    (after, counts) => continueAsNew<typeof webhookCredentialRotationWorkflow>({ organizationId, connectionId, rotation: { version, previous, after, counts } }),
  );
  const { dropped, notUpdated } = await finishWebhookCredentialRotation({ organizationId, connectionId, version, previous });
  return { version, dropped, notUpdated, checked };
}
