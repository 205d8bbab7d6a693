import { mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { RequestCounts } from '../../shared/store/object-store.js';
import type { S3Store } from '../../shared/store/s3-store.js';
import type { S3Location } from '../../shared/store/s3-url.js';
import { BackupDisk } from '../../shared/vault/backup-disk.js';
import type { DiskRecord, Manifest } from '../../shared/vault/manifest.js';
import type { Vault } from '../../shared/vault/vault.js';
import { WorkerPool } from '../../shared/vault/worker-pool.js';
import { backupImageSource, exportDisk, imageSizeBound, type ExportResult } from '../export/export-disk.js';
import { FileImageSink, S3ImageSink, type ImageSink } from '../export/image-sink.js';
import { DISK_PLACEHOLDER, forDisk, parseExportTarget, type ExportTarget } from '../export/image-target.js';
import { restoreDisk, type RestoreDiskResult } from './restore-disk.js';
import { openStore } from '../cli/context.js';

export interface RestoreRequest {
  /** A path (file, block device, or a folder for several disks), an image path (.qcow2, .vmdk) or an s3:// object. */
  to: string;
  /** qcow2, vmdk or raw, whatever the extension says. */
  format?: string;
  /** Only this disk; undefined: every disk. */
  disk?: number;
  force?: boolean;
  /** Bytes of the backup read so far, of `total` used bytes. */
  onProgress?: (done: number, total: number) => void;
}

export type RestoreOutcome =
  | { kind: 'restore'; disks: (RestoreDiskResult & { index: number })[] }
  | { kind: 'export'; s3: boolean; disks: (ExportResult & { index: number })[]; uploadRequests?: RequestCounts };

/** Chunks fetched ahead of a sequential export, so the vault is read while the image is written. */
const EXPORT_READ_AHEAD = 32 * 1024 * 1024;

/**
 * What `cairn restore` and the agent's `restore` command do: restore the backup's disks to files or
 * block devices (sparse, atomic per file), or export them as images to a file or an S3 object
 * (streamed, no local copy). Targets are checked before anything is written; an error or an
 * interrupt leaves nothing behind at a target.
 */
export async function restoreBackup(vault: Vault, m: Manifest, req: RestoreRequest): Promise<RestoreOutcome> {
  const target = parseExportTarget(req.to, req.format);
  let disks = m.disks;
  if (req.disk !== undefined) {
    const d = m.disks.find((x) => x.index === req.disk);
    if (!d) throw new CairnError('USAGE', `restore: backup ${m.name} has no disk '${req.disk}'; it has disks 0 to ${m.disks.length - 1}`);
    disks = [d];
  }
  if (target.kind !== 'restore') return exportDisks(vault, m, disks, target, req);

  const targets: string[] = [];
  if (req.disk !== undefined || disks.length === 1) targets.push(req.to);
  else {
    try {
      await mkdir(req.to, { recursive: true });
    } catch (err) {
      throw fromSystemError(err, 'cannot create the restore folder', req.to);
    }
    for (const d of disks) targets.push(join(req.to, `disk-${d.index}.img`));
  }
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const pool = new WorkerPool(vault.key, vault.config.compression.level);
  const total = disks.reduce((s, d) => s + d.usedBytes, 0);
  let done = 0;
  const results: (RestoreDiskResult & { index: number })[] = [];
  try {
    for (const [i, d] of disks.entries()) {
      const r = await restoreDisk(vault, index, pool, d, targets[i]!, {
        force: req.force,
        onProgress: (n) => req.onProgress?.((done += n), total),
      });
      results.push({ index: d.index, ...r });
    }
  } finally {
    await pool.close();
  }
  return { kind: 'restore', disks: results };
}

async function exportDisks(
  vault: Vault,
  m: Manifest,
  disks: DiskRecord[],
  target: Exclude<ExportTarget, { kind: 'restore' }>,
  req: RestoreRequest,
): Promise<RestoreOutcome> {
  const name = target.kind === 's3' ? target.key : target.path;
  if (disks.length > 1 && !name.includes(DISK_PLACEHOLDER)) {
    throw new CairnError(
      'USAGE',
      `restore: backup ${m.name} has ${disks.length} disks; give --disk N, or put ${DISK_PLACEHOLDER} in --to (e.g. ${name.replace(/(\.[^./]*)?$/, `-${DISK_PLACEHOLDER}$1`)}) to export each`,
    );
  }
  const store = target.kind === 's3' ? ((await openStore(bucketUrl(target.bucket))) as S3Store) : undefined;
  // Every target is checked before the first is written, so a clash is found before any work.
  if (!req.force) {
    for (const d of disks) {
      const each = forDisk(name, d.index);
      // An unreachable store fails here, with the store's own error; a missing local file is no clash.
      const exists = store ? await store.stat(each) : await stat(each).catch(() => undefined);
      if (exists) {
        const shown = store ? `s3://${store.where.bucket}/${each}` : resolve(each);
        throw new CairnError('ALREADY_EXISTS', `export target ${shown} exists already; choose another --to or add --force to replace it`);
      }
    }
  }
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const total = disks.reduce((s, d) => s + d.usedBytes, 0);
  let done = 0;
  const results: (ExportResult & { index: number })[] = [];
  for (const d of disks) {
    const disk = await BackupDisk.open(vault, index, d, { readAhead: EXPORT_READ_AHEAD, cacheBytes: 2 * EXPORT_READ_AHEAD });
    const each = forDisk(name, d.index);
    const expectedBytes = imageSizeBound(target.format, backupImageSource(disk, () => undefined));
    const sink: ImageSink = store
      ? await S3ImageSink.open(store, each, { force: req.force, expectedBytes })
      : await FileImageSink.open(each, { force: req.force });
    const r = await exportDisk(disk, target.format, sink, {
      name: each.split('/').pop(),
      onProgress: (n) => req.onProgress?.((done += n), total),
    });
    results.push({ index: d.index, ...r });
  }
  return { kind: 'export', s3: store !== undefined, disks: results, ...(store ? { uploadRequests: store.requests } : {}) };
}

/** The bucket's URL with no prefix, with the same endpoint, region, path style and profile. */
function bucketUrl(where: S3Location): string {
  const q = new URLSearchParams();
  if (where.endpoint) q.set('endpoint', where.endpoint);
  if (where.region) q.set('region', where.region);
  if (where.pathStyle) q.set('path-style', 'true');
  if (where.profile) q.set('profile', where.profile);
  const query = q.toString();
  return `s3://${where.bucket}/${query ? `?${query}` : ''}`;
}
