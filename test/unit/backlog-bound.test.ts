import { describe, expect, it } from 'vitest';
import { createBacklogBound } from '../../api/webhooks/backlog-bound.ts';
import type { Db } from '../../lib/db/index.ts';
import type { OrganizationBacklog } from '../../lib/db/repositories/deliveries.ts';

/** A measure the test answers (or fails) when it chooses: what the database would answer, no timing. */
const controlledMeasures = () => {
  const asked: { organizationId: string; answer: (backlog: OrganizationBacklog) => void; fail: (error: Error) => void }[] = [];
  const measureBacklog = (organizationId: string) =>
    new Promise<OrganizationBacklog>((answer, fail) => {
      asked.push({ organizationId, answer, fail });
    });
  return { asked, measureBacklog };
};
const NO_DB = undefined as unknown as Db;
/** Whether `promise` has settled once every microtask queued so far has run. */
const settled = async (promise: Promise<unknown>) => {
  let done = false;
  void promise.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
};

describe("the receivers' organization backlog bound", () => {
  it('waits for an organization’s first measure; past its refresh a measure that takes answers at once while the next runs beside it', async () => {
    let now = 0;
    const { asked, measureBacklog } = controlledMeasures();
    const bound = createBacklogBound({ db: NO_DB, maxDeliveries: 3, maxBytes: 1_000, refreshMs: 1000, measureBacklog, now: () => now });

    const first = bound.full('org-a');
    expect(await settled(first)).toBe(false);
    expect(asked).toHaveLength(1);
    asked[0]!.answer({ rows: 2, bytes: 10 });
    expect(await first).toBeUndefined();
    expect(await bound.full('org-a')).toBeUndefined();
    expect(asked).toHaveLength(1);

    // Stale, below the bound: answered at once, one measure started.
    now = 1001;
    const stale = bound.full('org-a');
    expect(await settled(stale)).toBe(true);
    expect(await stale).toBeUndefined();
    expect(asked).toHaveLength(2);
    // Another delivery while it runs: no second measure.
    expect(await bound.full('org-a')).toBeUndefined();
    expect(asked).toHaveLength(2);
    asked[1]!.answer({ rows: 3, bytes: 10 });
    await Promise.resolve();
    expect(await bound.full('org-a')).toMatchObject({ bound: 'webhooks.maxBacklogDeliveries', limit: 3, backlog: { rows: 3, bytes: 10 }, measured: true });
    // The same measure again: full, reported already (one log line per measure), no new query.
    expect(await bound.full('org-a')).toMatchObject({ measured: false });
    expect(asked).toHaveLength(2);
  });

  it('past its refresh, a measure that refuses waits for the next (the relays may have drained the backlog meanwhile)', async () => {
    let now = 0;
    const { asked, measureBacklog } = controlledMeasures();
    const bound = createBacklogBound({ db: NO_DB, maxDeliveries: 3, maxBytes: 1_000, refreshMs: 1000, measureBacklog, now: () => now });
    const first = bound.full('org-d');
    asked[0]!.answer({ rows: 3, bytes: 10 });
    expect(await first).toMatchObject({ bound: 'webhooks.maxBacklogDeliveries' });
    now = 2000;
    const [one, two] = [bound.full('org-d'), bound.full('org-d')];
    expect(await settled(one)).toBe(false);
    expect(asked).toHaveLength(2);
    asked[1]!.answer({ rows: 0, bytes: 0 });
    expect(await one).toBeUndefined();
    expect(await two).toBeUndefined();
  });

  it('reports a failed measure once, however many deliveries waited for it', async () => {
    let now = 0;
    const { asked, measureBacklog } = controlledMeasures();
    const failures: string[] = [];
    const bound = createBacklogBound({ db: NO_DB, maxDeliveries: 1, maxBytes: 1_000, refreshMs: 1000, measureBacklog, now: () => now, onMeasureError: (organizationId) => failures.push(organizationId) });
    const first = bound.full('org-e');
    asked[0]!.answer({ rows: 1, bytes: 1 });
    await first;
    now = 5000;
    const waiting = [bound.full('org-e'), bound.full('org-e'), bound.full('org-e')];
    expect(asked).toHaveLength(2);
    asked[1]!.fail(new Error('statement timeout'));
    for (const answer of waiting) expect(await answer).toMatchObject({ bound: 'webhooks.maxBacklogDeliveries', backlog: { rows: 1 } });
    expect(failures).toEqual(['org-e']);
  });

  it('counts what this process stored since the measure; a measure failing keeps the last one and is reported', async () => {
    let now = 0;
    const { asked, measureBacklog } = controlledMeasures();
    const failures: string[] = [];
    const bound = createBacklogBound({ db: NO_DB, maxDeliveries: 100, maxBytes: 25, refreshMs: 1000, measureBacklog, now: () => now, onMeasureError: (organizationId, error) => failures.push(`${organizationId}: ${(error as Error).message}`) });
    const first = bound.full('org-b');
    asked[0]!.answer({ rows: 1, bytes: 10 });
    expect(await first).toBeUndefined();
    bound.stored('org-b', 10);
    // Stale and below the bound: answered at once; the measure beside it fails, reported.
    now = 2000;
    expect(await bound.full('org-b')).toBeUndefined();
    asked[1]!.fail(new Error('connection terminated'));
    for (let i = 0; i < 5; i++) await Promise.resolve();
    expect(failures).toEqual(['org-b: connection terminated']);
    // Judged by the last measure and what was stored since; the next delivery measures again.
    bound.stored('org-b', 10);
    const next = bound.full('org-b');
    expect(asked).toHaveLength(3);
    // Full and stale: the refusal waits for that measure; it fails too, so the last one answers.
    expect(await settled(next)).toBe(false);
    asked[2]!.fail(new Error('connection terminated'));
    expect(await next).toMatchObject({ bound: 'webhooks.maxBacklogBytes', limit: 25, backlog: { rows: 3, bytes: 30 } });
    expect(failures).toHaveLength(2);
  });

  it("an organization's first measure failing throws to every caller waiting for it; the next delivery measures again", async () => {
    const { asked, measureBacklog } = controlledMeasures();
    const bound = createBacklogBound({ db: NO_DB, maxDeliveries: 1, maxBytes: 1_000, measureBacklog, now: () => 0 });
    const first = bound.full('org-c');
    const second = bound.full('org-c');
    expect(asked).toHaveLength(1);
    asked[0]!.fail(new Error('database down'));
    await expect(first).rejects.toThrow('database down');
    await expect(second).rejects.toThrow('database down');
    bound.stored('org-c', 5);
    const third = bound.full('org-c');
    expect(asked).toHaveLength(2);
    asked[1]!.answer({ rows: 0, bytes: 0 });
    expect(await third).toBeUndefined();
  });
});
