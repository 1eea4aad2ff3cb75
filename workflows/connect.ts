import { ActivityFailure, ApplicationFailure, log, proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities/index.ts';
import type { ValidationOutcome } from '../activities/providers/port.ts';
import type { ConnectInput, ConnectResult } from './contract.ts';

const { validateConnection } = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});
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

/** Validates a connection's credential against its provider and records active or failed. */
export async function connectWorkflow(input: ConnectInput): Promise<ConnectResult> {
  let outcome: ValidationOutcome;
  try {
    outcome = await validateConnection({ connectionId: input.connectionId });
  } catch (error) {
    outcome = { ok: false, reason: reasonFrom(error) };
    log.warn('connection validation failed', { connectionId: input.connectionId, reason: outcome.reason });
  }
  await recordConnectionOutcome({ connectionId: input.connectionId, outcome });
  return outcome.ok
    ? { status: 'active', account: outcome.identity.account }
    : { status: 'failed', reason: outcome.reason };
}
