/**
 * The SDK's floor under an attach (bench/attach.ts), in the floor worker's bundle
 * (bench/floor-workflows.ts): the attach's Temporal shape with none of forgelink's work.
 */
import { patched, proxyLocalActivities, setHandler } from '@temporalio/workflow';
import { attachmentRequested, type AttachmentRequest, type RepositoryWorkflowInput, type RepositoryWorkflowResult } from '../workflows/contract.ts';
import type { FloorActivities } from './floor-activities.ts';

/** The provider calls an attach makes along its critical path, by step (bench/attach.ts criticalPath), and where to make them. */
export interface AttachShape {
  /** A path on the provider's fake: it answers after its latency, as it answers the attach. */
  url: string;
  verifyCalls: number;
  hooks: number;
  callsPerHook: number;
  pruneCalls: number;
  /** patched() calls made before the first call, each recording a marker and a TemporalChangeVersion upsert (`--floorPatches`: what an attach's patches cost). */
  patches?: number;
}

/** As the attach's local provider steps (workflows/attach.ts providerStepsAskingAdmission). */
const { callFake } = proxyLocalActivities<FloorActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
  localRetryThreshold: '1 ms',
});

/**
 * Started as the API starts the repository workflow (signalWithStart of attachmentRequested), it
 * takes its requests as repositoryWorkflow does and carries each out as the attach's provider
 * steps, local activities in one workflow task: the repository's lookup, the hooks side by side,
 * the prune, each making its calls one after another. No database (the attach's bookkeeping has no
 * counterpart here), no adapter, no admission.
 */
export async function attachShapedWorkflow(input: RepositoryWorkflowInput & { shape: AttachShape }): Promise<RepositoryWorkflowResult> {
  const { url, verifyCalls, hooks, callsPerHook, pruneCalls } = input.shape;
  const queue: AttachmentRequest[] = [...input.pending];
  setHandler(attachmentRequested, (request) => void queue.push(request));
  let result: RepositoryWorkflowResult = { status: 'detached', hookIds: [], requests: 0 };
  for (let request = queue.shift(); request; request = queue.shift()) {
    for (let i = 0; i < (input.shape.patches ?? 0); i++) patched(`floor-patch-${i}`);
    await callFake({ url, calls: verifyCalls });
    const hookIds = await Promise.all(Array.from({ length: hooks }, (_, i) => callFake({ url, calls: callsPerHook }).then(() => `floor-hook-${i}`)));
    await callFake({ url, calls: pruneCalls });
    result = { status: 'attached', hookIds, requests: result.requests + 1 };
  }
  return result;
}
