/**
 * `npm run build [-- OUT_DIR]`: the JavaScript production runs (tsc, tsconfig.build.json, from its
 * entry points) and the workflow bundles the compiled worker loads: OUT_DIR/workflow-bundle.js with the
 * tracing interceptors, OUT_DIR/workflow-bundle-untraced.js without (worker/create-worker.ts BUILT_BUNDLE_PATHS).
 */
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUILT_BUNDLE_PATHS, bundleWorkflows } from '../worker/create-worker.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const outDir = path.resolve(process.argv[2] ?? 'dist');
rmSync(outDir, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', outDir], { stdio: 'inherit' });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);
const sizes: string[] = [];
for (const variant of ['traced', 'untraced'] as const) {
  const { code } = await bundleWorkflows(undefined, undefined, variant);
  writeFileSync(path.join(outDir, path.basename(BUILT_BUNDLE_PATHS[variant])), code);
  sizes.push(`${variant} ${Math.round(code.length / 1024)} KiB`);
}
console.log(`built ${outDir} (workflow bundles: ${sizes.join(', ')})`);
