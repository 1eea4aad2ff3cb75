import { type Client, ScheduleAlreadyRunning, ScheduleOverlapPolicy, type ScheduleOptions } from '@temporalio/client';
import {
  HOOK_HEALTH_ALL_WORKFLOW_ID_PREFIX,
  HOOK_HEALTH_SCHEDULE_ID,
  REFRESH_ALL_WORKFLOW_ID_PREFIX,
  REFRESH_SCHEDULE_ID,
  type HookHealthInput,
} from '../workflows/contract.ts';

export interface RefreshScheduleSettings {
  cron: string;
  timeZone: string;
  taskQueue: string;
  scheduleId?: string;
}

/**
 * Creates a Schedule, or brings an existing one to the configured spec: the worker calls this on
 * every start, so a changed cron takes effect and a restart never makes a second Schedule. Overlaps
 * are skipped; a run missed while the cluster was down is caught up within an hour.
 */
async function ensureSchedule(
  client: Client,
  scheduleId: string,
  settings: { cron: string; timeZone: string; taskQueue: string },
  workflow: { workflowType: string; workflowId: string; args: unknown[]; staticSummary: string },
): Promise<'created' | 'updated'> {
  const desired = {
    spec: { cronExpressions: [settings.cron], timezone: settings.timeZone },
    action: { type: 'startWorkflow' as const, ...workflow, taskQueue: settings.taskQueue },
    policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 hour' },
  } satisfies Omit<ScheduleOptions, 'scheduleId'>;
  try {
    await client.schedule.create({ scheduleId, ...desired });
    return 'created';
  } catch (error) {
    if (!(error instanceof ScheduleAlreadyRunning)) throw error;
  }
  await client.schedule.getHandle(scheduleId).update((previous) => ({ ...previous, ...desired, policies: { ...previous.policies, ...desired.policies } }));
  return 'updated';
}

/** The nightly repository refresh Schedule (repositoryCache.schedule). */
export async function ensureRefreshSchedule(client: Client, settings: RefreshScheduleSettings): Promise<'created' | 'updated'> {
  return ensureSchedule(client, settings.scheduleId ?? REFRESH_SCHEDULE_ID, settings, {
    workflowType: 'refreshRepositoriesWorkflow',
    workflowId: REFRESH_ALL_WORKFLOW_ID_PREFIX,
    args: [{}],
    // How the Schedule's runs read in the Temporal UI (each connection's child names its organization).
    staticSummary: 'all organizations: refresh repositories (nightly)',
  });
}

/** The hook-health reconcile Schedule (hookHealth.schedule, by default nightly after the refresh). */
export async function ensureHookHealthSchedule(
  client: Client,
  settings: RefreshScheduleSettings & HookHealthInput,
): Promise<'created' | 'updated'> {
  const input: HookHealthInput = { connectionsAtOnce: settings.connectionsAtOnce };
  return ensureSchedule(client, settings.scheduleId ?? HOOK_HEALTH_SCHEDULE_ID, settings, {
    workflowType: 'hookHealthWorkflow',
    workflowId: HOOK_HEALTH_ALL_WORKFLOW_ID_PREFIX,
    args: [input],
    staticSummary: 'all organizations: check hook health (nightly)',
  });
}
