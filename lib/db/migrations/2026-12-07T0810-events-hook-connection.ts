import { sql, type Kysely } from 'kysely';

/**
 * Which hook an event row came through: the connection whose own hook (`?c=`) delivered it, null for
 * GitHub's App and legacy hooks (as webhook_deliveries.connection_id). An event run is read by the
 * rows of its own delivery (its workflow id names the connection or none): a legacy hook's run no
 * longer counts rows another tenant's connection hook stored under the same delivery id.
 *
 * Rows already there: the connection of the stored delivery (the intake table) when its row is still
 * kept and the event's repository is that connection's; otherwise the repository's connection when
 * the repository holds hooks with a per-connection credential and no legacy hook. Rows neither tells
 * stay null (seen under the run without a connection). No foreign key: event rows outlive a connection.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('events').addColumn('connection_id', 'uuid').execute();
  await sql`
    update events e set connection_id = d.connection_id
    from webhook_deliveries d, repositories r
    where e.provider <> 'github' and d.provider = e.provider and d.delivery_id = e.delivery_id and d.connection_id is not null
      and r.id = e.repository_id and r.connection_id = d.connection_id`.execute(db);
  await sql`
    update events e set connection_id = r.connection_id
    from repositories r
    where e.connection_id is null and e.provider <> 'github' and r.id = e.repository_id
      and not exists (select 1 from webhook_deliveries d where d.provider = e.provider and d.delivery_id = e.delivery_id and d.connection_id is null)
      and exists (select 1 from attachments a join hooks h on h.attachment_id = a.id where a.repository_id = r.id and h.credential_version is not null)
      and not exists (select 1 from attachments a join hooks h on h.attachment_id = a.id where a.repository_id = r.id and h.credential_version is null)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('events').dropColumn('connection_id').execute();
}
