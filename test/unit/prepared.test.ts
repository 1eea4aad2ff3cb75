import { sql, type CompiledQuery } from 'kysely';
import { describe, expect, it } from 'vitest';
import { prepared } from '../../lib/db/prepared.ts';
import type { Db } from '../../lib/db/index.ts';

/** An executor that answers each statement with the statement itself, as it would reach pg. */
const echo = { executeQuery: async (query: CompiledQuery) => ({ rows: [query] }) } as unknown as Db;
const sent = async (run: Promise<{ rows: unknown[] }>) => (await run).rows[0] as CompiledQuery;

describe('prepared', () => {
  it("places each call's values where its placeholders went, constants as the builder wrote them, every call the same SQL", async () => {
    const statement = prepared((db, p: { repositoryId: string; ids: string[]; at: Date }) =>
      db
        .updateTable('attachments')
        .set({ status: 'attached', updated_at: p.at })
        .where('repository_id', '=', p.repositoryId)
        .where(sql<boolean>`id = any(${p.ids}::uuid[])`)
        .where((eb) => eb.or([eb('reason', '=', p.repositoryId), eb('reason', 'is', null)])),
    );
    const at = new Date();
    const first = await sent(statement(echo, { repositoryId: 'r1', ids: ['a', 'b'], at }));
    const second = await sent(statement(echo, { repositoryId: 'r2', ids: [], at }));
    expect(first.sql).toBe(second.sql);
    expect(first.sql).toBe('update "attachments" set "status" = $1, "updated_at" = $2 where "repository_id" = $3 and id = any($4::uuid[]) and ("reason" = $5 or "reason" is null)');
    expect(first.parameters).toEqual(['attached', at, 'r1', ['a', 'b'], 'r1']);
    expect(second.parameters).toEqual(['attached', at, 'r2', [], 'r2']);
  });

  it('refuses a builder that joins a placeholder into a value, writes it into the SQL or drops it', async () => {
    const joined = prepared((db, p: { name: string }) => db.selectFrom('organizations').select('id').where('slug', '=', `org-${p.name}`));
    await expect(joined(echo, { name: 'x' })).rejects.toThrow(/joined into a value/);
    const written = prepared((db, p: { name: string }) => db.selectFrom('organizations').select('id').where('slug', '=', sql.lit(p.name)));
    await expect(written(echo, { name: 'x' })).rejects.toThrow(/written into the SQL/);
    const dropped = prepared((db, p: { name: string }) => db.selectFrom('organizations').select('id').where('slug', p.name ? 'is' : '=', null));
    await expect(dropped(echo, { name: 'x' })).rejects.toThrow(/read but not in the SQL/);
  });

  it("refuses a builder that tests, lists, changes or gathers its placeholders (the first call's shape would be every call's)", async () => {
    const tested = prepared((db, p: { name?: string }) => db.selectFrom('organizations').select('id').$if('name' in p, (q) => q.where('slug', '=', p.name!)));
    await expect(tested(echo, { name: 'x' })).rejects.toThrow(/tested/);
    const spread = prepared((db, p: { name: string }) => db.selectFrom('organizations').select('id').where('slug', '=', { ...p }.name));
    await expect(spread(echo, { name: 'x' })).rejects.toThrow(/listed/);
    const changed = prepared((db, p: { name: string; slug: string }) => db.selectFrom('organizations').select('id').where('slug', '=', p.slug).where('name', '=', p.name.toUpperCase()));
    await expect(changed(echo, { name: 'x', slug: 'y' })).rejects.toThrow(/joined into a value, changed/);
    const gathered = prepared((db, p: { a: string; b: string }) => db.selectFrom('organizations').select('id').where('slug', '=', p.a).where(sql<boolean>`id = any(${[p.a, p.b]}::uuid[])`));
    await expect(gathered(echo, { a: 'x', b: 'y' })).rejects.toThrow(/put in a list/);
  });
});
