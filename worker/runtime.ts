import { IllegalStateError } from '@temporalio/common';
import { makeTelemetryFilterString, Runtime, type RuntimeOptions } from '@temporalio/worker';
import { type Logger, temporalLogger } from '../lib/logger.ts';

/**
 * Installs the Temporal Runtime with forgelink's logger: the SDK's messages, the native core's
 * (forwarded instead of printed as text on stderr), workflow `log.*` calls and activity context
 * logs all become lines of the one JSON stream. Must run before the first connection.
 * `telemetryOptions` adds to the logging setup (metrics).
 *
 * A process that already installed a Runtime (the test harness, a dev stack running the worker
 * in-process twice) keeps its own: returns false.
 */
export function installRuntime(logger: Logger, telemetryOptions: Omit<NonNullable<RuntimeOptions['telemetryOptions']>, 'logging'> = {}): boolean {
  try {
    Runtime.install({
      logger: temporalLogger(logger),
      telemetryOptions: { ...telemetryOptions, logging: { filter: makeTelemetryFilterString({ core: 'WARN', other: 'ERROR' }), forward: {} } },
    });
    return true;
  } catch (error) {
    if (error instanceof IllegalStateError) return false;
    throw error;
  }
}
