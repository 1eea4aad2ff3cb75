import type { Db } from '../../lib/db/index.ts';
import { organizationBacklog, type OrganizationBacklog } from '../../lib/db/repositories/deliveries.ts';

/** An organization's backlog is at or past one of the bounds: its connections' deliveries are refused (503) until the relays have started enough of them. */
export interface BacklogFull {
  /** The config key of the bound reached, and its value. */
  bound: 'webhooks.maxBacklogDeliveries' | 'webhooks.maxBacklogBytes';
  limit: number;
  backlog: OrganizationBacklog;
  /** The first answer from its measure found full (at most one per organization per measure: worth a log line). */
  measured: boolean;
}

export interface BacklogBound {
  /** Whether `organizationId`'s unstarted backlog is at or past a bound (undefined: below both). */
  full(organizationId: string): Promise<BacklogFull | undefined>;
  /** A delivery of one of `organizationId`'s connections was stored by this process: counted until the next measure. */
  stored(organizationId: string, bytes: number): void;
}

interface Measure extends OrganizationBacklog {
  /** now() of the measure's answer; rows and bytes include what this process stored since. */
  at: number;
  /** A measure under way (at most one per organization). */
  pending?: Promise<Measure>;
  /** Whether a call has answered a full bound from this measure yet (one log line per measure). */
  reported?: boolean;
}

/**
 * The bound on an organization's stored deliveries not started yet (count and bytes, over its
 * connections' own hooks: per organization, not per connection, as a tenant may make 50
 * connections), so that a tenant sending signed deliveries faster than the relays start them (it
 * controls its GitLab, Bitbucket DC or Azure DevOps Server) does not fill the intake table's disk:
 * past it its deliveries are answered 503 with Retry-After, nothing stored, and only its own hooks
 * are refused. Measured from the database (organizationBacklog: every replica's rows), at most once per
 * `refreshMs` plus 1 ms per 10 rows measured (a backlog near the default bound is measured about
 * every 100 s: its ~60-100 ms read stays under 0.1 % of a core), with what this process stored since
 * counted on top; another replica's deliveries since the measure are not, nor the starts since,
 * so the bound holds within what the replicas store between two measures.
 *
 * An organization's first measure is waited for, and so is a fresh one when the last, stale, says
 * full (the relays may have drained it since: a refusal on an old count would be a needless 5xx).
 * Otherwise, past its refresh, a delivery is answered from the last measure while the next one runs
 * beside it, so no acknowledgement that is taken waits on the measure's query (up to ~100 ms near
 * the bound); a measure that fails keeps the last one (and what this process stored since) and is
 * tried again by the next delivery, reported through `onMeasureError`.
 */
export function createBacklogBound(options: {
  db: Db;
  maxDeliveries: number;
  maxBytes: number;
  refreshMs?: number;
  maxOrganizations?: number;
  /** A measure made in the background failed (the deliveries are judged by the last one meanwhile). */
  onMeasureError?: (organizationId: string, error: unknown) => void;
  /** For tests: the measure (organizationBacklog on `db` by default) and the clock (performance.now). */
  measureBacklog?: (organizationId: string, cap: number) => Promise<OrganizationBacklog>;
  now?: () => number;
}): BacklogBound {
  const refreshMs = options.refreshMs ?? 1000;
  const maxOrganizations = options.maxOrganizations ?? 10_000;
  const now = options.now ?? (() => performance.now());
  const measureBacklog = options.measureBacklog ?? ((organizationId, cap) => organizationBacklog(options.db, organizationId, cap));
  const measures = new Map<string, Measure>();
  const isFull = (backlog: OrganizationBacklog) => backlog.rows >= options.maxDeliveries || backlog.bytes >= options.maxBytes;
  const measure = (organizationId: string): Promise<Measure> => {
    const pending = measureBacklog(organizationId, options.maxDeliveries).then(
      (backlog) => {
        const measured = { ...backlog, at: now() };
        // Re-inserted, so the map's first entries are the longest unmeasured (dropped first past maxOrganizations).
        measures.delete(organizationId);
        measures.set(organizationId, measured);
        if (measures.size > maxOrganizations) measures.delete(measures.keys().next().value!);
        return measured;
      },
      (error: unknown) => {
        const last = measures.get(organizationId);
        if (last?.pending === pending) delete last.pending;
        throw error;
      },
    );
    const last = measures.get(organizationId);
    if (last) last.pending = pending;
    else measures.set(organizationId, { rows: 0, bytes: 0, at: -Infinity, pending });
    return pending;
  };
  return {
    async full(organizationId) {
      let current = measures.get(organizationId);
      if (!current || current.at === -Infinity) {
        // Never measured: the first answer waits for the first measure (failing, it throws to the caller).
        current = await (current?.pending ?? measure(organizationId));
      } else if (now() - current.at > refreshMs + current.rows / 10) {
        let next = current.pending;
        if (!next) {
          next = measure(organizationId);
          // Reported once, by the delivery that started it, however many wait for it.
          next.catch((error: unknown) => options.onMeasureError?.(organizationId, error));
        }
        if (isFull(current)) {
          // A stale measure that refuses waits for the next: the relays may have drained the backlog
          // since (after a Temporal outage, ~100 s near the default bound), and a delivery refused on
          // an old count is a 5xx the provider counts against its hook. One that takes does not wait.
          // A measure that fails leaves the last one to answer.
          current = await next.catch(() => current!);
        }
      }
      if (!isFull(current)) return undefined;
      const measured = !current.reported;
      current.reported = true;
      const backlog = { rows: current.rows, bytes: current.bytes };
      if (current.rows >= options.maxDeliveries) return { bound: 'webhooks.maxBacklogDeliveries', limit: options.maxDeliveries, backlog, measured };
      return { bound: 'webhooks.maxBacklogBytes', limit: options.maxBytes, backlog, measured };
    },
    stored(organizationId, bytes) {
      const current = measures.get(organizationId);
      if (!current || current.at === -Infinity) return;
      current.rows += 1;
      current.bytes += bytes;
    },
  };
}
