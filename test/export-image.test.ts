/**
 * Export of a backup's disk as a cloud image (`cairn restore … --to s3://bucket/key.qcow2|.vmdk|.raw`
 * and local image files), checked with the real tools: every object is downloaded and must pass
 * `qemu-img check` and compare identical (`qemu-img compare`) to the disk as it was at that backup.
 * Bad input and interrupted exports must leave neither an object nor a multipart upload behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, readdir, stat, writeFile } from 'node:fs/promises';

import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';

import { startFaultProxy } from './support/fault-proxy.js';
import {
  allocatedBytes,
  cliPath,
  expectCliError,
  exitCode,
  makeImage,
  MiB,
  PASSPHRASE,
  s3Target,
  Sandbox,
  sha256File,
  unusedPort,
  writeAt,
} from './helpers.js';

const s3 = inject('s3');
const client = s3Target.s3;
const SIZE = 40 * MiB;

let sb: Sandbox;
let vault: string;
/** The image as it was at backup 'full', and at backup 'incr' (after a change). */
let fullImage: string;
let incrImage: string;

beforeAll(async () => {
  sb = await Sandbox.create('export', { env: s3Target.env });
  vault = await sb.initVault('vault');
  const image = sb.path('disk.img');
  await makeImage(image, [
    { kind: 'random', length: 6 * MiB },
    { kind: 'hole', length: 8 * MiB },
    { kind: 'text', length: 3 * MiB + 12345 },
    { kind: 'hole', length: 13 * MiB - 12345 },
    { kind: 'random', length: 2 * MiB },
    { kind: 'zero', length: 4 * MiB },
    { kind: 'hole', length: 3 * MiB },
    { kind: 'random', length: 1 * MiB },
  ]);
  expect((await stat(image)).size).toBe(SIZE);
  await backup(image, 'full');
  fullImage = sb.path('at-full.img');
  await copyFile(image, fullImage);
  // The change: data in a hole, and an overwrite inside the first random region.
  await writeAt(image, 20 * MiB + 4096, randomBytes(MiB));
  await writeAt(image, 1 * MiB + 100, Buffer.alloc(200 * 1024, 'changed '));
  await backup(image, 'incr');
  incrImage = sb.path('at-incr.img');
  await copyFile(image, incrImage);
});
afterAll(async () => {
  await sb?.cleanup();
  await s3Target.close();
});

async function backup(source: string, name: string): Promise<void> {
  const r = await sb.cairn(['backup', source, '--vault', vault, '--name', name]);
  expect(r.code, r.stderr).toBe(0);
}

interface ExportJson {
  id: string;
  name: string;
  disks: { index: number; format: string; target: string; url?: string; path?: string; size: number; bytesRead: number; bytesWritten: number; bytesUploaded?: number; durationMs: number }[];
}

async function exportJson(args: string[]): Promise<ExportJson> {
  return sb.cairnJson<ExportJson>(['restore', ...args, '--vault', vault, '--json']);
}

/** Downloads an object to a file of the sandbox; returns the path. */
async function download(bucket: string, key: string): Promise<string> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const path = sb.path(`dl-${randomBytes(4).toString('hex')}-${key.replaceAll('/', '_')}`);
  await writeFile(path, await res.Body!.transformToByteArray());
  return path;
}

async function keys(bucket: string): Promise<string[]> {
  const page = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (page.Contents ?? []).map((o) => o.Key!).sort();
}

async function pendingUploads(bucket: string): Promise<string[]> {
  const page = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return (page.Uploads ?? []).map((u) => u.Key!);
}

function qemuImg(args: string[]): { code: number; out: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`qemu-img cannot run (${r.error.message}); install qemu-utils`);
  return { code: r.status ?? -1, out: r.stdout + r.stderr };
}

function expectCheckClean(path: string, format: string): void {
  const r = qemuImg(['check', '-f', format, path]);
  expect(r.out).toContain('No errors were found');
  expect(r.code, r.out).toBe(0);
}

function expectIdentical(original: string, image: string, format: string): void {
  const r = qemuImg(['compare', '-f', 'raw', '-F', format, original, image]);
  expect(r.out).toContain('Images are identical');
  expect(r.code, r.out).toBe(0);
}

describe('exporting to an S3 bucket', () => {
  it('streams qcow2, VMDK and raw images that check clean and equal the disk at the backup', async () => {
    const bucket = await s3Target.newBucket();
    for (const [ext, format] of [['qcow2', 'qcow2'], ['vmdk', 'vmdk'], ['raw', 'raw']] as const) {
      const key = `images/full.${ext}`;
      const j = await exportJson(['full', '--to', s3Target.url(bucket, key)]);
      expect(j.name).toBe('full');
      const d = j.disks[0];
      expect(d).toMatchObject({ index: 0, format, url: `s3://${bucket}/${key}`, size: SIZE });
      const file = await download(bucket, key);
      const objectSize = (await stat(file)).size;
      expect(d.bytesUploaded).toBe(objectSize);
      // Data chunks only are read from the vault: the holes and the zero region are never fetched.
      expect(d.bytesRead).toBeLessThanOrEqual(13 * MiB);
      if (format !== 'raw') expectCheckClean(file, format);
      expectIdentical(fullImage, file, format);
      if (format === 'raw') {
        expect(objectSize).toBe(SIZE);
        expect(await sha256File(file)).toBe(await sha256File(fullImage));
      } else {
        // Sparse: about the 12.3 MiB of data plus metadata (VMDK is compressed too), far below 40 MiB.
        expect(objectSize).toBeLessThan(14 * MiB);
        const info = JSON.parse(qemuImg(['info', '--output=json', '-f', format, file]).out) as { 'virtual-size': number };
        expect(info['virtual-size']).toBe(SIZE);
      }
    }
    // qemu-img convert reads the streamOptimized VMDK as VMware's importers do: front to back.
    const vmdk = await download(bucket, 'images/full.vmdk');
    const converted = sb.path('converted.raw');
    expect(qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', vmdk, converted]).code).toBe(0);
    expect(await sha256File(converted)).toBe(await sha256File(fullImage));
    expect(await keys(bucket)).toEqual(['images/full.qcow2', 'images/full.raw', 'images/full.vmdk']);
    expect(await pendingUploads(bucket)).toEqual([]);
  });

  it('an incremental backup exports as the changed disk; small parts and --format work', async () => {
    const bucket = await s3Target.newBucket();
    const j = await exportJson(['incr', '--to', s3Target.url(bucket, 'incr.qcow2')]);
    expect(j.disks[0].format).toBe('qcow2');
    const file = await download(bucket, 'incr.qcow2');
    expectCheckClean(file, 'qcow2');
    expectIdentical(incrImage, file, 'qcow2');
    // Not identical to the disk at the first backup: the export is of the backup asked for.
    expect(qemuImg(['compare', '-q', '-f', 'raw', '-F', 'qcow2', fullImage, file]).code).toBe(1);

    await exportJson(['incr', '--to', s3Target.url(bucket, 'incr.bin'), '--format', 'vmdk']);
    const vmdk = await download(bucket, 'incr.bin');
    expectCheckClean(vmdk, 'vmdk');
    expectIdentical(incrImage, vmdk, 'vmdk');
    expect(await pendingUploads(bucket)).toEqual([]);
  });

  it('a backup of several disks needs --disk N or {disk} in the key', async () => {
    const a = sb.path('two-a.img');
    const b = sb.path('two-b.img');
    await makeImage(a, [{ kind: 'random', length: MiB }, { kind: 'hole', length: MiB }]);
    await makeImage(b, [{ kind: 'hole', length: MiB }, { kind: 'text', length: 3 * MiB }]);
    const r = await sb.cairn(['backup', a, b, '--vault', vault, '--name', 'two']);
    expect(r.code, r.stderr).toBe(0);
    const bucket = await s3Target.newBucket();
    expectCliError(await sb.cairn(['restore', 'two', '--vault', vault, '--to', s3Target.url(bucket, 'two.qcow2')]), 'USAGE', 'has 2 disks', '{disk}');
    const j = await exportJson(['two', '--to', s3Target.url(bucket, 'vm/two-{disk}.qcow2')]);
    expect(j.disks.map((d) => d.url)).toEqual([`s3://${bucket}/vm/two-0.qcow2`, `s3://${bucket}/vm/two-1.qcow2`]);
    expectIdentical(a, await download(bucket, 'vm/two-0.qcow2'), 'qcow2');
    expectIdentical(b, await download(bucket, 'vm/two-1.qcow2'), 'qcow2');
    await exportJson(['two', '--disk', '1', '--to', s3Target.url(bucket, 'one.vmdk')]);
    expectIdentical(b, await download(bucket, 'one.vmdk'), 'vmdk');
  });
});

describe('exporting to a local file', () => {
  it('writes qcow2 and VMDK files; a plain path is restored raw and sparse as before', async () => {
    const q = sb.path('local.qcow2');
    const j = await exportJson(['full', '--to', q]);
    expect(j.disks[0]).toMatchObject({ format: 'qcow2', path: q, size: SIZE });
    expectCheckClean(q, 'qcow2');
    expectIdentical(fullImage, q, 'qcow2');
    expect((await stat(q)).size).toBeLessThan(14 * MiB);

    const v = sb.path('local.vmdk');
    await exportJson(['incr', '--to', v]);
    expectCheckClean(v, 'vmdk');
    expectIdentical(incrImage, v, 'vmdk');

    const forced = sb.path('local-image');
    await exportJson(['full', '--to', forced, '--format', 'qcow2']);
    expectIdentical(fullImage, forced, 'qcow2');

    const raw = sb.path('local.img');
    const r = await sb.cairnJson<{ disks: { path: string; bytesWritten: number }[] }>(['restore', 'full', '--vault', vault, '--to', raw, '--json']);
    expect(r.disks[0].path).toBe(raw);
    expect(await sha256File(raw)).toBe(await sha256File(fullImage));
    expect(await allocatedBytes(raw)).toBeLessThan(16 * MiB);
    expect((await readdir(sb.dir)).filter((f) => f.includes('cairn-partial'))).toEqual([]);
  });
});

// Concurrent: the unreachable endpoint spends its time waiting between retries, and every test
// here has its own bucket and files.
describe.concurrent('bad input and failures leave nothing behind', () => {
  it('unknown backup, existing target (then --force), unsupported extension or format', async () => {
    const bucket = await s3Target.newBucket();
    expectCliError(await sb.cairn(['restore', 'nope', '--vault', vault, '--to', s3Target.url(bucket, 'x.qcow2')]), 'NOT_FOUND', 'nope');

    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'taken.qcow2', Body: Buffer.from('old'), ContentLength: 3 }));
    expectCliError(
      await sb.cairn(['restore', 'full', '--vault', vault, '--to', s3Target.url(bucket, 'taken.qcow2')]),
      'ALREADY_EXISTS',
      `s3://${bucket}/taken.qcow2`,
      '--force',
    );
    expect((await stat(await download(bucket, 'taken.qcow2'))).size).toBe(3);
    await exportJson(['full', '--to', s3Target.url(bucket, 'taken.qcow2'), '--force']);
    expectIdentical(fullImage, await download(bucket, 'taken.qcow2'), 'qcow2');

    const local = sb.path('exists.vmdk');
    await writeFile(local, 'old');
    expectCliError(await sb.cairn(['restore', 'full', '--vault', vault, '--to', local]), 'ALREADY_EXISTS', local);

    expectCliError(
      await sb.cairn(['restore', 'full', '--vault', vault, '--to', s3Target.url(bucket, 'disk.vhd')]),
      'USAGE',
      '.qcow2, .vmdk, .raw, .img',
    );
    expectCliError(await sb.cairn(['restore', 'full', '--vault', vault, '--to', sb.path('x.qcow2'), '--format', 'vhdx']), 'USAGE', 'raw, qcow2, vmdk');
    expect(await keys(bucket)).toEqual(['taken.qcow2']);
    expect(await pendingUploads(bucket)).toEqual([]);
  });

  it('a bucket that does not exist is NOT_FOUND, and nothing is created', async () => {
    const bucket = `missing-${randomBytes(4).toString('hex')}`;
    expectCliError(
      await sb.cairn(['restore', 'full', '--vault', vault, '--to', s3Target.url(bucket, 'x.qcow2')]),
      'NOT_FOUND',
      `bucket "${bucket}" does not exist`,
    );
    const { Buckets } = await client.send(new (await import('@aws-sdk/client-s3')).ListBucketsCommand({}));
    expect((Buckets ?? []).map((b) => b.Name)).not.toContain(bucket);
  });

  it('an endpoint where nothing listens is STORE_UNAVAILABLE after retrying', async () => {
    const port = await unusedPort();
    const r = await sb.cairn(['restore', 'full', '--vault', vault, '--to', s3Target.url('somebucket', 'x.qcow2', `http://127.0.0.1:${port}`)]);
    expect(r.code, r.stderr).toBe(exitCode('STORE_UNAVAILABLE'));
    const lines = r.stderr.trim().split('\n');
    expect(lines.at(-1)).toMatch(/^cairn: error: .*cannot reach http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    expect(r.stderr).not.toContain('    at ');
  }, 60_000);

  it('a part the server refuses aborts the upload: no object, no multipart upload', async () => {
    const bucket = await s3Target.newBucket();
    const proxy = await startFaultProxy(s3.endpoint);
    try {
      let parts = 0;
      // The second part is refused for good (403 is not retried); the first went up already.
      proxy.setFaults((req) => (req.kind === 'PUT' && req.query.has('partNumber') && ++parts === 2 ? { type: 'status', status: 403, code: 'AccessDenied' } : undefined));
      const r = await sb.cairn(['restore', 'full', '--vault', vault, '--to', s3Target.url(bucket, 'x.raw', proxy.url)]);
      expectCliError(r, 'PERMISSION_DENIED', 'part 2');
      expect(parts).toBeGreaterThanOrEqual(2);
      expect(proxy.counts.DELETE).toBeGreaterThanOrEqual(1);
    } finally {
      await proxy.close();
    }
    expect(await keys(bucket)).toEqual([]);
    expect(await pendingUploads(bucket)).toEqual([]);
  });

  it('Ctrl-C during the upload aborts it: exit 130, no object, no multipart upload', async () => {
    const bucket = await s3Target.newBucket();
    const proxy = await startFaultProxy(s3.endpoint);
    let partSeen!: () => void;
    const seen = new Promise<void>((r) => (partSeen = r));
    // Parts are held back for a while, so the export is surely mid-upload when the signal comes.
    proxy.setFaults((req) => {
      if (req.kind === 'PUT' && req.query.has('partNumber')) {
        partSeen();
        return { type: 'delay', ms: 1500 };
      }
      return undefined;
    });
    try {
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries({ ...process.env, ...s3Target.env, CAIRN_PASSPHRASE: PASSPHRASE, CAIRN_STATE_DIR: sb.stateDir })) {
        if (v !== undefined && !k.startsWith('CAIRN_DEBUG')) env[k] = v;
      }
      const child = spawn(process.execPath, [cliPath, 'restore', 'full', '--vault', vault, '--to', s3Target.url(bucket, 'x.raw', proxy.url)], {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      await seen;
      child.kill('SIGINT');
      expect(await exited, stderr).toBe(130);
      expect(stderr).toContain('interrupted by SIGINT');
    } finally {
      await proxy.close();
    }
    expect(await keys(bucket)).toEqual([]);
    expect(await pendingUploads(bucket)).toEqual([]);
  });
});
