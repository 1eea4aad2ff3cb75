import { ActivityFailure, ApplicationFailure, log, patched, proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { ValidationOutcome } from '../activities/providers/port.ts';
import { askingActivitySlot } from './activity-slot.ts';
import { NETWORK_STEP_HEARTBEAT_TIMEOUT, type ConnectInput, type ConnectResult } from './contract.ts';

/** The provider's call: retried with backoff (1 s doubling, at most 1 minute apart), 10 attempts. */
const validationOptions = {
  startToCloseTimeout: '1 minute',
  heartbeatTimeout: NETWORK_STEP_HEARTBEAT_TIMEOUT,
  retry: { initialInterval: 1000, backoffCoefficient: 2, maximumInterval: 60_000, maximumAttempts: 10 },
} as const;
const { validateConnection } = proxyActivities<Activities>(validationOptions);
/**
 * The validation calls the provider at the connection's base URL, which the tenant chooses, and a
 * slow one holds an activity slot while it answers; a tenant can start as many connects as it
 * likes. Later runs ask the worker for the slot (a share per organization, workflows/activity-slot.ts):
 * one refused waits on a timer and costs no attempt. Runs started before validate as they did.
 */
const validateAskingSlot = askingActivitySlot('validateConnection', validationOptions);
const CONNECT_ACTIVITY_ADMISSION = 'connect-activity-admission';
const { recordConnectionOutcome } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '30s' },
});

/** Why a validation that threw ended, in words an API client can act on. */
function reasonFrom(error: unknown): string {
  if (error instanceof ActivityFailure && error.cause instanceof ApplicationFailure) {
    return `${error.cause.type ?? 'ProviderError'}: ${error.cause.message}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * Validates a connection's credential against its provider and records active or failed; for a
 * credential rotation, the rotation's outcome (the connection keeps its old credential on a failure).
 */
export async function connectWorkflow(input: ConnectInput): Promise<ConnectResult> {
  // Only the activities' inputs carry the rotation: the steps are the same, so older runs replay.
  const target = { connectionId: input.connectionId, ...(input.rotationId ? { rotationId: input.rotationId } : {}) };
  let outcome: ValidationOutcome;
  try {
    outcome = await (patched(CONNECT_ACTIVITY_ADMISSION) ? validateAskingSlot : validateConnection)(target);
  } catch (error) {
    outcome = { ok: false, reason: reasonFrom(error) };
    log.warn('connection validation failed', { connectionId: input.connectionId, reason: outcome.reason });
  }
  await recordConnectionOutcome({ ...target, outcome });
  return outcome.ok
    ? { status: 'active', account: outcome.identity.account }
    : { status: 'failed', reason: outcome.reason };
}
