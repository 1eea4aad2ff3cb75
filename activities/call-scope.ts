/**
 * Provider calls that end with something shorter-lived than the activity that started them.
 *
 * Every outbound call ends when the running activity is cancelled: activities/outbound.ts reads the
 * activity's cancellationSignal from its context (the SDK's AsyncLocalStorage) when the call starts.
 * An activity that returns cancels nothing, so a call it started and did not await (a read made
 * ahead for the next step, an early read a step then did not use) would run on after it, outside
 * the admission that counted the activity (activities/inline-admission.ts). A CallScope runs code in
 * a copy of the activity's context whose cancellationSignal aborts with the activity's and with the
 * scope's `end`: every call started inside it, page after page, ends there (its socket closed).
 */
import { asyncLocalStorage, type Context } from '@temporalio/activity';
import { activityContext } from './outbound.ts';

/** The activity context each scope's context was copied from. */
const activityOf = new WeakMap<Context, Context>();

/** The running activity's own context, whatever scope the caller runs in; undefined outside an activity. */
export function ownActivityContext(): Context | undefined {
  const ctx = activityContext();
  return ctx && (activityOf.get(ctx) ?? ctx);
}

export interface CallScope {
  /** Aborts when the scope ends or its parent's signal aborts. */
  readonly signal: AbortSignal;
  /** Runs `fn` so that the calls it starts end with this scope. */
  run<T>(fn: () => T): T;
  /** Ends the scope: its calls still running are aborted with `reason`. Idempotent. */
  end(reason: unknown): void;
}

/**
 * A scope under `parent` (default: the context the caller runs in, itself maybe a scope): it ends
 * with `end` or when the parent's cancellationSignal aborts. Outside an activity there is no
 * context to carry it: `run` runs as it is and only `signal` aborts.
 */
export function callScope(parent: Context | undefined = activityContext()): CallScope {
  const controller = new AbortController();
  const source = parent?.cancellationSignal;
  const follow = () => controller.abort(source!.reason);
  if (source?.aborted) controller.abort(source.reason);
  else source?.addEventListener('abort', follow, { once: true });
  let scoped: Context | undefined;
  if (parent) {
    // The activity's context with another cancellationSignal: its info, heartbeat and logger as they are.
    scoped = Object.create(parent, { cancellationSignal: { value: controller.signal, enumerable: true } }) as Context;
    activityOf.set(scoped, activityOf.get(parent) ?? parent);
  }
  return {
    signal: controller.signal,
    run: (fn) => (scoped ? asyncLocalStorage.run(scoped, fn) : fn()),
    end(reason) {
      source?.removeEventListener('abort', follow);
      controller.abort(reason);
    },
  };
}
