import { type Client, ScheduleAlreadyRunning, ScheduleOverlapPolicy, type ScheduleOptions } from '@temporalio/client';
import { REFRESH_ALL_WORKFLOW_ID_PREFIX, REFRESH_SCHEDULE_ID } from '../workflows/contract.ts';

export interface RefreshScheduleSettings {
  cron: string;
  timeZone: string;
  taskQueue: string;
  scheduleId?: string;
}

/**
 * Creates the nightly repository refresh Schedule, or brings an existing one to the configured spec:
 * the worker calls this on every start, so a changed `repositoryCache.schedule` takes effect and a
 * restart never makes a second Schedule. Overlaps are skipped; a run missed while the cluster was
 * down is caught up within an hour.
 */
export async function ensureRefreshSchedule(client: Client, settings: RefreshScheduleSettings): Promise<'created' | 'updated'> {
  const scheduleId = settings.scheduleId ?? REFRESH_SCHEDULE_ID;
  const desired = {
    spec: { cronExpressions: [settings.cron], timezone: settings.timeZone },
    action: {
      type: 'startWorkflow' as const,
      workflowType: 'refreshRepositoriesWorkflow',
      workflowId: REFRESH_ALL_WORKFLOW_ID_PREFIX,
      taskQueue: settings.taskQueue,
      args: [{}],
    },
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
