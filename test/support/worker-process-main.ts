import { readFileSync } from 'node:fs';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { createProviderFactory } from '../../activities/providers/index.ts';
import { createDb } from '../../lib/db/index.ts';
import { createLogger } from '../../lib/logger.ts';
import { createWorker } from '../../worker/create-worker.ts';
import { testOutbound } from './outbound.ts';
import type { WorkerProcessSpec } from './worker-process.ts';

/** The entry of startWorkerProcess's child: a worker wired from the spec in this variable, printing `ready` once it runs. */
export const SPEC_ENV = 'FORGELINK_TEST_WORKER';

async function runWorkerProcess(spec: WorkerProcessSpec): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const connection = await NativeConnection.connect({ address: spec.address });
  const worker = await createWorker({
    connection,
    namespace: 'default',
    taskQueue: spec.taskQueue,
    deps: {
      db: createDb(spec.databaseUrl, { max: 2 }),
      keys: { current: { id: spec.keyId, key: Buffer.from(spec.key, 'base64') } },
      providers: createProviderFactory({ outbound: testOutbound }),
      outbound: testOutbound,
      logger: createLogger('worker-process', 'warn'),
      settings: spec.settings,
    },
    workflowBundle: { code: readFileSync(spec.bundlePath, 'utf8') },
  });
  const running = worker.run();
  process.stdout.write('ready\n');
  await running;
}

if (process.env[SPEC_ENV] && import.meta.url === `file://${process.argv[1]}`) {
  await runWorkerProcess(JSON.parse(process.env[SPEC_ENV]) as WorkerProcessSpec);
}
