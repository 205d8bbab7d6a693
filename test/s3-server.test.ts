/**
 * Smoke test of the S3 server the test run shares (test/support/s3-global-setup.ts starts Ceph radosgw
 * through test/support/s3-server.ts): bucket, put, get, list, delete with the AWS SDK.
 */
import { randomBytes } from 'node:crypto';

import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, describe, expect, inject, it } from 'vitest';

const s3 = inject('s3');
const client = new S3Client({
  endpoint: s3.endpoint,
  region: s3.region,
  forcePathStyle: true,
  credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});

afterAll(() => client.destroy());

describe('S3 test server', () => {
  it('creates a bucket, puts, gets, lists and deletes an object', async () => {
    expect(s3.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const bucket = `smoke-${randomBytes(6).toString('hex')}`;
    const body = randomBytes(100_000);
    await client.send(new CreateBucketCommand({ Bucket: bucket }));

    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'dir/object', Body: body }));
    const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'dir/object' }));
    expect(Buffer.from(await got.Body!.transformToByteArray()).equals(body)).toBe(true);

    const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'dir/' }));
    expect(listed.Contents?.map((o) => [o.Key, o.Size])).toEqual([['dir/object', body.length]]);

    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'dir/object' }));
    const after = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
    expect(after.KeyCount).toBe(0);
    await expect(client.send(new GetObjectCommand({ Bucket: bucket, Key: 'dir/object' }))).rejects.toMatchObject({ name: 'NoSuchKey' });

    await client.send(new DeleteBucketCommand({ Bucket: bucket }));
  });
});
