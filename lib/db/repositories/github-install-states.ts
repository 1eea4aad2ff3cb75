import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../schema.ts';

type Executor = Kysely<Database> | Transaction<Database>;

/** Remembers an install redirect's state (by its hash) until it is used or expires; expired ones go. */
export async function saveInstallState(db: Executor, state: { hash: string; organizationId: string; expiresAt: Date }): Promise<void> {
  await db.deleteFrom('github_install_states').where('expires_at', '<', new Date()).execute();
  await db.insertInto('github_install_states').values({ state_hash: state.hash, organization_id: state.organizationId, expires_at: state.expiresAt }).execute();
}

/** Uses the state up: true only for the first use, by the organization it was issued to, before it expires. */
export async function useInstallState(db: Executor, hash: string, organizationId: string): Promise<boolean> {
  const used = await db
    .deleteFrom('github_install_states')
    .where('state_hash', '=', hash)
    .where('organization_id', '=', organizationId)
    .where('expires_at', '>', new Date())
    .returning('state_hash')
    .executeTakeFirst();
  return used !== undefined;
}
