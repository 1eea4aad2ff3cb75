import type { Client } from '@temporalio/client';
import proto from '@temporalio/proto';
import { SEARCH_ATTRIBUTES } from '../workflows/contract.ts';

// @temporalio/proto is CommonJS: its default export, as Node's ESM loader (not only tsx) can import it.
const KEYWORD = proto.temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;

/**
 * The worker's start-up check: every workflow start sets forgelink's search attributes, and a
 * namespace without them refuses those starts, so a worker on such a namespace stops at once with
 * the commands that register them, instead of looking healthy while every run fails.
 */
export async function checkSearchAttributes(client: Client, namespace: string): Promise<void> {
  const { customAttributes } = await client.connection.operatorService.listSearchAttributes({ namespace });
  const missing = SEARCH_ATTRIBUTES.filter((key) => customAttributes?.[key.name] !== KEYWORD).map((key) => key.name);
  if (missing.length === 0) return;
  throw new Error(
    `the Temporal namespace "${namespace}" lacks the Keyword search attributes ${missing.join(', ')}; register them, then start the worker again: ` +
      missing.map((name) => `temporal operator search-attribute create --namespace ${namespace} --name ${name} --type Keyword`).join(' && ') +
      ' (Temporal Cloud: tcld namespace search-attributes add, or the Cloud UI)',
  );
}
