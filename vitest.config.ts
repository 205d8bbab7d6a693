import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['agent/**/*.test.ts', 'shared/**/*.test.ts', 'control-plane/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two test files at a time. Most files spend their time waiting on real processes and servers
    // (the CLI, qemu, radosgw, schedules), so on 2 cores this nearly halves the run; vitest's
    // default (cores - 1) would run one file at a time there.
    maxWorkers: 2,
    // One real S3 server (Ceph radosgw, in memory) for the whole run: the S3 backend's tests use it.
    // The vCenter simulator for the VMware source's tests is built (or found cached) once, up front.
    globalSetup: ['test/support/s3-global-setup.ts', 'test/support/vcsim-global-setup.ts'],
    // Tests make their own S3 clients; the SDK's notice about Node.js 20 would only clutter the output
    // (the CLI silences it the same way, see shared/store/s3-store.ts).
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  },
});
