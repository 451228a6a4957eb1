import { defineConfig } from 'vitest/config';

/**
 * The reliability suite (test/chaos): real `dw worker` / `dw relay` processes, real faults, counted
 * outcomes. One file at a time: scenarios kill processes and may restart the shared services.
 */
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    globalSetup: ['test/support/build.ts'],
    setupFiles: ['test/support/leak-check.ts'],
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 120_000,
    retry: 0,
  },
});
