import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { checkSearchAttributes } from '../../worker/search-attributes.ts';

/** The worker's start-up check of forgelink's search attributes, against the run's dev server. */
describe('worker start-up: search attributes', () => {
  let connection: Connection;
  let client: Client;
  beforeAll(async () => {
    connection = await Connection.connect({ address: inject('temporalAddress') });
    client = new Client({ connection });
  });
  afterAll(async () => connection?.close());

  it('passes on a namespace that has them (the dev server registers them from temporal-dev.yml)', async () => {
    await expect(checkSearchAttributes(client, 'default')).resolves.toBeUndefined();
  });

  it('stops on a namespace without them, naming each and the command that registers it', async () => {
    const namespace = `bare-${randomUUID().slice(0, 8)}`;
    await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
    const error = await checkSearchAttributes(client, namespace).then(() => undefined, (e: Error) => e);
    expect(error?.message).toContain(`the Temporal namespace "${namespace}" lacks the Keyword search attributes ForgelinkOrganization, ForgelinkProvider, ForgelinkRepository, ForgelinkConnection`);
    expect(error?.message).toContain(`temporal operator search-attribute create --namespace ${namespace} --name ForgelinkConnection --type Keyword`);
  });
});
