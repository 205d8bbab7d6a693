import { randomBytes } from 'node:crypto';
import { open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import { onInterrupt } from '../../shared/interrupt.js';
import type { ChunkIndex } from '../../shared/vault/chunk-index.js';
import { writeDiskChunks } from '../../shared/vault/disk-reader.js';
import type { DiskRecord } from '../../shared/vault/manifest.js';
import type { Vault } from '../../shared/vault/vault.js';
import type { WorkerPool } from '../../shared/vault/worker-pool.js';

export interface RestoreDiskResult {
  path: string;
  bytesWritten: number;
  size: number;
  durationMs: number;
}

/**
 * Restores one disk of a backup to a file or block device.
 * - File: written as `.<name>.cairn-partial-<random>` beside the target, sparse (zero chunks stay
 *   holes), then renamed over the target; an interrupted restore never leaves a
 *   half-written file under the target's name. An existing target is replaced only with `force`.
 * - Block device: written in place (zero chunks written as zeros, since the device holds old data);
 *   needs `force` because it overwrites whatever is on the device.
 * Every chunk is checked against its id before it is written.
 */
export async function restoreDisk(
  vault: Vault,
  index: ChunkIndex,
  pool: WorkerPool,
  disk: DiskRecord,
  target: string,
  opts: { force?: boolean; onProgress?: (bytes: number) => void } = {},
): Promise<RestoreDiskResult> {
  const t0 = performance.now();
  const path = resolve(target);
  const map = await vault.readBlockMap(disk.blockMap);
  let existing;
  try {
    existing = await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toTargetError(err, path);
  }
  if (existing?.isDirectory()) {
    throw new CairnError('TARGET_UNWRITABLE', `restore target ${path} is a directory; give a file path such as ${join(path, 'disk-0.img')}`);
  }
  if (existing && !opts.force) {
    throw new CairnError('ALREADY_EXISTS', `restore target ${path} exists already; choose another --to or add --force to replace it`);
  }
  const device = existing?.isBlockDevice() ?? false;
  const writePath = device ? path : join(dirname(path), `.${basename(path)}.cairn-partial-${randomBytes(4).toString('hex')}`);
  // Registered before the open: an interrupt that comes once the file exists, but before the open's
  // continuation runs, still removes it (and one before it finds nothing to remove).
  const forget = device ? undefined : onInterrupt(() => unlink(writePath));
  let fh: FileHandle;
  try {
    fh = await open(writePath, device ? 'r+' : 'wx');
  } catch (err) {
    forget?.();
    throw toTargetError(err, device ? path : dirname(path));
  }
  let bytesWritten = 0;
  try {
    if (!device) await fh.truncate(disk.size);
    await writeDiskChunks(vault, index, map, pool, fh.fd, (n) => {
      bytesWritten += n;
      opts.onProgress?.(n);
    });
    if (device) {
      const zero = Buffer.alloc(map.chunkSize);
      for (let p = 0; p < map.count; p++) {
        if (map.isZero(p)) await writeAll(fh, zero.subarray(0, map.lengthAt(p)), p * map.chunkSize);
      }
    }
    // A device is flushed before we report success; a file is left to the page cache like cp and
    // restic do (an fsync of a large image would double the restore time), and is renamed into place.
    if (device) await fh.sync();
    await fh.close();
  } catch (err) {
    forget?.();
    await fh.close().catch(() => undefined);
    if (!device) await unlink(writePath).catch(() => undefined);
    throw err instanceof CairnError ? err : toTargetError(err, path);
  }
  if (!device) {
    try {
      await rename(writePath, path);
    } catch (err) {
      await unlink(writePath).catch(() => undefined);
      throw toTargetError(err, path);
    } finally {
      forget?.();
    }
  }
  return { path, bytesWritten, size: disk.size, durationMs: Math.round(performance.now() - t0) };
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

function toTargetError(err: unknown, where: string): CairnError {
  const e = fromSystemError(err, 'cannot write restore target', where);
  return e.code === 'INTERNAL' ? new CairnError('TARGET_UNWRITABLE', e.message, { cause: err }) : e;
}
