import { Client, Connection } from '@temporalio/client';
import { loadConfig } from '../lib/config.ts';
import { temporalConnectOptions } from '../lib/temporal/connection.ts';
import { registerSearchAttributes } from './search-attributes.ts';

/**
 * `node dist/worker/register-search-attributes-cli.js`: registers forgelink's search attributes on
 * the configured namespace (the Helm chart's hook Job with `searchAttributes.register`). Temporal
 * Cloud registers them through tcld or the Cloud UI instead.
 */
const config = loadConfig();
const connection = await Connection.connect(temporalConnectOptions(config.temporal, config.temporal.address ?? '127.0.0.1:7233'));
try {
  const registered = await registerSearchAttributes(new Client({ connection, namespace: config.temporal.namespace }), config.temporal.namespace);
  console.log(registered.length ? `registered on ${config.temporal.namespace}: ${registered.join(', ')}` : `${config.temporal.namespace} has every search attribute forgelink uses`);
} finally {
  await connection.close();
}
