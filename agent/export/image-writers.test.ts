import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { ImageSource } from './image-source.js';
import { qcow2Image, qcow2Layout } from './qcow2-image.js';
import { rawImage } from './raw-image.js';
import { vmdkImage } from './vmdk-image.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A disk in memory: deterministic bytes in the listed chunk positions, zeros elsewhere. */
function memoryDisk(size: number, chunkSize: number, data: number[]): ImageSource & { reads: number } {
  const set = new Set(data);
  const chunk = (p: number): Buffer => {
    const b = Buffer.alloc(Math.min(chunkSize, size - p * chunkSize));
    for (let at = 0; at < b.length; at += 32) createHash('sha256').update(`${p}:${at}`).digest().copy(b, at);
    return b;
  };
  const disk = {
    size,
    chunkSize,
    reads: 0,
    isZero: (p: number) => !set.has(p),
    async read(offset: number, length: number) {
      disk.reads += length;
      const out = Buffer.alloc(length);
      for (let p = Math.floor(offset / chunkSize); p * chunkSize < offset + length; p++) {
        if (!set.has(p)) continue;
        const c = chunk(p);
        const from = Math.max(offset, p * chunkSize);
        const to = Math.min(offset + length, p * chunkSize + c.length);
        c.copy(out, from - offset, from - p * chunkSize, to - p * chunkSize);
      }
      return out;
    },
  };
  return disk;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cairn-image-writers-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeImage(path: string, bytes: AsyncIterable<Buffer>): Promise<number> {
  const fh = await open(path, 'w');
  let at = 0;
  try {
    for await (const b of bytes) {
      await fh.write(b, 0, b.length, at);
      at += b.length;
    }
  } finally {
    await fh.close();
  }
  return at;
}

function qemuImg(args: string[]): { code: number; out: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`qemu-img cannot run (${r.error.message}); install qemu-utils`);
  return { code: r.status ?? -1, out: r.stdout + r.stderr };
}

describe('qcow2 layout', () => {
  it('refcount blocks cover every host cluster, themselves included', () => {
    // 3 GiB of data: more host clusters than one refcount block (32768) covers.
    const chunks = (3 * GiB) / (64 * KiB);
    const L = qcow2Layout(memoryDisk(3 * GiB, 64 * KiB, Array.from({ length: chunks }, (_, i) => i)));
    expect(L.dataClusters).toBe(chunks);
    expect(L.refBlocks).toBe(2);
    expect(L.refBlocks * 32768).toBeGreaterThanOrEqual(L.hostClusters);
    expect(L.l1Entries).toBe(6);
    expect(L.hostClusters).toBe(1 + L.l1Clusters + L.refTableClusters + L.refBlocks + L.l2Tables + L.dataClusters);
  });

  it('chunks larger and smaller than a cluster map to the clusters they overlap', () => {
    expect(qcow2Layout(memoryDisk(16 * MiB, 1 * MiB, [3])).dataClusters).toBe(16);
    expect(qcow2Layout(memoryDisk(16 * MiB, 4 * KiB, [0, 1, 17])).dataClusters).toBe(2);
    // A last cluster shorter than 64 KiB is stored whole.
    expect(qcow2Layout(memoryDisk(64 * KiB + 512, 4 * KiB, [16])).dataClusters).toBe(1);
  });
});

describe('images of a large sparse disk pass qemu-img check and compare', () => {
  // 24 GiB with data at the start, across an L2 boundary (512 MiB) and in the last, partial chunk.
  const size = 24 * GiB + 3 * 512;
  const chunkSize = 64 * KiB;
  const last = Math.floor((size - 1) / chunkSize);
  const data = [0, 1, 2, 8191, 8192, 8193, 350_000, last];

  for (const [format, make] of [
    ['raw', rawImage],
    ['qcow2', qcow2Image],
    ['vmdk', vmdkImage],
  ] as const) {
    it(format, async () => {
      const src = memoryDisk(size, chunkSize, data);
      const path = join(dir, `disk.${format}`);
      if (format === 'raw') {
        // A raw image of 24 GiB is 24 GiB of bytes: check only that zero chunks are never read.
        let produced = 0;
        for await (const b of make(src)) produced += b.length;
        expect(produced).toBe(size);
        expect(src.reads).toBeLessThanOrEqual(data.length * chunkSize);
        return;
      }
      const written = await writeImage(path, make(src));
      expect(written).toBeLessThan(2 * MiB);
      const check = qemuImg(['check', '-f', format, path]);
      expect(check.out).toContain('No errors were found');
      expect(check.code, check.out).toBe(0);
      // The expected disk as a sparse raw file: only the data chunks written.
      const reference = join(dir, `reference-${format}.raw`);
      await writeImage(reference, (async function* () {})());
      const fh = await open(reference, 'r+');
      await fh.truncate(size);
      for (const p of data) {
        const len = Math.min(chunkSize, size - p * chunkSize);
        const b = await memoryDisk(size, chunkSize, data).read(p * chunkSize, len);
        await fh.write(b, 0, b.length, p * chunkSize);
      }
      await fh.close();
      const cmp = qemuImg(['compare', '-f', 'raw', '-F', format, reference, path]);
      expect(cmp.out).toContain('Images are identical');
      expect(cmp.code).toBe(0);
      await rm(reference);
    });
  }
});
