import { resolve } from 'node:path';
import { CairnError, errorCatalogue } from '../../../shared/errors.js';
import { runBackup, type BackupResult } from '../../backup/backup-engine.js';
import { runFileBackup, type FileBackupResult } from '../../backup/file-backup.js';
import { ExcludeMatcher, readExcludeFile } from '../../source/dir/exclude.js';
import { WalkStream } from '../../source/dir/walk-stream.js';
import { dirUrlPath, isDirUrl } from '../../source/dir/dir-url.js';
import type { QuiesceOptions } from '../../quiesce/quiesce.js';
import type { BlockSource } from '../../source/block-source.js';
import { openSources } from '../../source/open-sources.js';
import { parse, parseDuration, vaultOptions } from '../args.js';
import type { StateStore } from '../../state/state-store.js';
import type { Vault } from '../../../shared/vault/vault.js';
import { openState, openVault } from '../context.js';
import { formatBytes, formatDuration, formatRate, JSON_PATHS } from '../format.js';
import { ProgressBar } from '../progress.js';

export const backupHelp = `Usage:
  cairn backup <source>... --vault <vault> [--name NAME] [--full] [--json]
  cairn backup dir:///PATH | PATH --type filesystem --vault <vault> [--exclude PATTERN]...
               [--exclude-file FILE]... [--cross-file-systems] [--name NAME] [--full] [--json]
               [--upload-concurrency N] [--limit-upload MiB/s]
               [--pre-freeze EXE]... [--post-thaw EXE]... [--freeze MOUNT]...
               [--hook-timeout 30s] [--freeze-timeout 60s] [--require-app-consistent]

Backs up disks (several sources make one server backup, captured at one point in time where the
sources allow it). The first backup of a set of sources stores all used data; later ones store only
changed chunks, yet each is a full restore point. Names default to manualbk_xxxxxx. Sources:
  /dev/sdb, disk.img      a block device or raw image: every block read, compared with the last backup
  disk.qcow2              an offline qcow2 image: Cairn keeps a dirty bitmap in it (qemu-img bitmap),
                          so incrementals read only blocks written since the last backup
  nbd+unix:///EXPORT?socket=PATH[&bitmap=NAME], nbd://HOST[:PORT]/EXPORT[?bitmap=NAME]
                          an NBD export (qemu-nbd, qemu-storage-daemon, QEMU): only allocated
                          blocks are read; with a dirty bitmap, incrementals read only changed blocks
  qmp+unix:///NODE?socket=QMP[&nbd=PATH]
                          a disk in use by qemu-storage-daemon or QEMU (the daemon's disks are
                          captured together, with dirty bitmaps Cairn keeps)
  vsphere://USER@VCENTER/VM?password-file=PATH[&thumbprint=HEX][&quiesce=auto|require|off]
         [&transport=https|nbd&nbd-helper=EXE]
                          every disk of a VMware VM (name, vm-NN or instance UUID): one quiesced
                          snapshot, changed areas from vSphere CBT; see agent/source/vmware/README.md
  rbd://POOL/IMAGE[?conf=PATH&id=CLIENT]
                          a Ceph RBD image: incrementals from 'rbd diff' between Cairn's snapshots
  dorado://USER@ARRAY/LUN?host=ARRAY_HOST&password-file=PATH[&thumbprint=HEX]
                          an OceanStor Dorado LUN: snapshot mapped to this host and read; several
                          LUNs of one array are snapshotted at one instant (agent/source/array/)
  dir:///PATH, or PATH with --type filesystem
                          the files of a folder: content-defined chunks, one tree per backup; later
                          backups read only files whose size, mtime, ctime or inode changed
                          (agent/source/dir/README.md). Files that cannot be read are reported and
                          the backup is marked partial
  --exclude PATTERN       (file systems) leave out matching paths, gitignore-like: '*.tmp' (any
                          depth), 'cache/' (directories only), '/build' (from the folder), '**',
                          '!keep' (include again); repeatable
  --exclude-file FILE     (file systems) patterns, one a line ('#' comments); repeatable
  --cross-file-systems    (file systems) enter file systems mounted below the folder (default:
                          their mount points are recorded as empty directories)
  --name NAME   name of the backup (must be unique in the vault)
  --full        do not use the previous backup (data already in the vault is still reused)
  --pre-freeze EXE        run EXE before freezing (e.g. flush a database); repeatable
  --post-thaw EXE         run EXE after thawing; repeatable
  --freeze MOUNT          fsfreeze this mount point while the disks are captured; repeatable
  --hook-timeout T        a hook running longer is killed and counts as failed (default 30s)
  --freeze-timeout T      a watchdog thaws after T even if Cairn hangs or dies (default 60s)
  --require-app-consistent  fail the backup if quiesce fails (default: back up crash-consistent,
                          with a warning)
  --upload-concurrency N  packs uploaded at once (default 3 to S3, 2 to a folder;
                          each one in flight holds a pack in memory)
  --limit-upload R        at most R MiB/s to the vault (averaged over a few packs)
  --json        print one JSON object: id, name, kind, consistency, bytesRead, bytesStored,
                durationMs, recoveredPacks (packs of an interrupted backup reused), warnings,
                disks (with changeDetection full|compare|bitmap, bytesRead, dirtyBytes),
                requests (by kind), ...; for a file system: type "filesystem", source, files,
                dirs, entries, bytes, filesReused, filesRead, newChunks, newBytes, partial,
                unreadable and changed (the first 1000 paths; bytes that are not UTF-8 as \\xNN),
                unreadableCount and changedCount (all of them)

Exit status of a file-system backup: 0 when it is written; 9 when it is written but some entries
could not be read (recorded without their data: see 'unreadable' and the warnings). Files that
changed while read are recorded as read, with a warning, and alone exit 0. Other codes: it failed.`;

export { JSON_PATHS };

/** What `cairn backup --json` prints for a file-system backup. */
export function fileBackupJson(r: FileBackupResult, location: string, source: string): Record<string, unknown> {
  const m = r.manifest;
  return {
    id: m.id,
    name: m.name,
    kind: m.kind,
    type: 'filesystem',
    parent: m.parent,
    vault: location,
    source,
    consistency: m.consistency,
    bytesRead: r.bytesRead,
    bytesStored: r.bytesStored,
    durationMs: r.durationMs,
    recoveredPacks: r.recoveredPacks,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    warnings: r.warnings,
    files: r.tree.files,
    dirs: r.tree.dirs,
    entries: r.tree.entries,
    bytes: r.tree.bytes,
    filesReused: r.filesReused,
    filesRead: r.filesRead,
    newChunks: r.newChunks,
    newBytes: r.newBytes,
    partial: r.tree.partial > 0,
    unreadable: r.unreadable.slice(0, JSON_PATHS),
    unreadableCount: r.unreadableCount,
    changed: r.changed.slice(0, JSON_PATHS),
    changedCount: r.changedCount,
    disks: [],
  };
}

export function backupJson(r: BackupResult, location: string): Record<string, unknown> {
  const m = r.manifest;
  return {
    id: m.id,
    name: m.name,
    kind: m.kind,
    parent: m.parent,
    vault: location,
    consistency: m.consistency,
    bytesRead: r.bytesRead,
    bytesStored: r.bytesStored,
    durationMs: r.durationMs,
    changedChunks: r.changedChunks,
    recoveredPacks: r.recoveredPacks,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    warnings: r.warnings,
    disks: m.disks.map((d) => ({
      index: d.index,
      source: d.source,
      size: d.size,
      usedBytes: d.usedBytes,
      newChunks: d.newChunks,
      newBytes: d.newBytes,
      changeDetection: d.changeDetection,
      bytesRead: d.bytesRead,
      ...(d.dirtyBytes !== undefined ? { dirtyBytes: d.dirtyBytes } : {}),
      ...(d.changeToken !== undefined ? { changeToken: d.changeToken } : {}),
    })),
  };
}

export async function backupCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse('backup', argv, {
    ...vaultOptions,
    name: { type: 'string' },
    full: { type: 'boolean' },
    'upload-concurrency': { type: 'string' },
    'pre-freeze': { type: 'string', multiple: true },
    'post-thaw': { type: 'string', multiple: true },
    freeze: { type: 'string', multiple: true },
    'hook-timeout': { type: 'string' },
    'freeze-timeout': { type: 'string' },
    'require-app-consistent': { type: 'boolean' },
    type: { type: 'string' },
    exclude: { type: 'string', multiple: true },
    'exclude-file': { type: 'string', multiple: true },
    'cross-file-systems': { type: 'boolean' },
  });
  if (values.help) return (out(backupHelp), 0);
  if (positionals.length === 0) {
    throw new CairnError('USAGE', `backup: give at least one source, e.g. 'cairn backup disk.img --vault /srv/vault'`);
  }
  if (values.name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(values.name)) {
    throw new CairnError('USAGE', `backup: --name '${values.name}' is not valid; use letters, digits, '.', '_' and '-'`);
  }
  if (values.type !== undefined && values.type !== 'filesystem' && values.type !== 'disk') {
    throw new CairnError('USAGE', `backup: --type '${values.type}' is not known; use 'filesystem' (a folder) or 'disk'`);
  }
  const filesystem = values.type === 'filesystem' || (values.type === undefined && positionals.some(isDirUrl));
  const fsOnly = ['exclude', 'exclude-file', 'cross-file-systems'] as const;
  if (!filesystem) {
    const given = fsOnly.filter((o) => values[o] !== undefined);
    if (given.length) throw new CairnError('USAGE', `backup: --${given[0]} applies to file-system backups (dir:///PATH or --type filesystem)`);
    const dir = positionals.find(isDirUrl);
    if (dir) throw new CairnError('USAGE', `backup: ${dir} is a folder; drop --type disk to back up its files`);
  } else {
    if (positionals.length !== 1) {
      throw new CairnError('USAGE', `backup: a file-system backup takes one folder, not ${positionals.length}; run one backup per folder`);
    }
    const used = ['pre-freeze', 'post-thaw', 'freeze', 'require-app-consistent'].filter((o) => values[o as keyof typeof values] !== undefined);
    if (used.length) throw new CairnError('USAGE', `backup: --${used[0]} applies to disk backups only`);
    return fileBackupCommand(positionals[0], values, out);
  }
  const quiesce = quiesceOptions(values);
  if (values['require-app-consistent'] && !quiesce) {
    throw new CairnError('USAGE', 'backup: --require-app-consistent needs something to quiesce: --pre-freeze, --post-thaw or --freeze');
  }
  // Sources open (qemu-img info, NBD handshakes) while the passphrase's key is derived.
  const opening = openSources(positionals);
  opening.catch(() => undefined);
  let vault;
  try {
    vault = await openVault(values, 'backup');
  } catch (err) {
    for (const s of await opening.catch(() => [])) await s.close().catch(() => undefined);
    throw err;
  }
  const sources: BlockSource[] = [];
  const state = openState();
  const startedAt = new Date().toISOString();
  const bar = new ProgressBar('backup', !values.json && process.stderr.isTTY === true);
  try {
    sources.push(...(await opening));
    const r = await runBackup(vault, sources, {
      name: values.name,
      full: values.full,
      quiesce,
      requireAppConsistent: values['require-app-consistent'],
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
      out(`backup ${m.name} (${m.id}) done: ${m.kind}${m.parent ? ` on top of ${m.parent}` : ''}, ${m.consistency.replace('_', '-')}`);
      out(
        `read ${formatBytes(r.bytesRead)} in ${formatDuration(r.durationMs)} (${formatRate(r.bytesRead, r.durationMs)}), ` +
          `${r.changedChunks} chunks changed, stored ${formatBytes(r.bytesStored)} new`,
      );
      if (r.recoveredPacks) out(`reused ${r.recoveredPacks} packs left by an interrupted backup`);
      for (const w of r.warnings) out(`warning: ${w}`);
    }
    return 0;
  } catch (err) {
    bar.done();
    recordFailure(state, vault, values.name, startedAt, err);
    throw err;
  } finally {
    for (const s of sources) await s.close().catch(() => undefined);
  }
}

async function fileBackupCommand(
  spec: string,
  values: {
    vault?: string;
    name?: string;
    full?: boolean;
    json?: boolean;
    exclude?: string[];
    'exclude-file'?: string[];
    'cross-file-systems'?: boolean;
  } & Parameters<typeof openVault>[0],
  out: (s: string) => void,
): Promise<number> {
  const root = resolve(isDirUrl(spec) ? dirUrlPath(spec) : spec);
  const excludes = [...(values.exclude ?? [])];
  for (const f of values['exclude-file'] ?? []) excludes.push(...(await readExcludeFile(f)));
  ExcludeMatcher.compile(excludes); // a bad pattern is USAGE before anything starts
  // The walk starts now, in its own thread, and goes on while the passphrase opens the vault.
  const walk = new WalkStream(root, { excludes, crossFileSystems: values['cross-file-systems'] });
  let vault: Vault;
  let state: StateStore;
  try {
    vault = await openVault(values, 'backup');
    state = openState();
  } catch (err) {
    await walk.close(); // a running worker would keep the process alive
    throw err;
  }
  const startedAt = new Date().toISOString();
  const bar = new ProgressBar('backup', !values.json && process.stderr.isTTY === true);
  try {
    const r = await runFileBackup(vault, root, {
      name: values.name,
      full: values.full,
      excludes,
      crossFileSystems: values['cross-file-systems'],
      walk,
      onProgress: (p) => bar.update(p.bytesRead, p.bytesRead, `${p.files} files, stored ${formatBytes(p.bytesStored)}`),
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
    if (values.json) out(JSON.stringify({ ...fileBackupJson(r, vault.store.location, root), requests: vault.store.requests }));
    else {
      const m = r.manifest;
      const t = r.tree;
      out(`backup ${m.name} (${m.id}) done: ${m.kind}${m.parent ? ` on top of ${m.parent}` : ''} of ${root}${t.partial ? ', PARTIAL' : ''}`);
      out(
        `${t.files} file${t.files === 1 ? '' : 's'} (${r.filesRead} read, ${r.filesReused} unchanged), ${t.dirs} director${t.dirs === 1 ? 'y' : 'ies'}, ${formatBytes(t.bytes)}; ` +
          `read ${formatBytes(r.bytesRead)} in ${formatDuration(r.durationMs)} (${formatRate(r.bytesRead, r.durationMs)}), ` +
          `${r.newChunks} new chunks, stored ${formatBytes(r.bytesStored)} new`,
      );
      if (r.recoveredPacks) out(`reused ${r.recoveredPacks} packs left by an interrupted backup`);
      for (const w of r.warnings) out(`warning: ${w}`);
    }
    // Written but partial: entries recorded without their data. Changed while read alone is not.
    return r.unreadableCount > 0 ? errorCatalogue.PARTIAL.exit : 0;
  } catch (err) {
    bar.done();
    recordFailure(state, vault, values.name, startedAt, err);
    throw err;
  } finally {
    await walk.close();
  }
}

/** Records a failed run in the local history (`cairn backups history`). */
function recordFailure(state: StateStore, vault: Vault, name: string | undefined, startedAt: string, err: unknown): void {
  state.recordRun({
    vaultId: vault.config.id,
    vaultLocation: vault.store.location,
    backupId: null,
    name: name ?? null,
    kind: null,
    status: 'failed',
    startedAt,
    finishedAt: new Date().toISOString(),
    bytesRead: 0,
    bytesStored: 0,
    durationMs: 0,
    error: (err as Error).message,
  });
}

function quiesceOptions(values: {
  'pre-freeze'?: string[];
  'post-thaw'?: string[];
  freeze?: string[];
  'hook-timeout'?: string;
  'freeze-timeout'?: string;
}): QuiesceOptions | undefined {
  const preFreeze = values['pre-freeze'] ?? [];
  const postThaw = values['post-thaw'] ?? [];
  const freeze = values.freeze ?? [];
  const hookTimeoutMs = values['hook-timeout'] === undefined ? undefined : parseDuration(values['hook-timeout'], '--hook-timeout');
  const freezeTimeoutMs = values['freeze-timeout'] === undefined ? undefined : parseDuration(values['freeze-timeout'], '--freeze-timeout');
  if (hookTimeoutMs === 0 || freezeTimeoutMs === 0) throw new CairnError('USAGE', 'backup: --hook-timeout and --freeze-timeout must be above 0');
  if (preFreeze.length + postThaw.length + freeze.length === 0) {
    if (hookTimeoutMs !== undefined || freezeTimeoutMs !== undefined) {
      throw new CairnError('USAGE', 'backup: --hook-timeout and --freeze-timeout need --pre-freeze, --post-thaw or --freeze');
    }
    return undefined;
  }
  return { preFreeze, postThaw, freeze, hookTimeoutMs, freezeTimeoutMs };
}
