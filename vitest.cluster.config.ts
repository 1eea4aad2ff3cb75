import { defineConfig } from 'vitest/config';

/**
 * `npm run test:cluster`: forgelink against a real Temporal cluster (test/cluster). Kept apart from
 * vitest.config.ts so `npm test` does not run it; the suite starts everything it needs itself.
 */
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/cluster/**/*.test.ts'],
    // One file, its steps in order, each on what the one before left.
    fileParallelism: false,
    sequence: { concurrent: false },
    testTimeout: 300_000,
    hookTimeout: 600_000,
  },
});
