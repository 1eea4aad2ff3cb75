import type { Db } from '../../lib/db/index.ts';
import { organizationBacklog, type OrganizationBacklog } from '../../lib/db/repositories/deliveries.ts';

/** An organization's backlog is at or past one of the bounds: its connections' deliveries are refused (503) until the relays have started enough of them. */
export interface BacklogFull {
  /** The config key of the bound reached, and its value. */
  bound: 'webhooks.maxBacklogDeliveries' | 'webhooks.maxBacklogBytes';
  limit: number;
  backlog: OrganizationBacklog;
  /** Found so by a measure this call made (at most one per organization per refresh: worth a log line), not by an earlier one. */
  measured: boolean;
}

export interface BacklogBound {
  /** Whether `organizationId`'s unstarted backlog is at or past a bound (undefined: below both). */
  full(organizationId: string): Promise<BacklogFull | undefined>;
  /** A delivery of one of `organizationId`'s connections was stored by this process: counted until the next measure. */
  stored(organizationId: string, bytes: number): void;
}

interface Measure extends OrganizationBacklog {
  /** performance.now() of the measure's answer; rows and bytes include what this process stored since. */
  at: number;
  pending?: Promise<Measure>;
}

/**
 * The bound on an organization's stored deliveries not started yet (count and bytes, over its
 * connections' own hooks: per organization, not per connection, as a tenant may make 50
 * connections), so that a tenant sending signed deliveries faster than the relays start them (it
 * controls its GitLab, Bitbucket DC or Azure DevOps Server) does not fill the intake table's disk:
 * past it its deliveries are answered 503 with Retry-After, nothing stored, and only its own hooks
 * are refused. Measured from the database (organizationBacklog: every replica's rows), at most once per
 * `refreshMs` plus 1 ms per 10 rows measured (a backlog near the default bound is measured about
 * every 11 s: its ~60-100 ms read stays under 1 % of a core), with what this process stored since
 * counted on top; another replica's deliveries since the measure are not, nor the starts since,
 * so the bound holds within what the replicas store between two measures.
 */
export function createBacklogBound(options: { db: Db; maxDeliveries: number; maxBytes: number; refreshMs?: number; maxOrganizations?: number }): BacklogBound {
  const refreshMs = options.refreshMs ?? 1000;
  const maxOrganizations = options.maxOrganizations ?? 10_000;
  const measures = new Map<string, Measure>();
  const measure = (organizationId: string): Promise<Measure> => {
    const pending = organizationBacklog(options.db, organizationId, options.maxDeliveries).then(
      (backlog) => {
        const measured = { ...backlog, at: performance.now() };
        // Re-inserted, so the map's first entries are the longest unmeasured (dropped first past maxOrganizations).
        measures.delete(organizationId);
        measures.set(organizationId, measured);
        if (measures.size > maxOrganizations) measures.delete(measures.keys().next().value!);
        return measured;
      },
      (error) => {
        const last = measures.get(organizationId);
        if (last) delete last.pending;
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
      let measured = false;
      if (!current || performance.now() - current.at > refreshMs + current.rows / 10) {
        measured = !current?.pending;
        current = await (current?.pending ?? measure(organizationId));
      }
      const backlog = { rows: current.rows, bytes: current.bytes };
      if (current.rows >= options.maxDeliveries) return { bound: 'webhooks.maxBacklogDeliveries', limit: options.maxDeliveries, backlog, measured };
      if (current.bytes >= options.maxBytes) return { bound: 'webhooks.maxBacklogBytes', limit: options.maxBytes, backlog, measured };
      return undefined;
    },
    stored(organizationId, bytes) {
      const current = measures.get(organizationId);
      if (!current) return;
      current.rows += 1;
      current.bytes += bytes;
    },
  };
}
