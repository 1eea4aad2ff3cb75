import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import proto from '@temporalio/proto';
import { checkSearchAttributes, registerSearchAttributes } from '../../worker/search-attributes.ts';
import { SEARCH_ATTRIBUTES } from '../../workflows/contract.ts';

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
    expect(error?.message).toContain(
      `the Temporal namespace "${namespace}" lacks the search attributes ForgelinkOrganization (Keyword), ForgelinkProvider (Keyword), ForgelinkRepository (Keyword), ForgelinkConnection (Keyword), ForgelinkOrgSlugs (KeywordList), ForgelinkRepositoryNames (KeywordList)`,
    );
    expect(error?.message).toContain(`temporal operator search-attribute create --namespace ${namespace} --name ForgelinkConnection --type Keyword`);
    expect(error?.message).toContain(`temporal operator search-attribute create --namespace ${namespace} --name ForgelinkOrgSlugs --type KeywordList`);
  });

  it('stops on a namespace where one has another type (a list registered as Keyword), naming only that one', async () => {
    const namespace = `mistyped-${randomUUID().slice(0, 8)}`;
    await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
    const { IndexedValueType } = proto.temporal.api.enums.v1;
    const searchAttributes = Object.fromEntries(
      SEARCH_ATTRIBUTES.map((key) => [key.name, key.name === 'ForgelinkRepositoryNames' || key.type === 'KEYWORD' ? IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD : IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST]),
    );
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes });
    const error = await checkSearchAttributes(client, namespace).then(() => undefined, (e: Error) => e);
    expect(error?.message).toContain(`the Temporal namespace "${namespace}" lacks the search attributes ForgelinkRepositoryNames (KeywordList);`);
    // Registration cannot change a type: it refuses, naming it.
    await expect(registerSearchAttributes(client, namespace)).rejects.toThrow(`has search attributes of another type: ForgelinkRepositoryNames (wanted: KeywordList)`);
  });

  it('registers them on a namespace without them (the chart\'s hook Job), once', async () => {
    const namespace = `fresh-${randomUUID().slice(0, 8)}`;
    await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') });
    expect(await registerSearchAttributes(client, namespace)).toEqual(SEARCH_ATTRIBUTES.map((key) => key.name));
    await expect(checkSearchAttributes(client, namespace)).resolves.toBeUndefined();
    expect(await registerSearchAttributes(client, namespace)).toEqual([]);
  });
});
