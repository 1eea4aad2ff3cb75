/**
 * Bare `client.workflow.start`s paced in a process of their own (bench/ingest.ts's acknowledgement
 * floor): the Temporal work an intake relay would cause, without its encoding on the event loop of
 * the process whose acknowledgements are measured. `tsx paced-starts.ts <temporal address>
 * <namespace> <starts.json> <rate per second> <max in flight>`: connects, prints `ready`, starts
 * pacing on a line on stdin, and prints its result (JSON: latencies and failures) when done.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Client, Connection, type WorkflowStartOptions } from '@temporalio/client';
import { runPaced } from './measure.ts';

const [address, namespace, file, rate, maxInFlight] = process.argv.slice(2);
if (!address || !namespace || !file || !rate || !maxInFlight) throw new Error('usage: paced-starts <address> <namespace> <starts.json> <rate> <max in flight>');
const starts = JSON.parse(readFileSync(file, 'utf8')) as WorkflowStartOptions[];
const connection = await Connection.connect({ address });
const client = new Client({ connection, namespace });
console.log('ready');
await new Promise<void>((resolve) => createInterface({ input: process.stdin }).once('line', () => resolve()));
let failed = 0;
const result = await runPaced(starts, Number(rate), Number(maxInFlight), async (start) => {
  await client.workflow.start('eventWorkflow', start).catch(() => failed++);
  return 0;
});
console.log(JSON.stringify({ latenciesMs: result.latenciesMs, throughputPerSecond: result.throughputPerSecond, failed }));
await connection.close();
process.exit(0);
