import type { Db } from '../../lib/db/index.ts';
import { connectionBacklog, type ConnectionBacklog } from '../../lib/db/repositories/deliveries.ts';

/** A connection's backlog is at or past one of the bounds: its deliveries are refused (429) until the relay has started enough of them. */
export interface BacklogFull {
  /** The config key of the bound reached, and its value. */
  bound: 'webhooks.maxBacklogDeliveries' | 'webhooks.maxBacklogBytes';
  limit: number;
  backlog: ConnectionBacklog;
  /** Found so by a measure this call made (at most one per connection per refresh: worth a log line), not by an earlier one. */
  measured: boolean;
}

export interface BacklogBound {
  /** Whether `connectionId`'s unstarted backlog is at or past a bound (undefined: below both). */
  full(connectionId: string): Promise<BacklogFull | undefined>;
  /** A delivery of `connectionId` was stored by this process: counted until the next measure. */
  stored(connectionId: string, bytes: number): void;
}

interface Measure extends ConnectionBacklog {
  /** performance.now() of the measure's answer; rows and bytes include what this process stored since. */
  at: number;
  pending?: Promise<Measure>;
}

/**
 * The bound on a connection's stored deliveries not started yet (count and bytes), so that a
 * tenant sending signed deliveries faster than the relays start them (it controls its GitLab,
 * Bitbucket DC or Azure DevOps Server) fills neither the intake table's disk nor every relay's
 * rounds: past it its deliveries are answered 429, nothing stored, and only its own hook is
 * refused. Measured from the database (connectionBacklog: every replica's rows), at most once per
 * `refreshMs` plus 1 ms per 10 rows measured (a backlog near the default bound is measured about
 * every 11 s: its ~60-100 ms read stays under 1 % of a core), with what this process stored since
 * counted on top; another replica's deliveries since the measure are not, nor the starts since,
 * so the bound holds within what the replicas store between two measures.
 */
export function createBacklogBound(options: { db: Db; maxDeliveries: number; maxBytes: number; refreshMs?: number; maxConnections?: number }): BacklogBound {
  const refreshMs = options.refreshMs ?? 1000;
  const maxConnections = options.maxConnections ?? 10_000;
  const measures = new Map<string, Measure>();
  const measure = (connectionId: string): Promise<Measure> => {
    const pending = connectionBacklog(options.db, connectionId, options.maxDeliveries).then(
      (backlog) => {
        const measured = { ...backlog, at: performance.now() };
        // Re-inserted, so the map's first entries are the longest unmeasured (dropped first past maxConnections).
        measures.delete(connectionId);
        measures.set(connectionId, measured);
        if (measures.size > maxConnections) measures.delete(measures.keys().next().value!);
        return measured;
      },
      (error) => {
        const last = measures.get(connectionId);
        if (last) delete last.pending;
        throw error;
      },
    );
    const last = measures.get(connectionId);
    if (last) last.pending = pending;
    else measures.set(connectionId, { rows: 0, bytes: 0, at: -Infinity, pending });
    return pending;
  };
  return {
    async full(connectionId) {
      let current = measures.get(connectionId);
      let measured = false;
      if (!current || performance.now() - current.at > refreshMs + current.rows / 10) {
        measured = !current?.pending;
        current = await (current?.pending ?? measure(connectionId));
      }
      const backlog = { rows: current.rows, bytes: current.bytes };
      if (current.rows >= options.maxDeliveries) return { bound: 'webhooks.maxBacklogDeliveries', limit: options.maxDeliveries, backlog, measured };
      if (current.bytes >= options.maxBytes) return { bound: 'webhooks.maxBacklogBytes', limit: options.maxBytes, backlog, measured };
      return undefined;
    },
    stored(connectionId, bytes) {
      const current = measures.get(connectionId);
      if (!current) return;
      current.rows += 1;
      current.bytes += bytes;
    },
  };
}
