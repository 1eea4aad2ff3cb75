import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { permanentSetupFailure } from './errors.ts';

/**
 * Every activity, whatever it does: an error that no retry can fix (a credential sealed under an
 * encryption key this deployment no longer has) fails the activity at once, non-retryable, with
 * the reason an operator acts on, instead of being retried until a run's timeout. Other errors
 * pass unchanged to the retry policy.
 */
export class PermanentErrorsInterceptor implements ActivityInboundCallsInterceptor {
  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    try {
      return await next(input);
    } catch (error) {
      throw permanentSetupFailure(error) ?? error;
    }
  }
}
