import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CairnError } from '../../../shared/errors.js';
import type { ArrayDriver, ArrayVolume, SnapshotReader } from './array-driver.js';
import { RbdPool } from '../../../test/support/rbd-pool.js';
import { parseRbdUrl } from './rbd-driver.js';

/**
 * The RBD driver against the real Ceph cluster the test run starts for S3 (one monitor, one OSD in
 * memory): images in a pool of this file's own, written with qemu-io through qemu's rbd driver,
 * checked against what the rbd tool itself reports and exports.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const OBJECT = 4 * MiB;
const cluster = new RbdPool(inject('ceph'), 'cairn-drv');
const { ceph, name: pool, rbd, qemuIo, exportSha } = cluster;
const createImage = (name: string, features?: string): void => cluster.createImage(name, '64M', features);

async function readerSha(reader: SnapshotReader): Promise<string> {
  const h = createHash('sha256');
  // Several reads in flight at once, as the engine reads.
  for (let at = 0; at < reader.size; at += 4 * OBJECT) {
    const pieces = [0, 1, 2, 3].map((i) => at + i * OBJECT).filter((p) => p < reader.size);
    const bufs = pieces.map(() => Buffer.alloc(OBJECT));
    const got = await Promise.all(pieces.map((p, i) => reader.read(bufs[i]!, OBJECT, p)));
    got.forEach((n, i) => h.update(bufs[i]!.subarray(0, n)));
  }
  return h.digest('hex');
}

function driverFor(image = 'x', query = `conf=${encodeURIComponent(ceph.conf)}&id=${ceph.id}`, where = pool): Promise<ArrayDriver> {
  return parseRbdUrl(`rbd://${where}/${image}?${query}`).connect();
}

async function caught(p: Promise<unknown>): Promise<CairnError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof CairnError)) throw new Error(`expected a CairnError, got ${String(err)}`);
  return err;
}

beforeAll(() => {
  cluster.create();
});

afterAll(() => {
  cluster.remove();
});

describe('RBD driver: snapshots, diffs, allocation', () => {
  // With fast-diff (rbd's default features) the driver asks for whole objects; without it, for the exact extents.
  const kinds = [
    { label: 'fast-diff image (whole objects)', features: undefined, image: 'fd' },
    { label: 'image without object map (exact extents)', features: 'layering', image: 'plain' },
  ];

  for (const kind of kinds) {
    it(`${kind.label}: diff reports exactly the writes and discards between two snapshots`, async () => {
      createImage(kind.image, kind.features);
      // Object 0 is written to its end, so later writes inside it are told apart from its growing
      // (rbd reports the growth of an object as changed, from its old end to its new one).
      qemuIo(kind.image, 'write -P 0x01 0 64k', 'write -P 0x01 4092k 4k', 'write -P 0x02 40M 4M', 'write -P 0x03 48M 1M');
      const driver = await driverFor(kind.image);
      const volume = await driver.findVolume(kind.image);
      expect(volume).toMatchObject({ id: kind.image, name: kind.image, size: 64 * MiB });
      const a = await driver.snapshotGroup([volume], 'cairn-test-a');
      expect(a.atomic).toBe(true);

      qemuIo(
        kind.image,
        'write -P 0x11 1M 64k', // inside object 0
        'write -P 0x12 4080k 32k', // across objects 0 and 1 (object 1 is new)
        'write -P 0x13 20M 8k', // object 5, new
        'discard 40M 4M', // object 10, removed
        'write -P 0x14 49664k 4k', // inside object 12
      );
      const b = await driver.snapshotGroup([volume], 'cairn-test-b');
      const [from, to] = [a.snapshots[0]!, b.snapshots[0]!];
      expect((await driver.listSnapshots(volume)).map((s) => s.name)).toEqual(['cairn-test-a', 'cairn-test-b']);

      const diff = await driver.diff(volume, from, to);
      if (kind.features === undefined) {
        expect(diff).toEqual([
          { offset: 0, length: 2 * OBJECT },
          { offset: 5 * OBJECT, length: OBJECT },
          { offset: 10 * OBJECT, length: OBJECT },
          { offset: 12 * OBJECT, length: OBJECT },
        ]);
      } else {
        expect(diff).toEqual([
          { offset: 1 * MiB, length: 64 * KiB },
          { offset: 4080 * KiB, length: 32 * KiB },
          { offset: 20 * MiB, length: 8 * KiB },
          { offset: 40 * MiB, length: 4 * MiB },
          { offset: 49664 * KiB, length: 4 * KiB },
        ]);
      }
      // The snapshot reads back as the rbd tool exports it, while the image has moved on.
      qemuIo(kind.image, 'write -P 0x15 0 4M');
      const reader = await driver.openSnapshot(volume, to);
      try {
        expect(reader.size).toBe(64 * MiB);
        expect(await readerSha(reader)).toBe(exportSha(kind.image, to.name));
      } finally {
        await reader.close();
      }
      await driver.deleteSnapshot(volume, from);
      await driver.deleteSnapshot(volume, from); // gone already: not an error
      await driver.deleteSnapshot(volume, to);
      expect(await driver.listSnapshots(volume)).toEqual([]);
      await driver.close();
    });

    it(`${kind.label}: allocated covers only the written areas of a fresh sparse image`, async () => {
      const image = `${kind.image}-sparse`;
      createImage(image, kind.features);
      qemuIo(image, 'write -P 0x21 1M 64k', 'write -P 0x22 33M 4k');
      const driver = await driverFor(image);
      const volume = await driver.findVolume(image);
      const [snap] = (await driver.snapshotGroup([volume], 'cairn-test-s')).snapshots;
      const allocated = await driver.allocated(volume, snap!);
      if (kind.features === undefined) {
        expect(allocated).toEqual([
          { offset: 0, length: OBJECT },
          { offset: 8 * OBJECT, length: OBJECT },
        ]);
      } else {
        // Each object from its start to its end (rbd reports an object's extent, not holes within it).
        expect(allocated).toEqual([
          { offset: 0, length: 1 * MiB + 64 * KiB },
          { offset: 32 * MiB, length: 1 * MiB + 4 * KiB },
        ]);
      }
      await driver.deleteSnapshot(volume, snap!);
    });
  }

  it('snapshots several images one after another and leaves none behind when one fails', async () => {
    createImage('g1');
    createImage('g2');
    const driver = await driverFor('g1');
    const v1 = await driver.findVolume('g1');
    const v2 = await driver.findVolume('g2');
    const taken = await driver.snapshotGroup([v1, v2], 'cairn-test-g');
    expect(taken.atomic).toBe(false);
    expect(taken.snapshots.map((s) => s.name)).toEqual(['cairn-test-g', 'cairn-test-g']);

    const ghost: ArrayVolume = { id: 'ghost', name: 'ghost', size: 64 * MiB, uid: 'none' };
    const err = await caught(driver.snapshotGroup([v1, ghost], 'cairn-test-h'));
    expect(err.code).toBe('NOT_FOUND');
    expect((await driver.listSnapshots(v1)).map((s) => s.name)).toEqual(['cairn-test-g']);
    for (const v of [v1, v2]) await driver.deleteSnapshot(v, { id: '', name: 'cairn-test-g' });

    // Found by image id too, and listed.
    expect((await driver.findVolume(v2.uid)).name).toBe('g2');
    expect((await driver.listVolumes()).map((v) => v.name)).toEqual(expect.arrayContaining(['g1', 'g2']));
  });
});

describe('RBD driver: what goes wrong says what to do', () => {
  it('a missing image, pool or namespace is NOT_FOUND naming what exists', async () => {
    createImage('present');
    const image = await caught((await driverFor()).findVolume('absent'));
    expect(image.code).toBe('NOT_FOUND');
    expect(image.message).toContain(`there is no RBD image 'absent' in rbd://${pool}`);
    expect(image.message).toMatch(/images there: .*present/);

    const noPool = await caught((await driverFor('img', undefined, 'no-such-pool')).findVolume('img'));
    expect(noPool.code).toBe('NOT_FOUND');
    expect(noPool.message).toContain("there is no pool 'no-such-pool'");
    expect(noPool.message).toContain(pool);

    const noNamespace = await caught((await driverFor('img', undefined, `${pool}/ghost-ns`)).findVolume('img'));
    expect(noNamespace.code).toBe('NOT_FOUND');
    expect(noNamespace.message).toContain(`there is no namespace 'ghost-ns' in pool '${pool}'`);
  });

  it('an unreachable cluster fails within the timeout, a refused client is SOURCE_AUTH_FAILED', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-rbd-conf-'));
    try {
      // Nothing listens on port 1.
      const dead = join(dir, 'dead.conf');
      await writeFile(dead, '[global]\nmon host = v2:127.0.0.1:1\nauth client required = none\n');
      const t0 = Date.now();
      const unreachable = await caught((await driverFor('img', `conf=${dead}&timeout=2`)).findVolume('img'));
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(unreachable.code).toBe('SOURCE_UNREADABLE');
      expect(unreachable.message).toContain('cannot reach the Ceph cluster');
      expect(unreachable.message).toContain('mon_host');

      // The cluster has no cephx; a client that insists on it is turned away.
      const cephx = join(dir, 'cephx.conf');
      await writeFile(cephx, (await readFile(ceph.conf, 'utf8')).replace('auth client required = none', 'auth client required = cephx'));
      const refused = await caught((await driverFor('img', `conf=${cephx}&timeout=5`)).findVolume('img'));
      expect(refused.code).toBe('SOURCE_AUTH_FAILED');
      expect(refused.message).toContain('refused client.admin');

      const missing = await caught((await driverFor('img', `conf=${join(dir, 'none.conf')}`)).findVolume('img'));
      expect(missing.code).toBe('SOURCE_UNREADABLE');
      expect(missing.message).toContain('check the conf= path');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('parses rbd:// URLs and refuses bad ones with USAGE', () => {
    const u = parseRbdUrl('rbd://pool1/ns1/disk%201?conf=/etc/ceph/c.conf&id=client.backup&keyring=/k&timeout=5');
    expect(u).toMatchObject({ location: 'rbd://pool1/ns1', volume: 'disk 1' });
    expect(parseRbdUrl('rbd://pool1/disk1')).toMatchObject({ location: 'rbd://pool1', volume: 'disk1' });
    for (const bad of ['rbd://pool1', 'rbd:///disk', 'rbd://p//d', 'rbd://p/a/b/c', 'rbd://p/d?foo=1', 'rbd://p/d?timeout=0', 'rbd://p/d?conf=', 'rbd://p/d@snap', 'rbd://p/d#x']) {
      expect(() => parseRbdUrl(bad), bad).toThrow(expect.objectContaining({ code: 'USAGE', message: expect.stringContaining('rbd://POOL/IMAGE') }));
    }
  });
});
