import { readFile, rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, KiB, makeImage, MiB, PASSPHRASE, Sandbox } from '../../test/helpers.js';
import { failure } from '../../test/support/caught.js';
import { LocalStore } from '../../shared/store/local-store.js';
import { BackupDisk } from '../../shared/vault/backup-disk.js';
import type { Segment } from './block-export.js';
import { OverlayExport, overlayFiles, type OverlayIdentity } from './overlay.js';
import { Vault } from '../../shared/vault/vault.js';

// Runs the CLI (bin/cairn.js -> dist/) to make the backup: `npm run build` first.

function flatten(segments: Segment[], length: number, start: number): Buffer {
  const out = Buffer.alloc(length);
  for (const s of segments) if (s.data) s.data.copy(out, s.offset - start);
  return out;
}

describe('OverlayExport', () => {
  let sb: Sandbox;
  let image: Buffer;
  let disk: BackupDisk;
  let identity: OverlayIdentity;

  beforeAll(async () => {
    sb = await Sandbox.create('overlay');
    const vaultDir = await sb.initVault('vault');
    const img = sb.path('disk.img');
    await makeImage(img, [
      { kind: 'random', length: MiB },
      { kind: 'hole', length: MiB },
      { kind: 'text', length: 512 * KiB + 1000 },
    ]);
    const r = await sb.cairn(['backup', img, '--vault', vaultDir, '--json']);
    expectOk(r);
    image = await readFile(img);
    const vault = await Vault.open(new LocalStore(vaultDir), PASSPHRASE);
    const m = await vault.findBackup((JSON.parse(r.stdout) as { id: string }).id);
    disk = await BackupDisk.open(vault, (await vault.loadIndex({ includeCondemned: true })).index, m.disks[0]);
    identity = { vault: vault.config.id, backup: m.id, disk: 0, size: m.disks[0].size };
  });

  afterAll(async () => {
    await sb?.cleanup();
  });

  const read = async (o: OverlayExport, offset: number, length: number) => flatten(await o.read(offset, length), length, offset);

  it('combines writes with the backup, block by block, and reports zeroed blocks as holes', async () => {
    const path = sb.path('a.overlay');
    const o = await OverlayExport.open('disk0', 'test', disk, path, identity);
    const expected = Buffer.from(image);
    const w1 = Buffer.alloc(5000, 0xcd);
    await o.write(100_000, w1, false); // unaligned, over backup data
    w1.copy(expected, 100_000);
    const w2 = Buffer.alloc(3, 0xee);
    await o.write(MiB + 10, w2, false); // inside a zero chunk of the backup
    w2.copy(expected, MiB + 10);
    await o.writeZeroes(200 * KiB + 100, 64 * KiB, false); // partial edges written, whole blocks marked
    expected.fill(0, 200 * KiB + 100, 264 * KiB + 100);
    await o.write(image.length - 500, Buffer.alloc(500, 0x77), true); // the short last block, FUA
    expected.fill(0x77, image.length - 500);
    expect((await read(o, 0, image.length)).equals(expected)).toBe(true);
    // Blocks 51..65 are wholly zeroed: a hole; the block holding MiB+10 is data now.
    const runs = o.allocation(200 * KiB, 72 * KiB);
    expect(runs).toEqual([
      { length: 4 * KiB, zero: false },
      { length: 64 * KiB - 4 * KiB, zero: true },
      { length: 8 * KiB, zero: false },
    ]);
    expect(o.allocation(MiB, 8 * KiB)).toEqual([
      { length: 4 * KiB, zero: false },
      { length: 4 * KiB, zero: true },
    ]);
    await o.close();
    // Reopened later: the same content.
    const again = await OverlayExport.open('disk0', 'test', disk, path, identity);
    expect((await read(again, 0, image.length)).equals(expected)).toBe(true);
    await again.close();
  });

  it('after a crash, keeps what was flushed; unflushed blocks read from the backup again', async () => {
    const path = sb.path('b.overlay');
    const o = await OverlayExport.open('disk0', 'test', disk, path, identity);
    await o.write(0, Buffer.alloc(4096, 1), false);
    await o.flush();
    await o.write(8192, Buffer.alloc(4096, 2), false); // never flushed
    // The process "dies": its lock stays, naming a pid that no longer exists.
    await writeFile(overlayFiles(path).lock, '999999999\n');
    const after = await OverlayExport.open('disk0', 'test', disk, path, identity);
    expect((await read(after, 0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
    expect((await read(after, 8192, 4096)).equals(image.subarray(8192, 12288))).toBe(true);
    await after.close();
  });

  it('refuses an overlay of another disk, a file that is not an overlay, and a second user', async () => {
    const path = sb.path('c.overlay');
    const o = await OverlayExport.open('disk0', 'test', disk, path, identity);
    const busy = await failure(OverlayExport.open('disk0', 'test', disk, path, identity));
    expect(busy.code).toBe('BUSY');
    expect(busy.message).toContain(`in use by process ${process.pid}`);
    await o.close();
    const other = await failure(OverlayExport.open('disk0', 'test', disk, path, { ...identity, backup: 'another' }));
    expect(other.code).toBe('USAGE');
    expect(other.message).toContain(`belongs to disk 0 of backup ${identity.backup}`);
    await rm(overlayFiles(path).map);
    const plain = await failure(OverlayExport.open('disk0', 'test', disk, path, identity));
    expect(plain.code).toBe('ALREADY_EXISTS');
    // Refusals release the lock.
    await expect(readFile(overlayFiles(path).lock)).rejects.toThrow();
  });
});
