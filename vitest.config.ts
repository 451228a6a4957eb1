import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The reliability suite restarts services and kills processes: it runs alone (vitest.chaos.config.ts).
    exclude: [...configDefaults.exclude, 'test/chaos/**'],
    setupFiles: ['test/support/leak-check.ts'],
    globalSetup: ['test/support/build.ts'],
    // Files are isolated (own database, exchange, queues, BullMQ prefix), so two run side by side.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Timing on a loaded 2-core machine varies; tests wait for conditions, never for fixed times.
    retry: 0,
  },
});
