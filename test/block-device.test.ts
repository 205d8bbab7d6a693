import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, Sandbox, expectCliError, expectOk, makeImage, sha256File, writeAt } from './helpers.js';

/**
 * Backups of real block devices: loop devices over image files (needs root, as CI runs). A device
 * has no file size, so this also checks that sizes come from sysfs, and restoring onto a device
 * writes the zero chunks too (a device holds old data where a new file has holes).
 */

function losetup(file: string): string {
  try {
    return execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  } catch (err) {
    throw new Error(`losetup failed (${(err as Error).message}): these tests need root and loop devices (modprobe loop)`);
  }
}

describe('block devices', () => {
  let box: Sandbox;
  const devices: string[] = [];

  beforeAll(async () => {
    box = await Sandbox.create('blockdev');
  });

  afterAll(async () => {
    for (const d of devices) {
      try {
        execFileSync('losetup', ['-d', d]);
      } catch {
        // already detached
      }
    }
    await box.cleanup();
  });

  it('backs up a loop device, incrementally, and restores to a file and onto another device', async () => {
    const vault = await box.initVault('vault');
    const srcImage = box.path('src.img');
    await makeImage(srcImage, [
      { kind: 'random', length: 6 * MiB },
      { kind: 'text', length: 4 * MiB },
      { kind: 'hole', length: 5 * MiB },
      { kind: 'random', length: 1 * MiB },
    ]);
    const dev = losetup(srcImage);
    devices.push(dev);
    const sha1 = await sha256File(dev);

    const full = await box.cairnJson<{ kind: string; bytesRead: number; name: string }>(['backup', dev, '--vault', vault, '--json']);
    expect(full.kind).toBe('full');
    expect(full.bytesRead).toBe(16 * MiB);

    // Change the device through the device node, as a file system on it would.
    await writeAt(dev, 7 * MiB + 4096, randomBytes(64 * 1024));
    execFileSync('blockdev', ['--flushbufs', dev]);
    const sha2 = await sha256File(dev);
    expect(sha2).not.toBe(sha1);
    const incr = await box.cairnJson<{ kind: string; bytesStored: number; name: string }>(['backup', dev, '--vault', vault, '--json']);
    expect(incr.kind).toBe('incremental');
    expect(incr.bytesStored).toBeLessThan(1 * MiB);

    expectOk(await box.cairn(['restore', full.name, '--vault', vault, '--to', box.path('full.img')]));
    expect(await sha256File(box.path('full.img'))).toBe(sha1);

    // Onto a device full of other data: needs --force, and every byte must match afterwards.
    const targetImage = box.path('target.img');
    await makeImage(targetImage, [{ kind: 'random', length: 16 * MiB }]);
    const target = losetup(targetImage);
    devices.push(target);
    expectCliError(await box.cairn(['restore', incr.name, '--vault', vault, '--to', target]), 'ALREADY_EXISTS', '--force');
    expectOk(await box.cairn(['restore', incr.name, '--vault', vault, '--to', target, '--force']));
    expect(await sha256File(target)).toBe(sha2);
  });
});
