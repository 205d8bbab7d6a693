/**
 * S3Store against a real S3 server (Ceph radosgw, started once for the run by
 * test/support/s3-global-setup.ts), directly and through a fault-injecting proxy.
 */
import { randomBytes } from 'node:crypto';

import { CreateMultipartUploadCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';

import { unusedPort, s3Target } from '../../test/helpers.js';
import { failNth, startFaultProxy, type FaultProxy } from '../../test/support/fault-proxy.js';
import { bytes, collect, rejection, runObjectStoreConformance } from './conformance.js';
import { S3Store, type S3StoreOptions } from './s3-store.js';

const MiB = 1024 * 1024;
const s3 = inject('s3');
const fastRetry = { attempts: 4, baseMs: 10, capMs: 50 };

const adminClient = () => s3Target.s3;
const newBucket = (opts: { objectLock?: boolean } = {}) => s3Target.newBucket(opts);

function url(bucket: string, prefix: string, endpoint = s3.endpoint): string {
  return `s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=${s3.region}&path-style=true`;
}

function store(location: string, opts: S3StoreOptions = {}): S3Store {
  return new S3Store(location, { credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }, ...opts });
}

runObjectStoreConformance('S3Store on radosgw', async () => {
  const s = store(url(await newBucket(), 'vault'));
  return { store: s, cleanup: async () => s.destroy() };
});

runObjectStoreConformance('S3Store on radosgw, every object above 1 MiB as a multipart upload', async () => {
  const s = store(url(await newBucket(), 'deep/prefix'), { multipartThreshold: MiB, partSize: 5 * MiB });
  return { store: s, cleanup: async () => s.destroy() };
});

describe('S3Store', () => {
  let bucket: string;
  beforeAll(async () => {
    bucket = await newBucket();
  });

  it('keeps vaults under different prefixes of one bucket apart', async () => {
    const a = store(url(bucket, 'a'));
    const ab = store(url(bucket, 'a-b'));
    await a.put('config', () => Buffer.from('A'));
    await ab.put('config', () => Buffer.from('AB'));
    expect((await collect(a.list(''))).map((o) => o.key)).toEqual(['config']);
    expect((await a.get('config')).toString()).toBe('A');
    expect((await ab.get('config')).toString()).toBe('AB');
    a.destroy();
    ab.destroy();
  });

  it('counts requests by kind: one PUT per small object, parts plus two POSTs for a multipart upload', async () => {
    const s = store(url(bucket, 'count'), { multipartThreshold: 6 * MiB, partSize: 5 * MiB });
    await s.put('small', () => bytes(1000, 1));
    expect(s.requests).toEqual({ PUT: 1, POST: 0, GET: 0, HEAD: 0, LIST: 0, DELETE: 0 });
    const big = bytes(12 * MiB, 2);
    await s.put('big', () => [big.subarray(0, 3 * MiB), big.subarray(3 * MiB)]);
    expect(s.requests.PUT).toBe(1 + 3);
    expect(s.requests.POST).toBe(2);
    expect((await s.get('big')).equals(big)).toBe(true);
    expect(await s.stat('big')).toMatchObject({ size: 12 * MiB });
    await collect(s.list(''));
    await s.delete('small');
    // The first delete asks once whether the bucket is versioned (a GET of the bucket's versioning).
    expect(s.requests).toEqual({ PUT: 4, POST: 2, GET: 2, HEAD: 1, LIST: 1, DELETE: 1 });
    await s.delete('big');
    expect(s.requests).toEqual({ PUT: 4, POST: 2, GET: 2, HEAD: 1, LIST: 1, DELETE: 2 });
    s.destroy();
  });

  it('aborts multipart uploads a crash left behind, only when they are old enough', async () => {
    const s = store(url(bucket, 'stale'));
    const client = adminClient();
    await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: 'stale/packs/00/left-behind' }));
    expect(await s.removeStaleTempFiles(60 * 60 * 1000)).toBe(0);
    expect(await s.removeStaleTempFiles(60 * 60 * 1000, new Date(Date.now() + 2 * 60 * 60 * 1000))).toBe(1);
    const left = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'stale/' }));
    expect(left.Uploads ?? []).toEqual([]);
    s.destroy();
  });

  describe('bad locations, with messages that name the URL and never the secret', () => {
    it('a missing bucket is VAULT_NOT_FOUND', async () => {
      const s = store(url('no-such-bucket-here', 'v'), { retry: fastRetry });
      const err = await rejection(s.get('config'), 'VAULT_NOT_FOUND');
      expect(err.message).toContain('no-such-bucket-here');
      s.destroy();
    });

    it('a wrong secret is PERMISSION_DENIED and the message does not show it', async () => {
      const secret = 'wrong-secret-' + randomBytes(8).toString('hex');
      const s = new S3Store(url(bucket, 'v'), { credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: secret }, retry: fastRetry });
      const err = await rejection(s.get('config'), 'PERMISSION_DENIED');
      expect(err.message).toContain(`s3://${bucket}/v/`);
      expect(err.message).toMatch(/credentials/);
      expect(err.message).not.toContain(secret);
      s.destroy();
    });

    it('an endpoint where nothing listens is STORE_UNAVAILABLE after the retries', async () => {
      const port = await unusedPort();
      const s = store(url(bucket, 'v', `http://127.0.0.1:${port}`), { retry: fastRetry });
      const err = await rejection(s.get('config'), 'STORE_UNAVAILABLE');
      expect(err.message).toContain(`127.0.0.1:${port}`);
      expect(err.message).toContain('ECONNREFUSED');
      expect(s.requests.GET).toBe(fastRetry.attempts);
      s.destroy();
    });
  });

  describe('through a faulty network', () => {
    let proxy: FaultProxy;
    beforeAll(async () => {
      proxy = await startFaultProxy(s3.endpoint);
    });
    afterAll(async () => {
      await proxy.close();
    });

    const viaProxy = (prefix: string, opts: S3StoreOptions = {}) =>
      store(url(bucket, prefix, proxy.url), { retry: fastRetry, idleTimeoutMs: 1000, ...opts });

    it('retries 503 SlowDown and 500, counting each attempt', async () => {
      const s = viaProxy('slowdown');
      let n = 0;
      proxy.setFaults((r) => (r.kind === 'PUT' && n++ < 2 ? { type: 'status', status: n === 1 ? 503 : 500, code: n === 1 ? 'SlowDown' : 'InternalError' } : undefined));
      await s.put('obj', () => bytes(5000, 3));
      proxy.setFaults(undefined);
      expect(s.requests.PUT).toBe(3);
      expect((await s.get('obj')).equals(bytes(5000, 3))).toBe(true);
      s.destroy();
    });

    it('retries a reset connection and a response cut mid-download', async () => {
      const s = viaProxy('reset');
      await s.put('obj', () => bytes(2 * MiB, 4));
      proxy.setFaults(failNth('GET', 1, { type: 'reset' }));
      expect((await s.get('obj')).equals(bytes(2 * MiB, 4))).toBe(true);
      proxy.setFaults(failNth('GET', 1, { type: 'cut-download', afterBytes: MiB }));
      expect((await s.get('obj')).equals(bytes(2 * MiB, 4))).toBe(true);
      proxy.setFaults(undefined);
      expect(s.requests.GET).toBe(4);
      s.destroy();
    });

    it('retries an upload cut in the middle, single and multipart, and stores exactly the body', async () => {
      const s = viaProxy('cut', { multipartThreshold: 6 * MiB, partSize: 5 * MiB });
      proxy.setFaults(failNth('PUT', 1, { type: 'cut-upload', afterBytes: MiB }));
      await s.put('single', () => bytes(3 * MiB, 5), { ifAbsent: true });
      proxy.setFaults(failNth('PUT', 2, { type: 'cut-upload', afterBytes: 2 * MiB }));
      await s.put('multi', () => bytes(11 * MiB, 6), { ifAbsent: true });
      proxy.setFaults(undefined);
      expect((await s.get('single')).equals(bytes(3 * MiB, 5))).toBe(true);
      expect((await s.get('multi')).equals(bytes(11 * MiB, 6))).toBe(true);
      s.destroy();
    });

    it('a conditional put whose reply was lost succeeds on retry when the stored object is its own', async () => {
      const s = viaProxy('lost-reply');
      // The server stores the object, then the client loses the connection before the reply.
      proxy.setFaults(failNth('PUT', 1, { type: 'cut-download', afterBytes: 0 }));
      await s.put('manifest', () => bytes(4000, 7), { ifAbsent: true });
      proxy.setFaults(undefined);
      expect(s.requests.PUT).toBe(2);
      expect((await s.get('manifest')).equals(bytes(4000, 7))).toBe(true);
      // Another body under the same key is still refused.
      await rejection(s.put('manifest', () => bytes(4000, 8), { ifAbsent: true }), 'ALREADY_EXISTS');
      s.destroy();
    });

    it('gives up after the attempts with STORE_UNAVAILABLE and stores nothing', async () => {
      const s = viaProxy('give-up');
      proxy.setFaults((r) => (r.kind === 'PUT' ? { type: 'status', status: 503, code: 'SlowDown' } : undefined));
      await rejection(s.put('obj', () => bytes(100, 9)), 'STORE_UNAVAILABLE');
      proxy.setFaults(undefined);
      expect(s.requests.PUT).toBe(fastRetry.attempts);
      expect(await s.stat('obj')).toBeUndefined();
      s.destroy();
    });
  });

  describe('Object Lock', () => {
    it('a bucket without Object Lock does not support retention', async () => {
      const s = store(url(bucket, 'nolock'));
      expect(await s.supportsRetention()).toBe(false);
      s.destroy();
    });

    it('keeps an object written with a retention date until then: delete is IMMUTABLE', async () => {
      const locked = await newBucket({ objectLock: true });
      const s = store(url(locked, 'v'));
      expect(await s.supportsRetention()).toBe(true);
      const until = new Date(Date.now() + 24 * 3600 * 1000);
      await s.put('packs/00/p1', () => bytes(1000, 10), { ifAbsent: true, retainUntil: until });
      const err = await rejection(s.delete('packs/00/p1'), 'IMMUTABLE');
      expect(err.message).toContain('packs/00/p1');
      expect((await s.get('packs/00/p1')).equals(bytes(1000, 10))).toBe(true);
      // Retention moves forward on request.
      const later = new Date(until.getTime() + 24 * 3600 * 1000);
      await s.extendRetention('packs/00/p1', later);
      const held = (await s.retainedUntil('packs/00/p1'))!.getTime();
      expect(Math.abs(held - later.getTime())).toBeLessThan(1000);
      // An object without retention in the same bucket is deleted, every version of it.
      await s.put('leases/x', () => Buffer.from('lease'));
      await s.delete('leases/x');
      expect(await s.stat('leases/x')).toBeUndefined();
      expect(await collect(s.list('leases/'))).toEqual([]);
      s.destroy();
    });
  });
});
