/** `npm run temporal:ensure`: finds or builds the Temporal CLI (cached outside the repo) and prints its path. */
import { findOrBuildTemporalCli } from '../lib/temporal/cli.ts';

const cli = findOrBuildTemporalCli((line) => console.error(line));
console.log(cli ?? 'no Temporal CLI and no Go: the Temporal SDK will download the dev server on first use');
