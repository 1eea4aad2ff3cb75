/**
 * `npm run fuzz [-- --seed=N --requests=N --concurrency=N --only=N,M]`: a fuzz campaign against a
 * stack of its own (Temporal dev server, fresh database, API and worker processes, fake providers).
 * Prints the numbers and every failure with the line that replays it; exits 1 on any failure.
 */
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';
import { formatReport, runFuzz } from './run.ts';
import { startWorld } from './world.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    requests: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '16' },
    only: { type: 'string' },
  },
});
const seed = values.seed !== undefined ? Number(values.seed) : randomInt(2 ** 31);
const options = {
  seed,
  requests: Number(values.requests),
  concurrency: Number(values.concurrency),
  ...(values.only !== undefined ? { only: values.only.split(',').map(Number) } : {}),
};
console.log(`fuzz: seed ${seed} (replay with --seed=${seed}), ${options.only ? `requests ${options.only.join(', ')} only` : `${options.requests} requests`}, concurrency ${options.concurrency}`);
const world = await startWorld({}, (line) => console.log(line));
let failed = true;
try {
  const report = await runFuzz(world, options);
  console.log(formatReport(report));
  failed = report.failures.length > 0;
} finally {
  await world.close();
}
process.exit(failed ? 1 : 0);
