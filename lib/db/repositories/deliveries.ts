import { CompiledQuery, sql, type Kysely, type Transaction } from 'kysely';
import type { NormalizedEvent, Provider } from '../../domain.ts';
import { toStorableText } from '../../text.ts';
import { contentWrite } from '../errors.ts';
import { runSizedWrite, SIZED_WRITE_FROM_BYTES } from '../index.ts';
import type { Database, DeliveryStart } from '../schema.ts';
import { prepared } from '../prepared.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** A verified, normalized delivery as the receiver stores it for its event workflow. */
export interface StoredDelivery {
  provider: Provider;
  deliveryId: string;
  /** The connection whose own hook delivered (its deliveries are its own, whatever their id). */
  connectionId?: string;
  events: NormalizedEvent[];
  /** `events` as serializeEvents wrote them, when the caller has them already (the receiver, which bounds their size). */
  eventsJson?: string;
  installationId?: string;
  instanceUrl?: string;
  /** What the intake relay needs to start the run (absent when the caller starts it itself). */
  start?: DeliveryStart;
}

/**
 * The receiver's one statement per delivery, written out once: built with the query builder it was
 * parsed and compiled again for every delivery, about a tenth of the acknowledging thread's CPU.
 */
const STORE_DELIVERY = `insert into "webhook_deliveries" ("provider", "delivery_id", "connection_id", "events", "installation_id", "instance_url", "start")
  values ($1, $2, $3, $4, $5, $6, $7)
  on conflict on constraint "webhook_deliveries_key" do nothing`;

/**
 * A redelivery of a row an API from before the intake relay stored (no `start`) gives it one
 * (storeDelivery). An UPDATE, run only when the INSERT stored nothing: it tests its condition before
 * it locks, so a row a relay's claim holds (which always has a `start`) is passed over at once. The
 * INSERT's `do update … where` would lock the conflicting row whatever its condition, and wait for
 * the claim (a redelivery answered 503 after the lock deadline, and the row locked on every
 * redelivery).
 */
const GIVE_PRE_RELAY_ROW_ITS_START = `update "webhook_deliveries" set "start" = $4
  where "provider" = $1 and "delivery_id" = $2 and "connection_id" is not distinct from $3::uuid and "start" is null and "started_at" is null`;

/**
 * The events as stored (JSON.stringify of the list), or undefined once they pass `maxBytes` bytes
 * of UTF-8 (what PostgreSQL receives, parses and stores; a name of 3-byte characters is three
 * times its length): written 256 events at a time, each chunk measured with Buffer.byteLength, so
 * a delivery whose events would make a string of gigabytes (each of a push's many ref changes
 * repeats its repository's name and its sender) stops near the limit instead of failing
 * PostgreSQL's (jsonb: 255 MB) or V8's (~512 M characters) later. As fast as one JSON.stringify
 * (10,000 events: 7-8 ms of CPU either way; one call per event took 21 ms).
 */
export function serializeEvents(events: readonly NormalizedEvent[], maxBytes: number): string | undefined {
  if (events.length <= SERIALIZED_AT_ONCE) {
    const json = JSON.stringify(events);
    // A character is at least one byte: longer than the limit, it is over it without counting.
    return json.length <= maxBytes && Buffer.byteLength(json, 'utf8') <= maxBytes ? json : undefined;
  }
  let json = '[';
  // Bytes of the chunks measured, and the chunks not measured yet: a chunk is measured only once
  // three bytes a character could take what is written past the limit (measuring ~10 MB of
  // 3-byte names costs ~60 ms, twice the chunks' own writing).
  let bytes = 2; // the brackets
  let pending: string[] = [];
  let pendingLength = 0;
  for (let start = 0; start < events.length; start += SERIALIZED_AT_ONCE) {
    const chunk = (start === 0 ? '' : ',') + JSON.stringify(events.slice(start, start + SERIALIZED_AT_ONCE)).slice(1, -1);
    pending.push(chunk);
    pendingLength += chunk.length;
    if (bytes + 3 * pendingLength > maxBytes) {
      for (const measured of pending) bytes += Buffer.byteLength(measured, 'utf8');
      [pending, pendingLength] = [[], 0];
      if (bytes > maxBytes) return undefined;
    }
    json += chunk;
  }
  return `${json}]`;
}

const SERIALIZED_AT_ONCE = 256;

/** A delivery to store: its events, or only their JSON (the receiver of a large body never holds the events, only their JSON made on a thread). */
export type DeliveryToStore = Omit<StoredDelivery, 'events' | 'eventsJson'> & ({ events: NormalizedEvent[]; eventsJson?: string } | { events?: undefined; eventsJson: string });

/**
 * Stores a delivery once: a redelivery (same provider, connection and delivery id) keeps the row
 * already there. Returns whether this call stored it. One exception: a row an API from before the
 * intake relay stored (no `start`: it started the run itself, and answered 503 when that start
 * failed) gains the redelivery's `start`, so a relay claims it (a run that did start is found
 * there: marked started) and this call counts as storing it; otherwise nothing would ever start it
 * (no relay claims a row without `start`). Only a redelivery (the INSERT storing nothing) makes that
 * second statement, and it writes only such a row, never waiting for a row a relay holds. PostgreSQL refusing the INSERT for the
 * delivery's content (lib/db/errors.ts: a value it cannot hold, the connection's row gone) is a
 * ContentRefusedError; the connection is taken from the pool first, so a failed connect (whatever
 * its SQLSTATE) is thrown as it is, never taken for the delivery's fault.
 */
export async function storeDelivery(db: Executor, delivery: DeliveryToStore): Promise<boolean> {
  const eventsJson = delivery.eventsJson ?? JSON.stringify(delivery.events);
  const query = CompiledQuery.raw(STORE_DELIVERY, [
    delivery.provider,
    delivery.deliveryId,
    delivery.connectionId ?? null,
    eventsJson,
    delivery.installationId ?? null,
    delivery.instanceUrl ?? null,
    delivery.start ? JSON.stringify(delivery.start) : null,
  ]);
  let stored: boolean;
  if (db.isTransaction) {
    const result = await contentWrite(() => db.executeQuery(query), { foreignKey: true });
    stored = Number(result.numAffectedRows ?? 0n) > 0;
  } else {
    // Its time grows with the events' bytes (50 MiB at most by default: seconds): the API pool's
    // statement deadline grows with them (runSizedWrite), or a large delivery would be cancelled on
    // every redelivery. Counted only when it may matter (a character is 1 to 3 bytes of UTF-8).
    const bytes = eventsJson.length * 3 < SIZED_WRITE_FROM_BYTES ? eventsJson.length : Buffer.byteLength(eventsJson, 'utf8');
    stored = (await contentWrite(() => runSizedWrite(db, query, bytes), { foreignKey: true })) > 0;
  }
  if (stored || !delivery.start) return stored;
  const given = await db.executeQuery(
    CompiledQuery.raw(GIVE_PRE_RELAY_ROW_ITS_START, [delivery.provider, delivery.deliveryId, delivery.connectionId ?? null, JSON.stringify(delivery.start)]),
  );
  return Number(given.numAffectedRows ?? 0n) > 0;
}

export async function loadDelivery(db: Executor, key: { provider: Provider; deliveryId: string; connectionId?: string }): Promise<StoredDelivery | undefined> {
  const { provider, deliveryId, connectionId } = key;
  const {
    rows: [row],
  } = await (connectionId ? LOAD_DELIVERY.ofConnection(db, { provider, deliveryId, connectionId }) : LOAD_DELIVERY.ofNoConnection(db, { provider, deliveryId }));
  if (!row) return undefined;
  return {
    provider,
    deliveryId,
    ...(connectionId ? { connectionId } : {}),
    events: row.events,
    ...(row.installation_id ? { installationId: row.installation_id } : {}),
    ...(row.instance_url ? { instanceUrl: row.instance_url } : {}),
  };
}

/** loadDelivery's statement (one for a connection's hook, one for GitHub's App or a legacy hook): it runs for every delivery. */
const loadDeliveryRow = (db: Kysely<Database>, p: { provider: Provider; deliveryId: string }) =>
  db.selectFrom('webhook_deliveries').select(['events', 'installation_id', 'instance_url']).where('provider', '=', p.provider).where('delivery_id', '=', p.deliveryId);

const LOAD_DELIVERY = {
  ofConnection: prepared((db, p: { provider: Provider; deliveryId: string; connectionId: string }) => loadDeliveryRow(db, p).where('connection_id', '=', p.connectionId)),
  ofNoConnection: prepared((db, p: { provider: Provider; deliveryId: string }) => loadDeliveryRow(db, p).where('connection_id', 'is', null)),
};

/** An organization's deliveries (its connections' own hooks') stored and not started yet: how many, and the bytes their events take on disk. */
export interface OrganizationBacklog {
  rows: number;
  bytes: number;
}

/**
 * The receivers' bound on an organization's unstarted backlog (webhooks.maxBacklogDeliveries,
 * maxBacklogBytes), over its connections' own hooks, is measured here: at most `cap` of its
 * unstarted rows are read (the index webhook_deliveries_connection_backlog, migration
 * 2026-12-07T2300, once per connection: at most 50), so a backlog past the bound costs what the
 * bound does, ~1 ms per 1,000 rows. A pre-relay pod's rows (`start` null) are not
 * counted: no relay starts them, retention removes them from their receipt. Bytes are pg_column_size of the stored events
 * (compressed, as on disk; read from the row's header, a large value never fetched whole).
 */
export async function organizationBacklog(db: Executor, organizationId: string, cap: number): Promise<OrganizationBacklog> {
  const {
    rows: [row],
  } = await db.executeQuery<{ rows: number; bytes: string }>(CompiledQuery.raw(ORGANIZATION_BACKLOG, [organizationId, Math.max(1, Math.floor(cap))]));
  return { rows: row?.rows ?? 0, bytes: Number(row?.bytes ?? 0) };
}

const ORGANIZATION_BACKLOG = `select count(*)::int as rows, coalesce(sum(pg_column_size(events)), 0)::bigint as bytes
  from (select events from webhook_deliveries
    where connection_id in (select id from connections where organization_id = $1) and started_at is null and start is not null limit $2) backlog`;

/**
 * Removes up to `limit` deliveries whose retention is over, oldest first; returns how many. The
 * retention (`retentionDays`, by the database's clock, so no worker's clock moves it) counts from
 * the row's start, not its receipt: a row that waited for its run (Temporal refusing it, a task
 * queue no relay served, a long outage) gets the whole retention after it finally starts for its
 * run to read it. An unstarted row is still owed its run and is never removed, except one stored
 * without start information (`start` null: an API from before the intake relay, during a rolling
 * upgrade, which started the run itself right after storing it): it counts from its receipt.
 * Read through the received_at index (a row starts after its receipt, so a row past its retention
 * was received before the cutoff too).
 */
export async function deleteDeliveriesPastRetention(db: Executor, retentionDays: number, limit: number): Promise<number> {
  const cutoff = sql<Date>`now() - ${retentionDays} * interval '1 day'`;
  const result = await db
    .deleteFrom('webhook_deliveries')
    .where(
      sql<string>`ctid`,
      'in',
      db
        .selectFrom('webhook_deliveries')
        .select(sql<string>`ctid`.as('ctid'))
        .where('received_at', '<', cutoff)
        .where((eb) => eb.or([eb('started_at', '<', cutoff), eb.and([eb('started_at', 'is', null), eb('start', 'is', null)])]))
        .orderBy('received_at')
        .limit(limit),
    )
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

/** A stored delivery whose event workflow has not been started yet. */
export interface PendingDelivery {
  provider: Provider;
  deliveryId: string;
  receivedAt: Date;
  /** How long ago it was acknowledged when it was claimed, by the database's clock (ms). */
  ageMs: number;
  start: DeliveryStart;
  /** The connection whose own hook delivered it (absent: GitHub, or a legacy hook). */
  connectionId?: string;
  /** Starts of it that failed on their own so far (a round of a Temporal outage, where every start failed for want of an answer, not counted). */
  attempts: number;
}

/**
 * What became of one start: the run is there, or the start failed (`error`: short, no secret) and
 * the row is tried again after `retryInMs` (null: at the relay's next round; such a failure, Temporal
 * unreachable, is recorded as the row's last error but not counted in its `attempts`).
 */
export type StartOutcome = { started: true } | { started: false; error: string; retryInMs: number | null };

/**
 * The intake relay's own connection to PostgreSQL (a `pg.Client`): the rows a round claims stay
 * locked by its open transaction while their runs start, and are free again the moment the
 * transaction ends: the connection closed (the relay's process killed included), or, for a relay
 * gone silent without a close, the server's idle_in_transaction_session_timeout the relay sets. A session of its own, not the pool's: the
 * claim and the outcome each go as one simple-protocol query of two statements (`BEGIN; SELECT …
 * FOR UPDATE SKIP LOCKED` and `UPDATE …; COMMIT`), one round trip each, which Kysely's
 * one-statement prepared queries cannot send, and a round holds no connection the receivers need.
 */
export interface RelaySession {
  query(text: string): Promise<unknown>;
  escapeLiteral(value: string): string;
}

interface ClaimedRow {
  provider: Provider;
  delivery_id: string;
  connection_id: string | null;
  received_at: Date;
  age_ms: number;
  start: DeliveryStart;
  attempts: number;
  row: string;
  /** Whose turn the row was taken in (INTAKE_TURN_KEY; the rows put off after a failure: one turn of their own). */
  turn_key: string;
  /** The rows a turn took at most this round, and how many turns were waiting (more than a round's rows: not all were taken). */
  share: number;
  turns: number;
}

/** The results of a multi-statement simple query, one per statement (pg gives one result, not a list, for a single statement). */
const resultsOf = (result: unknown) => (Array.isArray(result) ? result : [result]) as { rows: unknown[] }[];

/**
 * Whose turn an unstarted row waits for: the one organization its delivery concerns (every
 * delivery of a connection's own hook; a GitHub App's or legacy hook's concerning one), else the
 * connection whose hook delivered it, else its provider (a GitHub delivery for several
 * organizations' repositories). The index webhook_deliveries_due (migration 2026-12-07T2300) is on
 * this very expression: written differently, the claim would not use it.
 */
const INTAKE_TURN_KEY = `coalesce(start->>'organizationId', connection_id::text, provider)`;
/** The turn of the rows put off after a failed start and due again (never an organization's key: those are ids or provider names). */
const RETRY_TURN = '(retries)';

/**
 * The claim: up to about `limit` due rows of `taskQueue`, taken in turns across organizations, with
 * their row locks (SKIP LOCKED: another relay's rows are passed over, never waited for).
 * - The organizations with due rows are found one index descent each (a recursive walk of
 *   webhook_deliveries_due, never reading one organization's backlog through); the `limit` whose
 *   oldest row is oldest take a turn, and each turn takes that organization's oldest
 *   `ceil(limit / turns)` rows. One organization's backlog of any size thus delays another's
 *   delivery by at most one round: every organization with a due row is in the next round (or,
 *   with more organizations waiting than a round's rows, in the rounds of the oldest first).
 * - Rows put off after a failed start that are due again take one turn of the same share, read
 *   from webhook_deliveries_retry_due: only due rows (not every row put off).
 * Rows come back in turns: each organization's oldest first, then each one's second, and so on.
 */
export function claimStatement(taskQueue: string, limit: number): string {
  const due = `started_at is null and next_attempt_at is null and start->>'taskQueue' = ${taskQueue}`;
  const retryDue = `started_at is null and next_attempt_at is not null and next_attempt_at <= now() and start->>'taskQueue' = ${taskQueue}`;
  const columns = `provider, delivery_id, connection_id, received_at, start, attempts, ctid::text as row,
             extract(epoch from clock_timestamp() - received_at)::float8 * 1000 as age_ms`;
  return `with recursive heads as (
      (select ${INTAKE_TURN_KEY} as turn_key, received_at from webhook_deliveries
       where ${due} order by ${INTAKE_TURN_KEY}, received_at limit 1)
      union all
      select following.turn_key, following.received_at from heads cross join lateral (
        select ${INTAKE_TURN_KEY} as turn_key, received_at from webhook_deliveries
        where ${due} and ${INTAKE_TURN_KEY} > heads.turn_key
        order by ${INTAKE_TURN_KEY}, received_at limit 1) following
    ),
    turns as (select turn_key from heads order by received_at limit ${limit}),
    counted as (select (select count(*) from heads)::int as turns,
                       greatest(1, ceil(${limit}::numeric / greatest((select count(*) from turns) + (exists (select from webhook_deliveries where ${retryDue}))::int, 1)))::int as share),
    fresh as (
      select taken.* from turns cross join lateral (
        select ${columns}, turns.turn_key from webhook_deliveries
        where ${due} and ${INTAKE_TURN_KEY} = turns.turn_key
        order by received_at limit (select share from counted)
        for update skip locked) taken
    ),
    retries as (
      select ${columns}, '${RETRY_TURN}'::text as turn_key from webhook_deliveries
      where ${retryDue}
      order by next_attempt_at limit (select share from counted)
      for update skip locked
    ),
    claimed as (select * from fresh union all select * from retries)
    select claimed.*, counted.share, counted.turns from claimed cross join counted
    order by row_number() over (partition by claimed.turn_key order by claimed.received_at), claimed.received_at`;
}

/**
 * Locks about `limit` unstarted deliveries for `taskQueue` that are due (never failed, or past
 * their `next_attempt_at`), in turns across organizations and oldest first within each
 * (claimStatement), skipping rows another relay holds, and hands them to `startAll`, which says
 * for each one whether its run started. Then, in one statement with the commit, the started ones
 * are marked started and the failed ones carry one more attempt, the error and when to try again.
 * Several relays (one per API replica) never start the same row twice. `more`: a turn took its
 * whole share, or organizations were left for the next round: rows may be due already, claim again
 * without waiting. Two round trips a round: the claim, then the outcomes with the commit (or the
 * commit alone when nothing was due).
 *
 * `claimIdleTimeoutMs`: PostgreSQL's `idle_in_transaction_session_timeout` for this claim's
 * transaction alone (`SET LOCAL`, in the claim's round trip): a relay gone silent mid-round has its
 * transaction, and the rows' locks, ended by the server after that long. Local to the transaction,
 * so behind a transaction-pooling PgBouncer it is on the server connection that holds the claim and
 * on no other (a session's `SET` stays on whichever server connection ran it, and is missing from
 * the next). Omitted (database.serverDeadlines: false, a pooler that refuses SET): no SET at all.
 */
export async function startPendingDeliveries(
  session: RelaySession,
  taskQueue: string,
  limit: number,
  startAll: (pending: PendingDelivery[]) => Promise<StartOutcome[]>,
  claimIdleTimeoutMs?: number,
): Promise<{ locked: number; started: number; more: boolean }> {
  try {
    const idle = claimIdleTimeoutMs === undefined ? '' : `set local idle_in_transaction_session_timeout = ${Math.max(1, Math.round(claimIdleTimeoutMs))};\n    `;
    const claim = resultsOf(await session.query(`begin;\n    ${idle}${claimStatement(session.escapeLiteral(taskQueue), Math.max(1, Math.floor(limit)))}`));
    const rows = claim[claim.length - 1]!.rows as ClaimedRow[];
    if (rows.length === 0) {
      await session.query('commit');
      return { locked: 0, started: 0, more: false };
    }
    const pending = rows.map((r): PendingDelivery => ({
      provider: r.provider,
      deliveryId: r.delivery_id,
      receivedAt: r.received_at,
      ageMs: r.age_ms,
      start: r.start,
      attempts: r.attempts,
      ...(r.connection_id ? { connectionId: r.connection_id } : {}),
    }));
    const outcomes = await startAll(pending);
    // The rows are locked, so their physical ids stand until the transaction ends; the delivery id is checked as well.
    const recorded = rows.flatMap((r, i) => {
      const outcome = outcomes[i];
      if (!outcome) return [];
      // The reason is mended as a delivery's text is (a NUL or half a surrogate pair in it would make
      // PostgreSQL refuse this whole statement, round after round, and the rows with it).
      return [outcome.started ? { tid: r.row, delivery_id: r.delivery_id, started: true } : { tid: r.row, delivery_id: r.delivery_id, started: false, error: toStorableText(outcome.error), retry_in_ms: outcome.retryInMs }];
    });
    // clock_timestamp(), not now(): the moment the starts returned, not the transaction's beginning.
    // A failure due again at the next round (retryInMs null: Temporal did not answer at all) is not
    // the row's own: it is not counted in `attempts`, from which the row's own delay is worked out.
    await session.query(`
      update webhook_deliveries w
      set started_at = case when f.started then clock_timestamp() end,
          attempts = w.attempts + case when f.started or f.retry_in_ms is null then 0 else 1 end,
          last_error = case when f.started then w.last_error else f.error end,
          next_attempt_at = case when f.started then null else now() + f.retry_in_ms * interval '1 millisecond' end
      from jsonb_to_recordset(${session.escapeLiteral(JSON.stringify(recorded))}::jsonb)
        as f(tid tid, delivery_id text, started boolean, error text, retry_in_ms bigint)
      where w.ctid = f.tid and w.delivery_id = f.delivery_id;
      commit`);
    const perTurn = new Map<string, number>();
    for (const r of rows) perTurn.set(r.turn_key, (perTurn.get(r.turn_key) ?? 0) + 1);
    const more = rows[0]!.turns > Math.max(1, Math.floor(limit)) || [...perTurn.values()].some((n) => n >= rows[0]!.share);
    return { locked: rows.length, started: recorded.filter((r) => r.started).length, more };
  } catch (error) {
    // The claim's locks go with the transaction. The rollback is sent, not waited for: after a
    // statement that got no answer (the client's read deadline) it would wait out a deadline of its
    // own on the same silent connection, which the caller drops anyway; a session still sound runs
    // it before its next statement (pg sends a session's statements in order).
    void session.query('rollback').catch(() => {});
    throw error;
  }
}

/**
 * The intake table's backlog: deliveries acknowledged whose runs have not started yet. Rows stored
 * without start information (an API from before the intake relay, during a rolling upgrade: it
 * started their runs itself) are not in it; retention removes them (deleteDeliveriesPastRetention).
 */
export interface IntakeBacklog {
  /** Rows not started yet, whatever their task queue. */
  pending: number;
  /** When the oldest of them was acknowledged, and how long ago that is (by the database's clock). */
  oldestReceivedAt?: Date;
  oldestAgeSeconds?: number;
  /** Those of them whose start failed at least once (Temporal unreachable, or refusing them): a last error recorded. */
  failing: number;
  /** The oldest failing row: its run, how often it failed on its own (0: only for want of an answer), why last, and when it is tried again. */
  oldestFailure?: { provider: Provider; deliveryId: string; attempts: number; lastError: string; nextAttemptAt?: Date };
  /** Pending rows per task queue (a relay starts only its own deployment's; rows of a queue no deployment serves any more wait here). */
  byTaskQueue: Record<string, number>;
}

/**
 * Deliveries acknowledged but not yet handed to Temporal: how many, since when, how many failing.
 * Cheap (the partial backlog index), for /readyz and the metrics.
 */
export async function intakeBacklog(db: Executor): Promise<IntakeBacklog> {
  const [totals, queues, failure] = await Promise.all([
    db
      .selectFrom('webhook_deliveries')
      .select(({ fn }) => [
        fn.countAll<string>().as('pending'),
        fn.min('received_at').as('oldest'),
        sql<number | null>`extract(epoch from now() - min(received_at))::float8`.as('oldest_age'),
        sql<string>`count(*) filter (where last_error is not null)`.as('failing'),
      ])
      .where('started_at', 'is', null)
      .where('start', 'is not', null)
      .executeTakeFirstOrThrow(),
    db
      .selectFrom('webhook_deliveries')
      .select(({ fn }) => [sql<string | null>`start->>'taskQueue'`.as('task_queue'), fn.countAll<string>().as('pending')])
      .where('started_at', 'is', null)
      .where('start', 'is not', null)
      .groupBy(sql`start->>'taskQueue'`)
      .execute(),
    db
      .selectFrom('webhook_deliveries')
      .select(['provider', 'delivery_id', 'attempts', 'last_error', 'next_attempt_at'])
      .where('started_at', 'is', null)
      .where('start', 'is not', null)
      .where('last_error', 'is not', null)
      .orderBy('received_at')
      .limit(1)
      .executeTakeFirst(),
  ]);
  return {
    pending: Number(totals.pending),
    ...(totals.oldest ? { oldestReceivedAt: totals.oldest as Date, oldestAgeSeconds: Math.round(Number(totals.oldest_age) * 1000) / 1000 } : {}),
    failing: Number(totals.failing),
    ...(failure
      ? {
          oldestFailure: {
            provider: failure.provider,
            deliveryId: failure.delivery_id,
            attempts: failure.attempts,
            lastError: failure.last_error ?? '',
            ...(failure.next_attempt_at ? { nextAttemptAt: failure.next_attempt_at } : {}),
          },
        }
      : {}),
    byTaskQueue: Object.fromEntries(queues.map((q) => [q.task_queue ?? '(none)', Number(q.pending)])),
  };
}
