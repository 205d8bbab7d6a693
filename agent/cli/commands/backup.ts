import { CairnError } from '../../../shared/errors.js';
import { runBackup, type BackupResult } from '../../backup/backup-engine.js';
import type { BlockSource } from '../../source/block-source.js';
import { FileSource } from '../../source/file-source.js';
import { parse, vaultOptions } from '../args.js';
import { openState, openVault } from '../context.js';
import { formatBytes, formatDuration, formatRate } from '../format.js';
import { ProgressBar } from '../progress.js';

export const backupHelp = `Usage:
  cairn backup <source>... --vault <vault> [--name NAME] [--full] [--json]
               [--upload-concurrency N] [--limit-upload MiB/s]

Backs up disk images or block devices (several sources make one server backup). The first backup of
a set of sources stores all used data; later ones read everything and store only changed chunks,
yet each is a full restore point. Names default to manualbk_xxxxxx.
  --name NAME   name of the backup (must be unique in the vault)
  --full        do not compare with the previous backup (data already in the vault is still reused)
  --upload-concurrency N  packs uploaded at once (default 3 to S3, 2 to a folder;
                          each one in flight holds a pack in memory)
  --limit-upload R        at most R MiB/s to the vault (averaged over a few packs)
  --json        print one JSON object: id, name, kind, bytesRead, bytesStored, durationMs,
                recoveredPacks (packs of an interrupted backup reused), requests (by kind), ...`;

export function backupJson(r: BackupResult, location: string): Record<string, unknown> {
  const m = r.manifest;
  return {
    id: m.id,
    name: m.name,
    kind: m.kind,
    parent: m.parent,
    vault: location,
    bytesRead: r.bytesRead,
    bytesStored: r.bytesStored,
    durationMs: r.durationMs,
    changedChunks: r.changedChunks,
    recoveredPacks: r.recoveredPacks,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    disks: m.disks.map((d) => ({
      index: d.index,
      source: d.source,
      size: d.size,
      usedBytes: d.usedBytes,
      newChunks: d.newChunks,
      newBytes: d.newBytes,
      changeDetection: d.changeDetection,
    })),
  };
}

export async function backupCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('backup', argv, {
    ...vaultOptions,
    name: { type: 'string' },
    full: { type: 'boolean' },
    'upload-concurrency': { type: 'string' },
  });
  if (values.help) return (out(backupHelp), 0);
  if (positionals.length === 0) {
    throw new CairnError('USAGE', `backup: give at least one source, e.g. 'cairn backup disk.img --vault /srv/vault'`);
  }
  if (values.name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(values.name)) {
    throw new CairnError('USAGE', `backup: --name '${values.name}' is not valid; use letters, digits, '.', '_' and '-'`);
  }
  const vault = await openVault(values, 'backup');
  const sources: BlockSource[] = [];
  const state = openState();
  const startedAt = new Date().toISOString();
  const bar = new ProgressBar('backup', !values.json && process.stderr.isTTY === true);
  try {
    for (const p of positionals) sources.push(await FileSource.open(p));
    const r = await runBackup(vault, sources, {
      name: values.name,
      full: values.full,
      onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal, `stored ${formatBytes(p.bytesStored)}`),
    });
    bar.done();
    state.recordRun({
      vaultId: vault.config.id,
      vaultLocation: vault.store.location,
      backupId: r.manifest.id,
      name: r.manifest.name,
      kind: r.manifest.kind,
      status: 'ok',
      startedAt,
      finishedAt: new Date().toISOString(),
      bytesRead: r.bytesRead,
      bytesStored: r.bytesStored,
      durationMs: r.durationMs,
      error: null,
    });
    if (values.json) out(JSON.stringify({ ...backupJson(r, vault.store.location), requests: vault.store.requests }));
    else {
      const m = r.manifest;
      out(`backup ${m.name} (${m.id}) done: ${m.kind}${m.parent ? ` on top of ${m.parent}` : ''}`);
      out(
        `read ${formatBytes(r.bytesRead)} in ${formatDuration(r.durationMs)} (${formatRate(r.bytesRead, r.durationMs)}), ` +
          `${r.changedChunks} chunks changed, stored ${formatBytes(r.bytesStored)} new`,
      );
      if (r.recoveredPacks) out(`reused ${r.recoveredPacks} packs left by an interrupted backup`);
    }
    return 0;
  } catch (err) {
    bar.done();
    state.recordRun({
      vaultId: vault.config.id,
      vaultLocation: vault.store.location,
      backupId: null,
      name: values.name ?? null,
      kind: null,
      status: 'failed',
      startedAt,
      finishedAt: new Date().toISOString(),
      bytesRead: 0,
      bytesStored: 0,
      durationMs: 0,
      error: (err as Error).message,
    });
    throw err;
  } finally {
    for (const s of sources) await s.close().catch(() => undefined);
  }
}
