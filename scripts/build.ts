/**
 * `npm run build [-- OUT_DIR]`: the JavaScript production runs (tsc, tsconfig.build.json, from its
 * entry points) and the workflow bundle the compiled worker loads (OUT_DIR/workflow-bundle.js).
 */
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleWorkflows } from '../worker/create-worker.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const outDir = path.resolve(process.argv[2] ?? 'dist');
rmSync(outDir, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', outDir], { stdio: 'inherit' });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);
const { code } = await bundleWorkflows();
writeFileSync(path.join(outDir, 'workflow-bundle.js'), code);
console.log(`built ${outDir} (workflow bundle ${Math.round(code.length / 1024)} KiB)`);
