import { mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import type { S3Store } from '../../../shared/store/s3-store.js';
import type { S3Location } from '../../../shared/store/s3-url.js';
import { BackupDisk } from '../../../shared/vault/backup-disk.js';
import type { DiskRecord, Manifest } from '../../../shared/vault/manifest.js';
import type { Vault } from '../../../shared/vault/vault.js';
import { WorkerPool } from '../../../shared/vault/worker-pool.js';
import { backupImageSource, exportDisk, imageSizeBound, type ExportResult } from '../../export/export-disk.js';
import { FileImageSink, S3ImageSink, type ImageSink } from '../../export/image-sink.js';
import { DISK_PLACEHOLDER, forDisk, parseExportTarget, type ExportTarget } from '../../export/image-target.js';
import { restoreDisk, type RestoreDiskResult } from '../../restore/restore-disk.js';
import { parse, vaultOptions } from '../args.js';
import { openStore, openVault } from '../context.js';
import { formatBytes, formatDuration, formatRate } from '../format.js';
import { ProgressBar } from '../progress.js';

export const restoreHelp = `Usage:
  cairn restore <id|name> --vault <vault> --to <path> [--disk N] [--force] [--json]
  cairn restore <id|name> --vault <vault> --to <image> [--format qcow2|vmdk|raw] [--disk N] [--force] [--json]

Restores a disk of a backup to a file (sparse: all-zero chunks stay holes) or a block device. Every
chunk is checked against its id. With several disks and no --disk, --to is a folder that receives
disk-0.img, disk-1.img, ...

Exports a disk as a cloud image when --to is an object, s3://bucket/key.ext[?endpoint=URL&region=R&path-style=true]:
the image is streamed into the bucket by a multipart upload (no local copy); the format comes from
the extension: .qcow2 (sparse qcow2 v3), .vmdk (streamOptimized VMDK), .raw or .img (raw). A local
path ending in .qcow2 or .vmdk is written in that format. The object or file appears only when the
whole image is written; an error or Ctrl-C leaves nothing behind. With several disks, give --disk N
or put {disk} in the key (s3://bucket/web-{disk}.qcow2), which becomes each disk's index.
  --disk N     restore only disk N (0-based; see 'cairn backups show')
  --format F   qcow2, vmdk or raw, whatever the extension
  --force      replace an existing file or object, or write over a block device`;

export async function restoreCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('restore', argv, {
    ...vaultOptions,
    to: { type: 'string' },
    disk: { type: 'string' },
    format: { type: 'string' },
    force: { type: 'boolean' },
  });
  if (values.help) return (out(restoreHelp), 0);
  if (positionals.length !== 1) throw new CairnError('USAGE', `restore: give exactly one backup id or name; see 'cairn backups list'`);
  if (!values.to) throw new CairnError('USAGE', `restore: --to is required; see 'cairn restore --help'`);
  const target = parseExportTarget(values.to, values.format);
  const vault = await openVault(values, 'restore');
  const m = await vault.findBackup(positionals[0]);
  let disks = m.disks;
  if (values.disk !== undefined) {
    const n = Number(values.disk);
    const d = m.disks.find((x) => x.index === n);
    if (!d || !/^\d+$/.test(values.disk)) {
      throw new CairnError('USAGE', `restore: backup ${m.name} has no disk '${values.disk}'; it has disks 0 to ${m.disks.length - 1}`);
    }
    disks = [d];
  }
  if (target.kind !== 'restore') return exportCommand(vault, m, disks, target, values, out);

  const targets: string[] = [];
  if (values.disk !== undefined || disks.length === 1) targets.push(values.to);
  else {
    try {
      await mkdir(values.to, { recursive: true });
    } catch (err) {
      throw fromSystemError(err, 'cannot create the restore folder', values.to);
    }
    for (const d of disks) targets.push(join(values.to, `disk-${d.index}.img`));
  }

  const { index } = await vault.loadIndex({ includeCondemned: true });
  const pool = new WorkerPool(vault.key, vault.config.compression.level);
  const total = disks.reduce((s, d) => s + d.usedBytes, 0);
  const bar = new ProgressBar('restore', !values.json && process.stderr.isTTY === true);
  let done = 0;
  const results: RestoreDiskResult[] = [];
  try {
    for (const [i, d] of disks.entries()) {
      results.push(
        await restoreDisk(vault, index, pool, d, targets[i], {
          force: values.force,
          onProgress: (n) => bar.update((done += n), total),
        }),
      );
    }
  } finally {
    bar.done();
    await pool.close();
  }
  if (values.json) {
    out(JSON.stringify({ id: m.id, name: m.name, disks: results.map((r, i) => ({ index: disks[i].index, ...r })), requests: vault.store.requests }));
  } else {
    for (const [i, r] of results.entries()) {
      out(
        `restored disk ${disks[i].index} of ${m.name} to ${r.path}: ${formatBytes(r.size)} ` +
          `(${formatBytes(r.bytesWritten)} data) in ${formatDuration(r.durationMs)} (${formatRate(r.size, r.durationMs)})`,
      );
    }
  }
  return 0;
}

/** Chunks fetched ahead of a sequential export, so the vault is read while the image is written. */
const EXPORT_READ_AHEAD = 32 * 1024 * 1024;

async function exportCommand(
  vault: Vault,
  m: Manifest,
  disks: DiskRecord[],
  target: Exclude<ExportTarget, { kind: 'restore' }>,
  values: { json?: boolean; force?: boolean; disk?: string },
  out: (s: string) => void,
): Promise<number> {
  const name = target.kind === 's3' ? target.key : target.path;
  if (disks.length > 1 && !name.includes(DISK_PLACEHOLDER)) {
    throw new CairnError(
      'USAGE',
      `restore: backup ${m.name} has ${disks.length} disks; give --disk N, or put ${DISK_PLACEHOLDER} in --to (e.g. ${name.replace(/(\.[^./]*)?$/, `-${DISK_PLACEHOLDER}$1`)}) to export each`,
    );
  }
  const store = target.kind === 's3' ? ((await openStore(bucketUrl(target.bucket))) as S3Store) : undefined;
  // Every target is checked before the first is written, so a clash is found before any work.
  if (!values.force) {
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
  const bar = new ProgressBar('export', !values.json && process.stderr.isTTY === true);
  let done = 0;
  const results: ExportResult[] = [];
  try {
    for (const d of disks) {
      const disk = await BackupDisk.open(vault, index, d, { readAhead: EXPORT_READ_AHEAD, cacheBytes: 2 * EXPORT_READ_AHEAD });
      const each = forDisk(name, d.index);
      const expectedBytes = imageSizeBound(target.format, backupImageSource(disk, () => undefined));
      const sink: ImageSink = store
        ? await S3ImageSink.open(store, each, { force: values.force, expectedBytes })
        : await FileImageSink.open(each, { force: values.force });
      results.push(
        await exportDisk(disk, target.format, sink, {
          name: each.split('/').pop(),
          onProgress: (n) => bar.update((done += n), total),
        }),
      );
    }
  } finally {
    bar.done();
  }
  if (values.json) {
    out(
      JSON.stringify({
        id: m.id,
        name: m.name,
        disks: results.map((r, i) => ({
          index: disks[i].index,
          ...r,
          ...(store ? { url: r.target, bytesUploaded: r.bytesWritten } : { path: r.target }),
        })),
        requests: vault.store.requests,
        ...(store ? { uploadRequests: store.requests } : {}),
      }),
    );
  } else {
    for (const [i, r] of results.entries()) {
      out(
        `exported disk ${disks[i].index} of ${m.name} to ${r.target} as ${r.format}: ${formatBytes(r.size)} disk, ` +
          `${formatBytes(r.bytesRead)} read, ${formatBytes(r.bytesWritten)} ${store ? 'uploaded' : 'written'} ` +
          `in ${formatDuration(r.durationMs)} (${formatRate(r.size, r.durationMs)})`,
      );
    }
  }
  return 0;
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
