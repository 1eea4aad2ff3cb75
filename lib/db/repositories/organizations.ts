import type { Kysely, Transaction } from 'kysely';
import type { Database, Organization } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether an organization reference can name one by id (it can always name one by slug). */
export const mayBeOrganizationId = (ref: string) => UUID.test(ref);

export async function createOrganization(db: Executor, input: { slug: string; name: string }): Promise<Organization | undefined> {
  return db
    .insertInto('organizations')
    .values(input)
    .onConflict((oc) => oc.column('slug').doNothing())
    .returning(['id', 'slug', 'name', 'created_at'])
    .executeTakeFirst();
}

/** Finds an organization by slug, or by id when the reference is a UUID (the id wins over a slug made before UUID-shaped slugs were refused). */
export async function findOrganization(db: Executor, ref: string): Promise<Organization | undefined> {
  return db
    .selectFrom('organizations')
    .select(['id', 'slug', 'name', 'created_at'])
    .where((eb) => (mayBeOrganizationId(ref) ? eb.or([eb('id', '=', ref), eb('slug', '=', ref)]) : eb('slug', '=', ref)))
    .orderBy((eb) => eb('slug', '=', ref))
    .executeTakeFirst();
}

/**
 * Holds the organization's row until the transaction ends, so that requests counting what the
 * organization has before adding one (subscribers, connections) count one after another. FOR NO
 * KEY UPDATE: the organization's other writes, whose foreign keys only share its key, go on.
 */
export async function lockOrganization(trx: Transaction<Database>, organizationId: string): Promise<void> {
  await trx.selectFrom('organizations').select('id').where('id', '=', organizationId).forNoKeyUpdate().executeTakeFirst();
}
