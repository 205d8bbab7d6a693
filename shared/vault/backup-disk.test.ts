import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, KiB, makeImage, MiB, PASSPHRASE, Sandbox, scanChunks } from '../../test/helpers.js';
import { failure } from '../../test/support/caught.js';
import { LocalStore } from '../store/local-store.js';
import { BackupDisk } from './backup-disk.js';
import type { ChunkIndex } from './chunk-index.js';
import type { Manifest } from './manifest.js';
import { packKey } from './pack.js';
import { Vault } from './vault.js';

// Runs the CLI (bin/cairn.js -> dist/) to make the vault: `npm run build` first.

const CHUNK = 16 * KiB;

describe('BackupDisk', () => {
  let sb: Sandbox;
  let vaultDir: string;
  let image: Buffer;
  let manifest: Manifest;
  let vault: Vault;
  let index: ChunkIndex;
  let zeroDigests: boolean[];

  beforeAll(async () => {
    sb = await Sandbox.create('backup-disk');
    vaultDir = await sb.initVault('vault', ['--chunk-size', '16K']);
    const img = sb.path('disk.img');
    // Not a multiple of the chunk size: the last chunk is short.
    await makeImage(img, [
      { kind: 'random', length: MiB },
      { kind: 'hole', length: 256 * KiB },
      { kind: 'text', length: 512 * KiB },
      { kind: 'zero', length: 64 * KiB },
      { kind: 'random', length: 100 * KiB + 123 },
    ]);
    const args = ['backup', img, '--vault', vaultDir, '--json'];
    const r = await sb.cairn(args);
    expectOk(r, args);
    image = await readFile(img);
    zeroDigests = (await scanChunks(img, CHUNK)).digests.map((d) => d === 'zero');
    vault = await Vault.open(new LocalStore(vaultDir), PASSPHRASE);
    index = (await vault.loadIndex({ includeCondemned: true })).index;
    manifest = await vault.findBackup((JSON.parse(r.stdout) as { id: string }).id);
  });

  afterAll(async () => {
    await sb?.cleanup();
  });

  const open = (opts = {}) => BackupDisk.open(vault, index, manifest.disks[0], opts);

  it('reads the whole disk and any range exactly as the image was', async () => {
    const disk = await open();
    expect(disk.size).toBe(image.length);
    expect(disk.chunkSize).toBe(CHUNK);
    expect((await disk.read(0, disk.size)).equals(image)).toBe(true);
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let i = 0; i < 200; i++) {
      const offset = rand(image.length);
      const length = rand(Math.min(image.length - offset, 3 * CHUNK) + 1);
      const got = await disk.read(offset, length);
      expect(got.equals(image.subarray(offset, offset + length)), `read ${length} at ${offset}`).toBe(true);
    }
    expect((await disk.read(image.length, 0)).length).toBe(0);
    expect((await failure(disk.read(image.length - 10, 11))).code === 'USAGE').toBe(true);
  });

  it('reports zero and data runs from the block map', async () => {
    const disk = await open();
    const extents = disk.extents();
    const expected: { offset: number; length: number; zero: boolean }[] = [];
    zeroDigests.forEach((zero, p) => {
      const length = Math.min(CHUNK, image.length - p * CHUNK);
      const last = expected[expected.length - 1];
      if (last && last.zero === zero) last.length += length;
      else expected.push({ offset: p * CHUNK, length, zero });
    });
    expect(extents).toEqual(expected);
    // The hole and the written zeros form one zero run, between the random and the text regions.
    expect(extents.filter((e) => e.zero)).toEqual([{ offset: MiB, length: 256 * KiB + 0, zero: true }, { offset: MiB + 768 * KiB, length: 64 * KiB, zero: true }]);
    // A clipped query.
    expect(disk.extents(MiB - 100, 200)).toEqual([
      { offset: MiB - 100, length: 100, zero: false },
      { offset: MiB, length: 100, zero: true },
    ]);
  });

  it('reads zero chunks without I/O, fetches each chunk once and merges neighbours into one get', async () => {
    const disk = await open();
    expect((await disk.read(MiB, 256 * KiB)).equals(Buffer.alloc(256 * KiB))).toBe(true);
    expect(disk.stats.gets).toBe(0);
    // Eight concurrent reads of the same 1 MiB (64 chunks of one pack): one get, 64 decodes.
    const reads = await Promise.all(Array.from({ length: 8 }, () => disk.read(0, MiB)));
    for (const r of reads) expect(r.equals(image.subarray(0, MiB))).toBe(true);
    expect(disk.stats.gets).toBe(1);
    expect(disk.stats.chunksDecoded).toBe(MiB / CHUNK);
    // Cached now.
    await disk.read(CHUNK, 2 * CHUNK);
    expect(disk.stats.gets).toBe(1);
  });

  it('keeps the cache within its byte bound', async () => {
    const disk = await open({ cacheBytes: 4 * CHUNK });
    await disk.read(0, MiB);
    const gets = disk.stats.gets;
    await disk.read(MiB - CHUNK, CHUNK); // among the last four: cached
    expect(disk.stats.gets).toBe(gets);
    await disk.read(0, CHUNK); // evicted long ago
    expect(disk.stats.gets).toBe(gets + 1);
  });

  it('reads ahead for a sequential reader', async () => {
    const disk = await open({ readAhead: 512 * KiB });
    await disk.read(0, 4 * KiB);
    await disk.read(4 * KiB, 4 * KiB); // sequential: starts the read-ahead
    await new Promise((r) => setTimeout(r, 200));
    // Every later read inside the window finds its chunk fetched (or in flight) already.
    const hits = disk.stats.cacheHits;
    let reads = 0;
    for (let at = 8 * KiB; at < 512 * KiB; at += 4 * KiB, reads++) {
      expect((await disk.read(at, 4 * KiB)).equals(image.subarray(at, at + 4 * KiB))).toBe(true);
    }
    expect(disk.stats.cacheHits - hits).toBeGreaterThanOrEqual(reads);
  });

  it('fails with VAULT_CORRUPT naming the chunk and offset when a chunk is damaged or its pack is missing', async () => {
    const copy = sb.path('damaged');
    await cp(vaultDir, copy, { recursive: true });
    const v = await Vault.open(new LocalStore(copy), PASSPHRASE);
    const idx = (await v.loadIndex({ includeCondemned: true })).index;
    const map = await v.readBlockMap(manifest.disks[0].blockMap);
    const p = 3;
    const id = map.id(p);
    const loc = idx.get(id)!;
    const packFile = join(copy, packKey(loc.packId));
    const pack = await readFile(packFile);
    pack[loc.offset + 20] ^= 0xff;
    await writeFile(packFile, pack);

    const disk = await BackupDisk.open(v, idx, manifest.disks[0]);
    const err = await failure(disk.read(p * CHUNK + 100, 10));
    expect(err.code, err.message).toBe('VAULT_CORRUPT');
    expect(err.message).toContain(id.toString('hex'));
    expect(err.message).toContain(`disk offset ${p * CHUNK}`);
    // Neighbours still read; the damaged chunk is never cached and fails again.
    expect((await disk.read(0, CHUNK)).equals(image.subarray(0, CHUNK))).toBe(true);
    expect((await failure(disk.read(p * CHUNK, 1))).code).toBe('VAULT_CORRUPT');

    await rm(packFile);
    const gone = await BackupDisk.open(v, idx, manifest.disks[0]);
    const err2 = await failure(gone.read(MiB + 256 * KiB, 10));
    expect(err2.code, err2.message).toBe('VAULT_CORRUPT');
    expect(err2.message).toMatch(new RegExp(`disk offset ${MiB + 256 * KiB}\\b.*pack ${loc.packId}`));
  });
});
