import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CairnError, fromSystemError } from '../../../shared/errors.js';
import { WorkerPool } from '../../../shared/vault/worker-pool.js';
import { restoreDisk, type RestoreDiskResult } from '../../restore/restore-disk.js';
import { parse, vaultOptions } from '../args.js';
import { openVault } from '../context.js';
import { formatBytes, formatDuration, formatRate } from '../format.js';
import { ProgressBar } from '../progress.js';

export const restoreHelp = `Usage:
  cairn restore <id|name> --vault <vault> --to <path> [--disk N] [--force] [--json]

Restores a disk of a backup to a file (sparse: all-zero chunks stay holes) or a block device. Every
chunk is checked against its id. With several disks and no --disk, --to is a folder that receives
disk-0.img, disk-1.img, ...
  --disk N   restore only disk N (0-based; see 'cairn backups show')
  --force    replace an existing file, or write over a block device`;

export async function restoreCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('restore', argv, {
    ...vaultOptions,
    to: { type: 'string' },
    disk: { type: 'string' },
    force: { type: 'boolean' },
  });
  if (values.help) return (out(restoreHelp), 0);
  if (positionals.length !== 1) throw new CairnError('USAGE', `restore: give exactly one backup id or name; see 'cairn backups list'`);
  if (!values.to) throw new CairnError('USAGE', `restore: --to is required; see 'cairn restore --help'`);
  const vault = await openVault(values, 'restore');
  const m = await vault.findBackup(positionals[0]);
  let disks = m.disks;
  const targets: string[] = [];
  if (values.disk !== undefined) {
    const n = Number(values.disk);
    const d = m.disks.find((x) => x.index === n);
    if (!d || !/^\d+$/.test(values.disk)) {
      throw new CairnError('USAGE', `restore: backup ${m.name} has no disk '${values.disk}'; it has disks 0 to ${m.disks.length - 1}`);
    }
    disks = [d];
    targets.push(values.to);
  } else if (disks.length === 1) targets.push(values.to);
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
