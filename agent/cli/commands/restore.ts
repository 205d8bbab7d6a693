import { resolve } from 'node:path';
import { CairnError, errorCatalogue } from '../../../shared/errors.js';
import { onInterrupt } from '../../../shared/interrupt.js';
import { parseExportTarget } from '../../export/image-target.js';
import { restoreBackup } from '../../restore/restore-backup.js';
import { restoreTree } from '../../restore/restore-tree.js';
import { parse, vaultOptions } from '../args.js';
import { openVault } from '../context.js';
import type { Manifest } from '../../../shared/vault/manifest.js';
import type { Vault } from '../../../shared/vault/vault.js';
import { formatBytes, formatDuration, formatRate, JSON_PATHS } from '../format.js';
import { ProgressBar } from '../progress.js';

export const restoreHelp = `Usage:
  cairn restore <id|name> --vault <vault> --to <path> [--disk N] [--force] [--json]
  cairn restore <id|name> --vault <vault> --to <image> [--format qcow2|vmdk|raw] [--disk N] [--force] [--json]
  cairn restore <id|name> --vault <vault> --to <folder> [--path P]... [--force] [--json]   (file-system backups)

Restores a disk of a backup to a file (sparse: all-zero chunks stay holes) or a block device. Every
chunk is checked against its id. With several disks and no --disk, --to is a folder that receives
disk-0.img, disk-1.img, ...

Exports a disk as a cloud image when --to is an object, s3://bucket/key.ext[?endpoint=URL&region=R&path-style=true]:
the image is streamed into the bucket by a multipart upload (no local copy); the format comes from
the extension: .qcow2 (sparse qcow2 v3), .vmdk (streamOptimized VMDK), .raw or .img (raw). A local
path ending in .qcow2 or .vmdk is written in that format. The object or file appears only when the
whole image is written; an error or Ctrl-C leaves nothing behind. With several disks, give --disk N
or put {disk} in the key (s3://bucket/web-{disk}.qcow2), which becomes each disk's index.

A file-system backup is restored into a folder that is new or empty (or any folder with --force):
the whole tree, or with --path each selected path and everything below it, at the same place
relative to the folder. Files are sparse where the backup saw all-zero chunks; symlinks, hard links,
fifos, device nodes (as root), mode, owner (as root), extended attributes and times to the
nanosecond are restored; a file appears under its name only once it is written whole. With --force,
an existing file, symlink or empty folder where the backup has something else is replaced; a folder
with contents in the way is refused before anything is written. Entries the backup could not read
are not restored (a folder it could not list is made empty): a warning names them, --json lists
the first 1000 of them in 'skipped' (skippedCount: all), and the exit status is 9 (partial). Ctrl-C keeps the files restored so far
(temporary files are removed); run the restore again with --force to finish it.
  --path P     restore only P (a path inside the backup, as 'cairn ls' shows it); repeatable
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
    path: { type: 'string', multiple: true },
  });
  if (values.help) return (out(restoreHelp), 0);
  if (positionals.length !== 1) throw new CairnError('USAGE', `restore: give exactly one backup id or name; see 'cairn backups list'`);
  if (!values.to) throw new CairnError('USAGE', `restore: --to is required; see 'cairn restore --help'`);
  parseExportTarget(values.to, values.format); // bad --to or --format fails before the vault is opened
  const vault = await openVault(values, 'restore');
  const m = await vault.findBackup(positionals[0]);
  if (m.type === 'filesystem') return restoreFiles(vault, m, values.to, values, out);
  if (values.path) {
    throw new CairnError('USAGE', `restore: backup ${m.name} is a disk backup; --path selects files of file-system backups (use --disk N)`);
  }
  let disk: number | undefined;
  if (values.disk !== undefined) {
    if (!/^\d+$/.test(values.disk)) {
      throw new CairnError('USAGE', `restore: backup ${m.name} has no disk '${values.disk}'; it has disks 0 to ${m.disks.length - 1}`);
    }
    disk = Number(values.disk);
  }
  const bar = new ProgressBar(/^s3:/.test(values.to) ? 'export' : 'restore', !values.json && process.stderr.isTTY === true);
  let outcome;
  try {
    outcome = await restoreBackup(vault, m, {
      to: values.to,
      format: values.format,
      disk,
      force: values.force,
      onProgress: (done, total) => bar.update(done, total),
    });
  } finally {
    bar.done();
  }
  if (outcome.kind === 'restore') {
    if (values.json) {
      out(JSON.stringify({ id: m.id, name: m.name, disks: outcome.disks, requests: vault.store.requests }));
    } else {
      for (const r of outcome.disks) {
        out(
          `restored disk ${r.index} of ${m.name} to ${r.path}: ${formatBytes(r.size)} ` +
            `(${formatBytes(r.bytesWritten)} data) in ${formatDuration(r.durationMs)} (${formatRate(r.size, r.durationMs)})`,
        );
      }
    }
    return 0;
  }
  const { s3 } = outcome;
  if (values.json) {
    out(
      JSON.stringify({
        id: m.id,
        name: m.name,
        disks: outcome.disks.map((r) => ({ ...r, ...(s3 ? { url: r.target, bytesUploaded: r.bytesWritten } : { path: r.target }) })),
        requests: vault.store.requests,
        ...(outcome.uploadRequests ? { uploadRequests: outcome.uploadRequests } : {}),
      }),
    );
  } else {
    for (const r of outcome.disks) {
      out(
        `exported disk ${r.index} of ${m.name} to ${r.target} as ${r.format}: ${formatBytes(r.size)} disk, ` +
          `${formatBytes(r.bytesRead)} read, ${formatBytes(r.bytesWritten)} ${s3 ? 'uploaded' : 'written'} ` +
          `in ${formatDuration(r.durationMs)} (${formatRate(r.size, r.durationMs)})`,
      );
    }
  }
  return 0;
}

async function restoreFiles(
  vault: Vault,
  m: Manifest,
  to: string,
  values: { path?: string[]; disk?: string; format?: string; force?: boolean; json?: boolean },
  out: (s: string) => void,
): Promise<number> {
  if (values.disk !== undefined || values.format !== undefined || parseExportTarget(to, undefined).kind !== 'restore') {
    throw new CairnError(
      'USAGE',
      `restore: backup ${m.name} is a file-system backup: it restores into a local folder (--to FOLDER, optionally --path P), not to disks or images`,
    );
  }
  const bar = new ProgressBar('restore', !values.json && process.stderr.isTTY === true);
  // Files are renamed into place batch by batch, so an interrupt leaves those of finished batches.
  const forget = onInterrupt(() => {
    process.stderr.write(
      `cairn: the files restored so far stay in ${resolve(to)} (temporary files were removed; modes, owners and times may not be set yet); ` +
        `run the same restore again with --force to finish it, or delete what it made there\n`,
    );
  });
  let r;
  try {
    r = await restoreTree(vault, m, {
      to,
      paths: values.path,
      force: values.force,
      onProgress: (done, total) => bar.update(done, total),
    });
  } finally {
    forget();
    bar.done();
  }
  // Entries left out because the backup could not read them: the result is printed all the same.
  const exit = r.partial ? errorCatalogue.PARTIAL.exit : 0;
  if (values.json) {
    out(JSON.stringify({ id: m.id, name: m.name, ...r, skipped: r.skipped.slice(0, JSON_PATHS), skippedCount: r.skipped.length, requests: vault.store.requests }));
    return exit;
  }
  out(
    `restored ${m.name} to ${r.path}: ${r.files} files (${formatBytes(r.bytes)}, ${formatBytes(r.bytesWritten)} data), ` +
      `${r.dirs} folders, ${r.symlinks} symlinks, ${r.hardlinks} hard links` +
      (r.special ? `, ${r.special} special files` : '') +
      ` in ${formatDuration(r.durationMs)} (${formatRate(r.bytes, r.durationMs)})` +
      (r.partial ? `; PARTIAL: ${r.skipped.length} entries the backup could not read are left out (see the warning)` : ''),
  );
  for (const w of r.warnings) process.stderr.write(`cairn: warning: ${w}\n`);
  return exit;
}
