import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['agent/**/*.test.ts', 'shared/**/*.test.ts', 'control-plane/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // One real S3 server (Ceph radosgw, in memory) for the whole run: the S3 backend's tests use it.
    globalSetup: ['test/support/s3-global-setup.ts'],
  },
});
