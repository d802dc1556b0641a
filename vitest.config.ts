import { defineConfig } from 'vitest/config';

/**
 * Five projects, one per folder of test/: `npm test` runs them all, `npm run test:<name>` one of them.
 * Inline projects in vitest 3.2 inherit nothing from this file unless they say `extends: true`, which
 * would also run the global set-up once more per project: what they share is spelled out here instead.
 */
const shared = {
  testTimeout: 60_000,
  hookTimeout: 30_000,
  // Each test file gets a temporary directory of its own, which must be empty when the file ends.
  setupFiles: ['test/setup/file-tmpdir.ts'],
};

/** Files that spawn real upgraders, agents, strace and containers: one process per file (forks). */
const processes = {
  ...shared,
  pool: 'forks' as const,
  // After the unit tests, and all three together: they share the forks pool and its two workers.
  sequence: { groupOrder: 1 },
};

export default defineConfig({
  test: {
    // One temporary directory for the whole run, checked and removed at its end (test/setup/run-tmpdir.ts).
    globalSetup: ['test/setup/run-tmpdir.ts'],
    // Two cores: two files at a time keeps the timings of the process tests sane. vitest 3.2 applies this
    // to each pool, and pools of one group run at once, so the unit tests (threads) run first, alone.
    maxWorkers: 2,
    minWorkers: 1,
    // In CI, also a machine-readable summary, from which .ci/run prints its closing line.
    reporters: process.env.CI ? ['default', ['json', { outputFile: 'test-results.json' }]] : ['default'],
    projects: [
      // Pure logic, no processes of their own: threads start faster than forks.
      { test: { ...shared, name: 'unit', include: ['test/unit/**/*.test.ts'], pool: 'threads', sequence: { groupOrder: 0 } } },
      { test: { ...processes, name: 'integration', include: ['test/integration/**/*.test.ts'] } },
      { test: { ...processes, name: 'reliability', include: ['test/reliability/**/*.test.ts'] } },
      // A real etcd and many hosts, each a real upgrader, agent and follower: 60 processes and more at once,
      // so after the others, alone, where its load cannot push their short CLI timeouts over the edge.
      { test: { ...processes, name: 'fleet', include: ['test/fleet/**/*.test.ts'], testTimeout: 240_000, sequence: { groupOrder: 2 } } },
      // Root with systemd-nspawn and mmdebstrap only; elsewhere its suite is skipped and says why.
      { test: { ...processes, name: 'systemd', include: ['test/systemd/**/*.test.ts'] } },
    ],
  },
});
