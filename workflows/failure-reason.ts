import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';

/** Why a step failed, in words an API client or operator can act on: the activity's failure type and message. */
export function failureReason(error: unknown): string {
  const cause = (error instanceof ActivityFailure ? error.cause : undefined) ?? error;
  if (cause instanceof ApplicationFailure) return `${cause.type ?? 'Error'}: ${cause.message}`;
  return cause instanceof Error ? cause.message : String(cause);
}
