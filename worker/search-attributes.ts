import type { Client } from '@temporalio/client';
import type { SearchAttributeType } from '@temporalio/common';
import proto from '@temporalio/proto';
import { SEARCH_ATTRIBUTES } from '../workflows/contract.ts';

// @temporalio/proto is CommonJS: its default export, as Node's ESM loader (not only tsx) can import it.
const { IndexedValueType } = proto.temporal.api.enums.v1;
/** Each type forgelink uses: as the namespace lists it, and as `temporal operator search-attribute create --type` takes it. */
const TYPES: Partial<Record<SearchAttributeType, { indexed: number; cli: string }>> = {
  KEYWORD: { indexed: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, cli: 'Keyword' },
  KEYWORD_LIST: { indexed: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST, cli: 'KeywordList' },
};

/**
 * The worker's start-up check: every workflow start sets forgelink's search attributes, and a
 * namespace without them refuses those starts, so a worker on such a namespace stops at once with
 * the commands that register them, instead of looking healthy while every run fails. An attribute
 * registered with another type (e.g. Keyword where KeywordList is wanted) counts as missing too.
 */
export async function checkSearchAttributes(client: Client, namespace: string): Promise<void> {
  const { customAttributes } = await client.connection.operatorService.listSearchAttributes({ namespace });
  const missing = SEARCH_ATTRIBUTES.filter((key) => customAttributes?.[key.name] !== TYPES[key.type]?.indexed);
  if (missing.length === 0) return;
  const described = missing.map((key) => `${key.name} (${TYPES[key.type]?.cli})`);
  throw new Error(
    `the Temporal namespace "${namespace}" lacks the search attributes ${described.join(', ')}; register them, then start the worker again: ` +
      missing.map((key) => `temporal operator search-attribute create --namespace ${namespace} --name ${key.name} --type ${TYPES[key.type]?.cli}`).join(' && ') +
      ' (Temporal Cloud: tcld namespace search-attributes add, or the Cloud UI)',
  );
}

/**
 * Registers on the namespace those of forgelink's search attributes it lacks (the chart's
 * `searchAttributes.register` hook Job; it needs operator rights on the namespace, which the worker
 * does not). One registered with another type is not changed (Temporal cannot): it fails, naming it.
 * Returns the names it registered.
 */
export async function registerSearchAttributes(client: Client, namespace: string): Promise<string[]> {
  const { customAttributes } = await client.connection.operatorService.listSearchAttributes({ namespace });
  const mistyped = SEARCH_ATTRIBUTES.filter((key) => customAttributes?.[key.name] !== undefined && customAttributes[key.name] !== TYPES[key.type]?.indexed);
  if (mistyped.length > 0) {
    const wanted = mistyped.map((key) => `${key.name} (wanted: ${TYPES[key.type]?.cli})`).join(', ');
    throw new Error(`the Temporal namespace "${namespace}" has search attributes of another type: ${wanted}; remove them (temporal operator search-attribute remove) and register again`);
  }
  const missing = SEARCH_ATTRIBUTES.filter((key) => customAttributes?.[key.name] === undefined);
  if (missing.length > 0) {
    await client.connection.operatorService.addSearchAttributes({ namespace, searchAttributes: Object.fromEntries(missing.map((key) => [key.name, TYPES[key.type]!.indexed])) });
  }
  await checkSearchAttributes(client, namespace);
  return missing.map((key) => key.name);
}
