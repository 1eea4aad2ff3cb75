import { sql, type Kysely, type Transaction } from 'kysely';
import type { AttachmentStatus, HookHealth, Provider } from '../../domain.ts';
import type { Database, Organization } from '../schema.ts';
import { prepared } from '../prepared.ts';
import { mayBeOrganizationId } from './organizations.ts';

type Executor = Kysely<Database> | Transaction<Database>;

export interface RecordedHook {
  providerHookId: string;
  events: string[];
}

export interface AttachmentView {
  status: AttachmentStatus;
  reason: string | null;
  hooks: RecordedHook[];
  /** The last hook-health check, if there was one. */
  hookHealth?: HookHealth & { checkedAt: Date };
}

/**
 * Why the repository's connection takes no attach now (not active, or a disconnect under way), or
 * undefined when it does. The API answers it as a 409; attach activities fail with it.
 */
export function attachRefusal(row: { connection_id: string; connection_status: string; disconnect_requested_at: Date | null }): string | undefined {
  if (row.connection_status !== 'active') return `connection ${row.connection_id} is ${row.connection_status}: attaching needs an active connection`;
  if (row.disconnect_requested_at) return `connection ${row.connection_id} is being disconnected: it takes no new attach`;
  return undefined;
}

/**
 * The organization a reference names (as findOrganization: by slug, or by id, the id winning) and
 * its cached repository `repositoryId`, with what the API needs to know about its connection, in
 * one query: an attach request's lookups before it starts the run. `repository` is undefined when
 * the organization has no such repository (another organization's is never joined).
 */
export async function findOrganizationAndRepository(db: Executor, organizationRef: string, repositoryId: string) {
  const params = { organizationRef, repositoryId };
  const {
    rows: [row],
  } = await (mayBeOrganizationId(organizationRef) ? FIND_ORGANIZATION_AND_REPOSITORY.byIdOrSlug : FIND_ORGANIZATION_AND_REPOSITORY.bySlug)(db, params);
  if (!row) return undefined;
  const organization: Organization = { id: row.organization_id, slug: row.slug, name: row.name, created_at: row.created_at };
  // A repository row always has its connection (connection_id is a foreign key, not null).
  if (row.repository_id === null || row.provider === null || row.full_name === null || row.connection_id === null || row.connection_status === null) return { organization };
  return {
    organization,
    repository: {
      id: row.repository_id,
      organization_id: row.organization_id,
      provider: row.provider,
      full_name: row.full_name,
      connection_id: row.connection_id,
      vanished_at: row.vanished_at,
      connection_status: row.connection_status,
      disconnect_requested_at: row.disconnect_requested_at,
    },
  };
}

/** findOrganizationAndRepository's statement (by slug, or by id or slug), compiled once: it runs for every attach and detach request. */
const organizationAndRepository = (db: Kysely<Database>, p: { organizationRef: string; repositoryId: string }) =>
  db
    .selectFrom('organizations as o')
    .leftJoin('repositories as r', (join) => join.onRef('r.organization_id', '=', 'o.id').on('r.id', '=', p.repositoryId))
    .leftJoin('connections as c', 'c.id', 'r.connection_id')
    .select([
      'o.id as organization_id',
      'o.slug',
      'o.name',
      'o.created_at',
      'r.id as repository_id',
      'r.provider',
      'r.full_name',
      'r.connection_id',
      'r.vanished_at',
      'c.status as connection_status',
      'c.disconnect_requested_at',
    ])
    .orderBy((eb) => eb('o.slug', '=', p.organizationRef));

const FIND_ORGANIZATION_AND_REPOSITORY = {
  bySlug: prepared((db, p: { organizationRef: string; repositoryId: string }) => organizationAndRepository(db, p).where('o.slug', '=', p.organizationRef)),
  byIdOrSlug: prepared((db, p: { organizationRef: string; repositoryId: string }) =>
    organizationAndRepository(db, p).where((eb) => eb.or([eb('o.id', '=', p.organizationRef), eb('o.slug', '=', p.organizationRef)])),
  ),
};

/** The repository and its connection's sealed credential, for activities only (each step of an attach reads it). */
export async function loadRepositoryTarget(db: Executor, organizationId: string, repositoryId: string) {
  return (await LOAD_REPOSITORY_TARGET(db, { organizationId, repositoryId })).rows[0];
}

const LOAD_REPOSITORY_TARGET = prepared((db, p: { organizationId: string; repositoryId: string }) =>
  db
    .selectFrom('repositories as r')
    .innerJoin('connections as c', 'c.id', 'r.connection_id')
    .select([
      'r.id',
      'r.organization_id',
      'r.provider',
      'r.external_id',
      'r.full_name',
      'c.id as connection_id',
      'c.base_url',
      'c.external_key',
      'c.status as connection_status',
      'c.disconnect_requested_at',
      'c.credential',
    ])
    .where('r.organization_id', '=', p.organizationId)
    .where('r.id', '=', p.repositoryId),
);

/** The attachment of a repository and its recorded hooks; undefined when it was never attached. */
export async function findAttachment(db: Executor, repositoryId: string): Promise<AttachmentView | undefined> {
  const row = await db
    .selectFrom('attachments')
    .select(['id', 'status', 'reason', 'hook_health_checked_at', 'hook_health_status', 'hook_health_reason'])
    .where('repository_id', '=', repositoryId)
    .executeTakeFirst();
  if (!row) return undefined;
  const hooks = await db
    .selectFrom('hooks')
    .select(['provider_hook_id', 'events'])
    .where('attachment_id', '=', row.id)
    .orderBy('created_at')
    .orderBy('provider_hook_id')
    .execute();
  const checked = row.hook_health_checked_at && row.hook_health_status;
  return {
    status: row.status,
    reason: row.reason,
    hooks: hooks.map((h) => ({ providerHookId: h.provider_hook_id, events: h.events })),
    ...(checked
      ? { hookHealth: { checkedAt: row.hook_health_checked_at!, status: row.hook_health_status!, ...(row.hook_health_reason ? { reason: row.hook_health_reason } : {}) } }
      : {}),
  };
}

/**
 * Records what a hook-health check found on the repository's attachment if it is attached (health is an
 * attached repository's: a sweep of one that is not attached records nothing here). Answers whether
 * it was recorded.
 */
export async function recordHookHealth(db: Executor, repositoryId: string, health: HookHealth): Promise<boolean> {
  const result = await db
    .updateTable('attachments')
    .set({ hook_health_checked_at: new Date(), hook_health_status: health.status, hook_health_reason: health.reason ?? null })
    .where('repository_id', '=', repositoryId)
    .where('status', '=', 'attached')
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

/** A page of a connection's attached repositories in id order, after `after` (the hook-health reconcile walks them). */
export async function attachedRepositoriesPage(db: Executor, connectionId: string, options: { after?: string; limit: number }): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
  let query = db
    .selectFrom('attachments as a')
    .innerJoin('repositories as r', 'r.id', 'a.repository_id')
    .select(['r.id', 'r.provider', 'r.full_name'])
    .where('r.connection_id', '=', connectionId)
    .where('a.status', '=', 'attached');
  if (options.after) query = query.where('r.id', '>', options.after);
  const rows = await query.orderBy('r.id').limit(options.limit).execute();
  return rows.map((r) => ({ repositoryId: r.id, provider: r.provider, fullName: r.full_name }));
}

/**
 * The statuses of an attachment that is not attached and whose hooks nobody is changing once no run
 * of its repository workflow carries out an attach or a detach: `failed` (its attach or detach
 * failed or was cancelled; a creation the provider completed after the undo listed may have left a
 * hook) and `attaching` / `detaching` (the run was terminated half-way, which nothing else moves
 * out of them). Hooks at forgelink's delivery URL on such a repository are never wanted.
 */
export const UNATTACHED_SWEPT_STATUSES = ['failed', 'attaching', 'detaching'] as const satisfies readonly AttachmentStatus[];
export type UnattachedSweptStatus = (typeof UNATTACHED_SWEPT_STATUSES)[number];

/**
 * How long such a status must have stood before its repository is swept: well past any creation a
 * provider could still be completing for a run that gave up on it (the steps' 2-minute timeout), so
 * that the one sweep per status comes after it.
 */
export const HOOK_SWEEP_AFTER_SECONDS = 3600;

/**
 * Attachment `a` is due for its sweep: an unattached status (UNATTACHED_SWEPT_STATUSES), unchanged
 * for HOOK_SWEEP_AFTER_SECONDS on the database's clock, and not swept since it was set.
 */
const DUE_FOR_SWEEP = sql<boolean>`a.status in (${sql.join([...UNATTACHED_SWEPT_STATUSES])}) and a.updated_at < now() - make_interval(secs => ${HOOK_SWEEP_AFTER_SECONDS}) and (a.hooks_swept_at is null or a.hooks_swept_at < a.updated_at)`;

/**
 * The repositories of a connection due for the hook-health pass's sweep of unattached hooks, at
 * most `limit` (each run of the pass sweeps a bounded few per connection): first the ones whose sweep
 * was not tried since their status last changed, the longest waiting first, then the ones longest
 * since tried (`hooks_sweep_tried_at`, markHookSweepTried). A sweep that did not complete (its
 * reconcile failed at workflow level, or it left hooks for a later night) stays due but goes behind
 * every other due repository of the connection, so it never keeps them waiting. Never a repository
 * the sweep leaves alone without recording anything (sweepUnattached, activities/hooks.ts): GitHub's
 * (no per-repository hooks) and a connection not active or being disconnected (attachRefusal);
 * picked, it would be picked again every night for nothing.
 */
export async function pendingHookSweepsPage(db: Executor, connectionId: string, limit: number): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
  const rows = await db
    .selectFrom('attachments as a')
    .innerJoin('repositories as r', 'r.id', 'a.repository_id')
    .innerJoin('connections as c', 'c.id', 'r.connection_id')
    .select(['r.id', 'r.provider', 'r.full_name'])
    .where('r.connection_id', '=', connectionId)
    .where('r.provider', '<>', 'github')
    .where('c.status', '=', 'active')
    .where('c.disconnect_requested_at', 'is', null)
    .where(DUE_FOR_SWEEP)
    .orderBy(sql`case when a.hooks_sweep_tried_at >= a.updated_at then a.hooks_sweep_tried_at end asc nulls first`)
    .orderBy('a.updated_at')
    .orderBy('r.id')
    .limit(limit)
    .execute();
  return rows.map((r) => ({ repositoryId: r.id, provider: r.provider, fullName: r.full_name }));
}

/** Records that a sweep of the repository starts (each attempt, before any provider call): a sweep that never completes goes behind the others (pendingHookSweepsPage). */
export async function markHookSweepTried(db: Executor, repositoryId: string): Promise<void> {
  await db.updateTable('attachments').set({ hooks_sweep_tried_at: new Date() }).where('repository_id', '=', repositoryId).execute();
}

/** The attachment's status when it is due for its sweep (see pendingHookSweepsPage), else undefined. */
export async function hookSweepDue(db: Executor, repositoryId: string): Promise<UnattachedSweptStatus | undefined> {
  const row = await db.selectFrom('attachments as a').select('a.status').where('a.repository_id', '=', repositoryId).where(DUE_FOR_SWEEP).executeTakeFirst();
  return row?.status as UnattachedSweptStatus | undefined;
}

/**
 * Records the sweep of a repository that was `status`, if it still is: a status changed meanwhile
 * is left as it is (the next change is due for a sweep of its own). `failWith` moves an `attaching`
 * or `detaching` left by a terminated run to `failed`, with that reason, swept as of the same moment;
 * with `done: false` (hooks left for a later night) only moved, so the `failed` status is due again.
 */
export async function markHooksSwept(db: Executor, repositoryId: string, status: UnattachedSweptStatus, failWith?: string, { done = true }: { done?: boolean } = {}): Promise<boolean> {
  const now = new Date();
  const result = await db
    .updateTable('attachments')
    .set({ ...(done ? { hooks_swept_at: now } : {}), ...(failWith !== undefined ? { status: 'failed' as const, reason: failWith, updated_at: now } : {}) })
    .where('repository_id', '=', repositoryId)
    .where('status', '=', status)
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

/**
 * Of `providerHookIds`, those another attachment of a repository on the same connection records
 * and has not detached: a sweep never deletes a hook a repository relies on.
 */
export async function hooksRecordedElsewhere(db: Executor, connectionId: string, repositoryId: string, providerHookIds: readonly string[]): Promise<string[]> {
  if (providerHookIds.length === 0) return [];
  const rows = await db
    .selectFrom('hooks as h')
    .innerJoin('attachments as a', 'a.id', 'h.attachment_id')
    .innerJoin('repositories as r', 'r.id', 'a.repository_id')
    .select('h.provider_hook_id')
    .distinct()
    .where('r.connection_id', '=', connectionId)
    .where('r.id', '<>', repositoryId)
    .where('a.status', '<>', 'detached')
    .where('h.provider_hook_id', 'in', [...providerHookIds])
    .execute();
  return rows.map((r) => r.provider_hook_id);
}

/**
 * Sets the attachment's status (creating the row on first use) and returns its id. `keepAttached`
 * leaves an attached repository attached: re-attaching reconciles its hooks while events keep flowing.
 */
export async function setAttachmentStatus(
  db: Executor,
  values: { organizationId: string; repositoryId: string; status: AttachmentStatus; reason?: string | null; keepAttached?: boolean },
): Promise<string> {
  const params = { organizationId: values.organizationId, repositoryId: values.repositoryId, status: values.status, reason: values.reason ?? null, now: new Date() };
  const { rows } = await (values.keepAttached ? SET_ATTACHMENT_STATUS.keepingAttached : SET_ATTACHMENT_STATUS.plain)(db, params);
  if (!rows[0]) throw new Error(`setAttachmentStatus: no row returned for repository ${values.repositoryId}`);
  return rows[0].id;
}

/** setAttachmentStatus' statement (keeping an attached repository attached, or not), compiled once: an attach runs it twice. */
const attachmentStatus = (db: Kysely<Database>, p: { organizationId: string; repositoryId: string; status: AttachmentStatus; reason: string | null; now: Date }, keepAttached: boolean) =>
  db
    .insertInto('attachments')
    .values({ organization_id: p.organizationId, repository_id: p.repositoryId, status: p.status, reason: p.reason })
    .onConflict((oc) =>
      oc.column('repository_id').doUpdateSet((eb) => ({
        status: keepAttached ? eb.case().when('attachments.status', '=', 'attached').then('attached' as AttachmentStatus).else(p.status).end() : p.status,
        reason: p.reason,
        updated_at: p.now,
      })),
    )
    .returning('id');

const SET_ATTACHMENT_STATUS = {
  plain: prepared((db, p: Parameters<typeof attachmentStatus>[1]) => attachmentStatus(db, p, false)),
  keepingAttached: prepared((db, p: Parameters<typeof attachmentStatus>[1]) => attachmentStatus(db, p, true)),
};

export async function attachmentOf(db: Executor, repositoryId: string): Promise<{ id: string; status: AttachmentStatus } | undefined> {
  return db.selectFrom('attachments').select(['id', 'status']).where('repository_id', '=', repositoryId).executeTakeFirst();
}

export async function attachmentIdOf(db: Executor, repositoryId: string): Promise<string | undefined> {
  return (await ATTACHMENT_ID_OF(db, { repositoryId })).rows[0]?.id;
}

const ATTACHMENT_ID_OF = prepared((db, p: { repositoryId: string }) => db.selectFrom('attachments').select('id').where('repository_id', '=', p.repositoryId));

export async function recordedHookIds(db: Executor, repositoryId: string): Promise<string[]> {
  const { rows } = await RECORDED_HOOK_IDS(db, { repositoryId });
  return rows.map((r) => r.provider_hook_id);
}

const RECORDED_HOOK_IDS = prepared((db, p: { repositoryId: string }) =>
  db
    .selectFrom('hooks')
    .innerJoin('attachments', 'attachments.id', 'hooks.attachment_id')
    .select('hooks.provider_hook_id')
    .where('attachments.repository_id', '=', p.repositoryId)
    .orderBy('hooks.created_at'),
);

export async function forgetHooks(db: Executor, repositoryId: string, providerHookIds: string[]): Promise<void> {
  if (providerHookIds.length === 0) return;
  await db
    .deleteFrom('hooks')
    .where('attachment_id', 'in', (eb) => eb.selectFrom('attachments').select('id').where('repository_id', '=', repositoryId))
    .where('provider_hook_id', 'in', providerHookIds)
    .execute();
}

/** Drops every recorded hook of the repository except `keep`. */
export async function forgetHooksExcept(db: Executor, repositoryId: string, keep: string[]): Promise<void> {
  let query = db.deleteFrom('hooks').where('attachment_id', 'in', (eb) => eb.selectFrom('attachments').select('id').where('repository_id', '=', repositoryId));
  if (keep.length > 0) query = query.where('provider_hook_id', 'not in', keep);
  await query.execute();
}

/**
 * Of `providerHookIds`, the legacy hooks (the global secret, made before per-connection hooks, when
 * organizations attaching the same repository shared one hook) that an attachment of the same
 * provider repository on the same instance (the connections' base URLs, without trailing slashes
 * and case) in another cache row still records and has not detached. Deleting one would cut that
 * attachment off until the reconcile gives it its own hooks; a hook of the same id on another
 * instance is another hook.
 */
export async function legacyHooksInUseElsewhere(db: Executor, repositoryId: string, providerHookIds: readonly string[]): Promise<string[]> {
  if (providerHookIds.length === 0) return [];
  const instanceOf = (column: 'c.base_url' | 'oc.base_url') => sql<string>`lower(regexp_replace(${sql.ref(column)}, '/+$', ''))`;
  const rows = await db
    .selectFrom('repositories as r')
    .innerJoin('connections as c', 'c.id', 'r.connection_id')
    .innerJoin('repositories as other', (join) => join.onRef('other.provider', '=', 'r.provider').onRef('other.external_id', '=', 'r.external_id').onRef('other.id', '<>', 'r.id'))
    .innerJoin('connections as oc', 'oc.id', 'other.connection_id')
    .innerJoin('attachments as a', 'a.repository_id', 'other.id')
    .innerJoin('hooks as h', 'h.attachment_id', 'a.id')
    .select('h.provider_hook_id')
    .distinct()
    .where('r.id', '=', repositoryId)
    .where((eb) => eb(instanceOf('oc.base_url'), '=', instanceOf('c.base_url')))
    .where('a.status', '<>', 'detached')
    .where('h.credential_version', 'is', null)
    .where('h.provider_hook_id', 'in', [...providerHookIds])
    .execute();
  return rows.map((r) => r.provider_hook_id);
}

/**
 * Attachments still holding a legacy hook, by provider: `toMigrate`, the attached ones on active
 * connections, which the hook-health reconcile visits and moves to their connection's own hooks;
 * `notReconciled`, the others not detached (an attachment failed or in progress, a connection not
 * active), which the reconcile does not visit: re-activate or detach them.
 */
export async function countAttachmentsWithLegacyHooks(db: Executor): Promise<{ toMigrate: Partial<Record<Provider, number>>; notReconciled: Partial<Record<Provider, number>> }> {
  const rows = await db
    .selectFrom('attachments as a')
    .innerJoin('repositories as r', 'r.id', 'a.repository_id')
    .innerJoin('connections as c', 'c.id', 'r.connection_id')
    .select(['r.provider', 'a.status', 'c.status as connectionStatus', (eb) => eb.fn.countAll<string>().as('count')])
    .where('a.status', '<>', 'detached')
    .where('r.provider', '<>', 'github')
    .where(({ exists, selectFrom }) => exists(selectFrom('hooks as h').select('h.id').whereRef('h.attachment_id', '=', 'a.id').where('h.credential_version', 'is', null)))
    .groupBy(['r.provider', 'a.status', 'c.status'])
    .execute();
  const toMigrate: Partial<Record<Provider, number>> = {};
  const notReconciled: Partial<Record<Provider, number>> = {};
  for (const row of rows) {
    const counts = row.status === 'attached' && row.connectionStatus === 'active' ? toMigrate : notReconciled;
    counts[row.provider] = (counts[row.provider] ?? 0) + Number(row.count);
  }
  return { toMigrate, notReconciled };
}

/** The webhook credential version each recorded hook of the repository carries (null: a legacy hook, the global secret). */
export async function recordedCredentialVersions(db: Executor, repositoryId: string): Promise<Map<string, number | null>> {
  const { rows } = await RECORDED_CREDENTIAL_VERSIONS(db, { repositoryId });
  return new Map(rows.map((r) => [r.provider_hook_id, r.credential_version]));
}

const RECORDED_CREDENTIAL_VERSIONS = prepared((db, p: { repositoryId: string }) =>
  db
    .selectFrom('hooks')
    .innerJoin('attachments', 'attachments.id', 'hooks.attachment_id')
    .select(['hooks.provider_hook_id', 'hooks.credential_version'])
    .where('attachments.repository_id', '=', p.repositoryId),
);

/** Repositories of a connection that are not detached (attached, in flight, or failed with hooks possibly left). */
export async function listUndetachedRepositories(db: Executor, connectionId: string): Promise<{ repositoryId: string; provider: Provider; fullName: string }[]> {
  const rows = await db
    .selectFrom('attachments as a')
    .innerJoin('repositories as r', 'r.id', 'a.repository_id')
    .select(['r.id', 'r.provider', 'r.full_name'])
    .where('r.connection_id', '=', connectionId)
    .where('a.status', '<>', 'detached')
    .orderBy('r.full_name')
    .orderBy('r.id')
    .execute();
  return rows.map((r) => ({ repositoryId: r.id, provider: r.provider, fullName: r.full_name }));
}

/**
 * Active connections of providers with per-repository hooks that have an attached repository, or
 * one due for the sweep of unattached hooks (pendingHookSweepsPage): the hook-health reconcile's.
 */
export async function connectionsWithAttachedHooks(
  db: Executor,
  options: { organizationId?: string; after?: string; limit?: number },
): Promise<{ organizationId: string; organizationSlug: string; connectionId: string; provider: Provider }[]> {
  let query = db
    .selectFrom('connections as c')
    .innerJoin('organizations as o', 'o.id', 'c.organization_id')
    .select(['c.id', 'c.organization_id', 'o.slug', 'c.provider'])
    .where('c.status', '=', 'active')
    .where('c.provider', '<>', 'github')
    .where((eb) =>
      eb.exists(
        eb
          .selectFrom('repositories as r')
          .innerJoin('attachments as a', 'a.repository_id', 'r.id')
          .select('a.id')
          .whereRef('r.connection_id', '=', 'c.id')
          .where((eb) => eb.or([eb('a.status', '=', 'attached'), DUE_FOR_SWEEP])),
      ),
    );
  if (options.organizationId) query = query.where('c.organization_id', '=', options.organizationId);
  if (options.after) query = query.where('c.id', '>', options.after);
  if (options.limit) query = query.limit(options.limit);
  const rows = await query.orderBy('c.id').execute();
  return rows.map((r) => ({ organizationId: r.organization_id, organizationSlug: r.slug, connectionId: r.id, provider: r.provider }));
}
