import { randomUUID } from 'node:crypto';
import type { Dispatch, RecordedDelivery } from '../activities/events.ts';
import type { DispatchOutcome } from '../activities/dispatch.ts';
import type { EventInput } from '../workflows/contract.ts';

/** The floor workflows' activities: results the size and shape of the real ones, and no work. */
export function createFloorActivities() {
  return {
    async recordNothing(_input: EventInput): Promise<Extract<RecordedDelivery, { dispatches: unknown }>> {
      return { recorded: 1, dispatches: [{ eventId: randomUUID(), subscriberId: randomUUID() }], deliveryDeadlineSeconds: 86_400 };
    },
    async dispatchNothing(_dispatch: Dispatch): Promise<DispatchOutcome> {
      return { delivered: true, statusCode: 204 };
    },
  };
}

export type FloorActivities = ReturnType<typeof createFloorActivities>;
