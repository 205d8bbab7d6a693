/**
 * vitest globalSetup: starts one real S3 server (Ceph radosgw, see s3-server.ts) for the whole test
 * run and hands its address and credentials to the tests, which read them with `inject('s3')`.
 * Each test creates its own buckets, so tests and test files can share the server.
 */
import type { TestProject } from 'vitest/node';

import { s3ServerAvailable, startS3Server, type CephCluster } from './s3-server.js';

/** What the tests get from `inject('s3')`. */
export interface S3Connection {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    s3: S3Connection;
    /** The Ceph cluster behind the S3 server, for the RBD tests (images in pools of their own). */
    ceph: CephCluster;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  if (!s3ServerAvailable()) {
    throw new Error(
      'The S3 tests run against a real Ceph RADOS Gateway, which is not installed here ' +
        '(radosgw, ceph-mon, ceph-osd, radosgw-admin, monmaptool and ceph must be on PATH). ' +
        'Install it with: apt-get install radosgw ceph-mon ceph-osd ceph-common',
    );
  }
  const server = await startS3Server();
  const { endpoint, accessKeyId, secretAccessKey, region } = server;
  project.provide('s3', { endpoint, accessKeyId, secretAccessKey, region });
  project.provide('ceph', server.ceph);
  return () => server.stop();
}
