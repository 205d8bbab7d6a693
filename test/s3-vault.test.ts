/**
 * Vaults in S3 through the real CLI, against a real S3 server (Ceph radosgw, started once for the
 * run by test/support/s3-global-setup.ts): request counts, flaky networks, immutable vaults and bad
 * locations. The backup/restore/gc/verify scenarios of the vault core run against S3 too, in
 * backup-restore.test.ts and gc-verify.test.ts.
 */
import { randomBytes } from 'node:crypto';

import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest';

import type { RequestCounts } from '../shared/store/object-store.js';
import { randomFaults, startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { unusedPort, expectCliError, exitCode, makeImage, MiB, s3Target, Sandbox, sha256File, writeAt, type BackupJson } from './helpers.js';

const s3 = inject('s3');
const awsEnv = s3Target.env;
const client = s3Target.s3;
const newBucket = (opts: { objectLock?: boolean } = {}) => s3Target.newBucket(opts);
const vaultUrl = (bucket: string, prefix = 'vault', endpoint?: string) => s3Target.url(bucket, prefix, endpoint);

/** Every object in the bucket under `prefix`, with its full key. */
async function objects(bucket: string, prefix = ''): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.set(o.Key!, o.Size ?? 0);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

let sb: Sandbox;
beforeEach(async () => {
  sb = await Sandbox.create('s3');
});
afterEach(async () => {
  await sb.cleanup();
});
afterAll(() => s3Target.close());

const cairn = (args: string[], env: Record<string, string | undefined> = {}) => sb.cairn(args, { env: { ...awsEnv, ...env } });
async function cairnJson<T>(args: string[], env: Record<string, string | undefined> = {}): Promise<T> {
  return sb.cairnJson<T>(args, { env: { ...awsEnv, ...env } });
}

async function restoresTo(vault: string, name: string, sha: string): Promise<void> {
  const to = sb.path(`restored-${name}-${randomBytes(3).toString('hex')}.img`);
  const r = await cairn(['restore', name, '--vault', vault, '--to', to]);
  expect(r.code, r.stderr).toBe(0);
  expect(await sha256File(to)).toBe(sha);
}

describe('S3 vaults are cheap in requests', () => {
  it('a backup costs one PUT per 32 MiB pack plus four, listing reads manifests only, gc is O(packs)', async () => {
    const bucket = await newBucket();
    const vault = vaultUrl(bucket);
    expect((await cairn(['vault', 'init', vault])).code).toBe(0);
    const image = sb.path('disk.img');
    await makeImage(image, [
      { kind: 'random', length: 96 * MiB },
      { kind: 'hole', length: 32 * MiB },
    ]);
    const full = await cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'full', '--json']);
    const gib = full.bytesStored / 1024 ** 3;
    const packs = [...(await objects(bucket, 'vault/packs/')).keys()];
    // 96 MiB of random data in 32 MiB packs: 4 packs (a pack closes just under its size).
    expect(packs.length).toBe(4);
    // One PUT per pack, plus a fixed four per backup: lease, index object, block map, manifest. At
    // 32 MiB per pack that is 32 per GiB plus four: under the target of 70 for any backup that
    // stores more than 0.11 GiB (bench/README.md has the numbers for a 3 GB backup).
    expect(full.requests.PUT).toBe(packs.length + 4);
    expect((full.requests.PUT - 4) / gib).toBeLessThanOrEqual(70 - 4);
    expect(full.requests.POST).toBe(0);
    const sha1 = await sha256File(image);

    await writeAt(image, 5 * MiB, randomBytes(MiB));
    const incr = await cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'incr', '--json']);
    expect(incr.kind).toBe('incremental');
    expect(incr.requests.PUT).toBeLessThanOrEqual(6);

    // Listing reads the config, lists and reads the key file, lists the manifests and reads each one:
    // nothing else (no packs, no index, no block maps), counted on the wire by a proxy.
    const proxy = await startFaultProxy(s3.endpoint);
    try {
      const list = await cairn(['backups', 'list', '--vault', vaultUrl(bucket, 'vault', proxy.url), '--json']);
      expect(list.code, list.stderr).toBe(0);
      expect((JSON.parse(list.stdout) as { name: string }[]).map((b) => b.name)).toEqual(['full', 'incr']);
      expect(proxy.counts).toEqual({ PUT: 0, POST: 0, GET: 1 + 1 + 2, HEAD: 0, LIST: 2, DELETE: 0 });
    } finally {
      await proxy.close();
    }

    await restoresTo(vault, 'full', sha1);
    await restoresTo(vault, 'incr', await sha256File(image));

    expect((await cairn(['backups', 'delete', 'full', '--vault', vault])).code).toBe(0);
    const gc = await cairnJson<{ packsDeleted: number; packsRepacked: number; requests: RequestCounts }>(['vault', 'gc', '--vault', vault, '--grace', '0', '--json']);
    const packsNow = (await objects(bucket, 'vault/packs/')).size;
    // O(packs): a handful of requests per pack touched, independent of the ~1500 chunks.
    const touched = gc.packsDeleted + gc.packsRepacked + packsNow;
    const total = Object.values(gc.requests).reduce((a, b) => a + b, 0);
    expect(total).toBeLessThanOrEqual(30 + 4 * touched);
    await restoresTo(vault, 'incr', await sha256File(image));
    const verify = await cairn(['vault', 'verify', '--vault', vault, '--read-data']);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });
});

describe('S3 vaults survive a flaky network', () => {
  let proxy: FaultProxy;
  beforeAll(async () => {
    proxy = await startFaultProxy(s3.endpoint);
  });
  afterAll(async () => {
    await proxy.close();
  });

  it('completes a backup through errors, resets, throttling and cut uploads, and the vault verifies', async () => {
    const bucket = await newBucket();
    const direct = vaultUrl(bucket);
    const flaky = vaultUrl(bucket, 'vault', proxy.url);
    expect((await cairn(['vault', 'init', direct, '--pack-size', '4M'])).code).toBe(0);
    const image = sb.path('disk.img');
    await makeImage(image, [
      { kind: 'random', length: 24 * MiB },
      { kind: 'text', length: 8 * MiB },
    ]);
    proxy.resetCounts();
    proxy.setFaults(
      randomFaults({
        seed: 7,
        rate: 0.2,
        faults: [
          { type: 'status', status: 503, code: 'SlowDown' },
          { type: 'status', status: 500, code: 'InternalError' },
          { type: 'reset' },
          { type: 'cut-upload', afterBytes: 100_000 },
          { type: 'cut-download', afterBytes: 10 },
        ],
      }),
    );
    const r = await cairn(['backup', image, '--vault', flaky, '--name', 'flaky', '--json']);
    proxy.setFaults(undefined);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/cairn: warning: .*retrying/);
    const b = JSON.parse(r.stdout) as BackupJson;
    // Cairn counts every attempt, failed ones too: exactly what went over the wire.
    const total = (c: RequestCounts) => Object.values(c).reduce((x, y) => x + y, 0);
    expect(total(b.requests)).toBe(total(proxy.counts));
    expect(b.requests.PUT).toBe(proxy.counts.PUT);
    const retries = r.stderr.split('\n').filter((l) => l.includes('retrying')).length;
    expect(retries).toBeGreaterThan(3);
    await restoresTo(direct, 'flaky', await sha256File(image));
    const verify = await cairn(['vault', 'verify', '--vault', direct, '--read-data']);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it('fails cleanly when the store stays down, leaves no manifest, and the rerun reuses the uploaded packs', async () => {
    const bucket = await newBucket();
    const direct = vaultUrl(bucket);
    const flaky = vaultUrl(bucket, 'vault', proxy.url);
    expect((await cairn(['vault', 'init', direct, '--pack-size', '4M'])).code).toBe(0);
    const image = sb.path('disk.img');
    await makeImage(image, [{ kind: 'random', length: 40 * MiB }]);
    // After five packs went up, every pack upload fails: the store is "down" for packs.
    let packPuts = 0;
    proxy.setFaults((req) =>
      req.kind === 'PUT' && req.key.includes('/packs/') && ++packPuts > 5 ? { type: 'status', status: 503, code: 'ServiceUnavailable' } : undefined,
    );
    const failed = await cairn(['backup', image, '--vault', flaky, '--name', 'try']);
    proxy.setFaults(undefined);
    expect(failed.code).toBe(exitCode('STORE_UNAVAILABLE'));
    expect(failed.stderr.trim().split('\n').pop()).toMatch(/^cairn: error: put packs\/.* on s3:\/\/.*\/vault\/: .*ServiceUnavailable/);
    expect(await objects(bucket, 'vault/backups/')).toEqual(new Map());
    const verify = await cairn(['vault', 'verify', '--vault', direct]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const packsLeft = (await objects(bucket, 'vault/packs/')).size;
    expect(packsLeft).toBeGreaterThanOrEqual(5);

    const rerun = await cairnJson<BackupJson>(['backup', image, '--vault', direct, '--name', 'try', '--json']);
    // The five packs that went up are found by their headers and reused, not uploaded again.
    expect(rerun.recoveredPacks).toBe(5);
    // Only the packs that were missing went up again.
    const packsAfter = (await objects(bucket, 'vault/packs/')).size;
    expect(rerun.requests.PUT).toBeLessThanOrEqual(packsAfter - packsLeft + 5);
    await restoresTo(direct, 'try', await sha256File(image));
  });
});

describe('bandwidth limits', () => {
  it('--limit-upload and --limit-download hold the transfer to the rate; a bad rate is a usage error', async () => {
    const bucket = await newBucket();
    const vault = vaultUrl(bucket);
    expect((await cairn(['vault', 'init', vault, '--pack-size', '4M'])).code).toBe(0);
    const image = sb.path('disk.img');
    await makeImage(image, [{ kind: 'random', length: 12 * MiB }]);
    // 12 MiB at 4 MiB/s: the third pack cannot start before two seconds have passed. Only a lower bound
    // is checked: a slow machine may take longer, never shorter.
    const t0 = performance.now();
    const b = await cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'slow', '--limit-upload', '4', '--json']);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(2000);
    expect(b.bytesStored).toBeGreaterThan(12 * MiB);
    const to = sb.path('restored.img');
    const t1 = performance.now();
    const r = await cairn(['restore', 'slow', '--vault', vault, '--to', to, '--limit-download', '6']);
    expect(r.code, r.stderr).toBe(0);
    expect(performance.now() - t1).toBeGreaterThanOrEqual(1500);
    expect(await sha256File(to)).toBe(await sha256File(image));
    const bad = await cairn(['backup', image, '--vault', vault, '--limit-upload', 'fast']);
    expectCliError(bad, 'USAGE', "--limit-upload 'fast'", 'MiB/s');
  });
});

describe('immutable S3 vaults', () => {
  it('keeps backups under Object Lock: delete before the date is refused, gc frees nothing protected', async () => {
    const bucket = await newBucket({ objectLock: true });
    const vault = vaultUrl(bucket);
    const init = await cairn(['vault', 'init', vault, '--immutable-days', '3', '--json']);
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ immutability: { days: 3, generationDays: 3 } });
    const image = sb.path('disk.img');
    await makeImage(image, [{ kind: 'random', length: 8 * MiB }, { kind: 'hole', length: 8 * MiB }]);
    await cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'first', '--json']);
    const sha1 = await sha256File(image);
    await writeAt(image, 0, randomBytes(8 * MiB));
    await cairnJson<BackupJson>(['backup', image, '--vault', vault, '--name', 'second', '--json']);

    const del = await cairn(['backups', 'delete', 'first', '--vault', vault]);
    expectCliError(del, 'IMMUTABLE', 'first', 'immutable until', 'delete it after that date');
    // Even straight through S3, the pack cannot be removed: Object Lock, not Cairn, refuses.
    const before = await objects(bucket, 'vault/');
    const gc = await cairnJson<{ packsDeleted: number }>(['vault', 'gc', '--vault', vault, '--grace', '0', '--json']);
    expect(gc.packsDeleted).toBe(0);
    expect(await objects(bucket, 'vault/packs/')).toEqual(new Map([...before].filter(([k]) => k.startsWith('vault/packs/'))));
    await restoresTo(vault, 'first', sha1);
    await restoresTo(vault, 'second', await sha256File(image));
  });

  it('refuses --immutable-days on a bucket without Object Lock, saying what to do', async () => {
    const bucket = await newBucket();
    const r = await cairn(['vault', 'init', vaultUrl(bucket), '--immutable-days', '7']);
    expectCliError(r, 'USAGE', `s3://${bucket}/vault/`, 'Object Lock');
    expect(await objects(bucket)).toEqual(new Map());
  });
});

describe('bad S3 locations', () => {
  it('an unknown bucket', async () => {
    const r = await cairn(['backups', 'list', '--vault', vaultUrl('no-such-bucket-zz')]);
    expectCliError(r, 'VAULT_NOT_FOUND', 'no-such-bucket-zz', 'does not exist');
  });

  it('wrong credentials, without showing the secret', async () => {
    const bucket = await newBucket();
    const secret = `not-the-secret-${randomBytes(6).toString('hex')}`;
    const r = await cairn(['backups', 'list', '--vault', vaultUrl(bucket)], { AWS_SECRET_ACCESS_KEY: secret });
    expectCliError(r, 'PERMISSION_DENIED', `s3://${bucket}/vault/`, 'AWS_SECRET_ACCESS_KEY');
    expect(r.stderr).not.toContain(secret);
  });

  it('no credentials at all', async () => {
    const bucket = await newBucket();
    const r = await cairn(['backups', 'list', '--vault', vaultUrl(bucket)], { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined });
    expectCliError(r, 'PERMISSION_DENIED', 'no AWS credentials');
  });

  it('an endpoint where nothing listens, after retrying', async () => {
    const port = await unusedPort();
    const r = await cairn(['backups', 'list', '--vault', vaultUrl('some-bucket', 'vault', `http://127.0.0.1:${port}`)]);
    expect(r.code).toBe(exitCode('STORE_UNAVAILABLE'));
    const lines = r.stderr.trim().split('\n');
    expect(lines.at(-1)).toMatch(new RegExp(`^cairn: error: .*cannot reach http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\)`));
    expect(lines.slice(0, -1).every((l) => l.startsWith('cairn: warning: ') && l.includes('retrying'))).toBe(true);
    expect(r.stderr).not.toContain('    at ');
  });

  it('a bucket that holds no vault, and a prefix that holds another vault', async () => {
    const bucket = await newBucket();
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'photos/cat.jpg', Body: 'meow' }));
    const none = await cairn(['backups', 'list', '--vault', vaultUrl(bucket, 'photos')]);
    expectCliError(none, 'VAULT_NOT_FOUND', `s3://${bucket}/photos/`, 'cairn vault init');
    const notEmpty = await cairn(['vault', 'init', vaultUrl(bucket, 'photos')]);
    expectCliError(notEmpty, 'VAULT_EXISTS', `s3://${bucket}/photos/ is not empty`, 'cat.jpg');

    expect((await cairn(['vault', 'init', vaultUrl(bucket, 'team/a')])).code).toBe(0);
    const again = await cairn(['vault', 'init', vaultUrl(bucket, 'team/a')]);
    expectCliError(again, 'VAULT_EXISTS', `s3://${bucket}/team/a/`);
    const parent = await cairn(['vault', 'init', vaultUrl(bucket, 'team')]);
    expectCliError(parent, 'VAULT_EXISTS', 'another vault under a/');
    // Nothing was written by the refused inits.
    const all = [...(await objects(bucket)).keys()];
    expect(all.filter((k) => !k.startsWith('team/a/'))).toEqual(['photos/cat.jpg']);
    const cat = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'photos/cat.jpg' }));
    expect(await cat.Body!.transformToString()).toBe('meow');
  });

  it('a malformed URL', async () => {
    const r = await cairn(['backups', 'list', '--vault', 's3://Bad_Bucket/x']);
    expectCliError(r, 'USAGE', 'Bad_Bucket', 's3://bucket/prefix');
  });
});
