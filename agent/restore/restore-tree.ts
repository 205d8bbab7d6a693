import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  ftruncateSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmdirSync,
  symlinkSync,
  unlinkSync,
} from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import { onInterrupt } from '../../shared/interrupt.js';
import { ZERO_ID } from '../../shared/vault/block-map.js';
import type { ChunkIndex, ChunkLocation } from '../../shared/vault/chunk-index.js';
import { SEAL_OVERHEAD } from '../../shared/vault/crypto.js';
import { packReadJobs, readPackJob } from '../../shared/vault/disk-reader.js';
import { copyInto } from '../../shared/vault/bytes.js';
import type { Manifest } from '../../shared/vault/manifest.js';
import { SlotRunner } from '../../shared/vault/slot-runner.js';
import { readTree, type TreeEntry, type TreeRecord } from '../../shared/vault/tree.js';
import type { Vault } from '../../shared/vault/vault.js';
import type { BatchSlot, DecodeItem } from '../../shared/vault/worker-protocol.js';
import { WorkerPool } from '../../shared/vault/worker-pool.js';
import { makeNode, restoreTimes, restoreXattrs, type Times, type Xattrs } from './file-metadata.js';
import { isAncestor, isAtOrBelow, normalizeTreePath, parentPath, pathNotFound, showPath } from './tree-paths.js';

export interface RestoreTreeRequest {
  /** A folder that does not exist yet or is empty (any folder with `force`). */
  to: string;
  /** Tree paths to restore, each with everything below it (their parent folders come along); none: the whole tree. */
  paths?: string[];
  force?: boolean;
  /** File bytes written so far, of `total` non-hole bytes to write. */
  onProgress?: (done: number, total: number) => void;
}

export interface RestoreTreeResult {
  path: string;
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  /** fifos and device nodes */
  special: number;
  /** Sum of the restored files' sizes (holes included). */
  bytes: number;
  /** Data bytes written (holes are not written). */
  bytesWritten: number;
  durationMs: number;
  /** What was not restored as it was: owners when not root, skipped attributes, entries the backup could not read. */
  warnings: string[];
  /** True when `skipped` is not empty: the restore finished, but without everything the tree names. */
  partial: boolean;
  /**
   * Entries the backup recorded as unreadable (showPath form), in tree order: files, symlinks and
   * hard links to such files are not created; folders are created, empty (their listing failed).
   */
  skipped: string[];
}

/** Pack bytes read at once: neighbouring blobs closer than MAX_GAP are merged into one ranged get. */
const MAX_READ = 4 * 1024 * 1024;
const MAX_GAP = 256 * 1024;
/** Files open at once (a batch): bounds file descriptors and how many partial files an error discards. */
const BATCH_FILES = 256;
const BATCH_BYTES = 256 * 1024 * 1024;
/** Batches in flight at once. */
const LANES = 2;
/** Skipped paths named in the warning; the rest are counted. */
const WARN_PATHS = 20;

interface Plan {
  entries: TreeEntry[];
  warnings: string[];
}

/** An entry of the tree that is not restored as it was, and why. */
interface Skipped {
  path: Buffer;
  dir: boolean;
  why: string;
}

/**
 * Restores a file-system backup's tree, or the selected paths of it, into a folder:
 * - Checks before writing anything: the target is new or empty (else ALREADY_EXISTS unless
 *   `force`), every selected path is in the backup (else NOT_FOUND naming its nearest existing
 *   parent), every chunk is in the vault's index (else VAULT_CORRUPT naming the file and offset).
 * - File data is read from packs in offset order and decoded, checked against its id and written
 *   by the worker pool; all-zero chunks stay holes. A file is written under a temporary name in its
 *   folder and renamed into place once whole: a damaged chunk (VAULT_CORRUPT naming the file and
 *   offset) or an interrupt never leaves a half-written file under a restored name.
 * - Then metadata: extended attributes, owner (root only; otherwise one warning), mode including
 *   setuid/setgid/sticky, and atime/mtime to the nanosecond, directories last so that restoring
 *   their contents does not change their times.
 * Hard links are linked to the first restored path of their inode; when the backup's first path is
 * not selected, the first selected one gets the inode's data and metadata. Sockets are not restored
 * (a warning says so). What the backup could not read is left out and named (`skipped`, `partial`).
 * With `force`, what is in the way is replaced (an existing file, symlink or empty folder); a folder
 * with contents where the backup has no folder is refused (TARGET_UNWRITABLE) before anything is written.
 * An interrupt removes the temporary files; files already renamed into place stay.
 */
export async function restoreTree(vault: Vault, m: Manifest, req: RestoreTreeRequest): Promise<RestoreTreeResult> {
  const t0 = performance.now();
  if (m.type !== 'filesystem' || !m.tree) throw new CairnError('INTERNAL', `backup ${m.name} is not a file-system backup`);
  const target = resolve(req.to);
  const force = req.force === true;
  const selection = (req.paths ?? []).map((p) => normalizeTreePath(p, '--path'));
  await checkTarget(target, force);
  // The workers start while the tree is read and the folders are made.
  const pool = new WorkerPool(vault.key, vault.config.compression.level);
  try {
    return await restoreWith(vault, pool, m, m.tree, target, selection, req, t0);
  } finally {
    await pool.close();
  }
}

async function restoreWith(
  vault: Vault,
  pool: WorkerPool,
  m: Manifest,
  tree: TreeRecord,
  target: string,
  selection: Buffer[],
  req: RestoreTreeRequest,
  t0: number,
): Promise<RestoreTreeResult> {
  const force = req.force === true;
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const plan = await planRestore(vault, index, m, tree, selection);
  const { entries, skipped } = leaveOutUnreadable(plan.entries);
  if (force) checkInTheWay(target, entries, m.name);
  const files = entries.filter((e) => e.type === 'file');
  const locations = locateChunks(vault, index, files);
  const root = process.getuid?.() === 0;
  const warnings = [...plan.warnings];
  const result: RestoreTreeResult = {
    path: target,
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    special: 0,
    bytes: 0,
    bytesWritten: 0,
    durationMs: 0,
    warnings,
    partial: skipped.length > 0,
    skipped: skipped.map((s) => showPath(s.path)),
  };
  try {
    await mkdir(target, { recursive: true });
  } catch (err) {
    throw targetError(err, target);
  }
  const abs = (p: Buffer) => (p.length === 0 ? Buffer.from(target) : Buffer.concat([Buffer.from(target + '/'), p]));
  const restored: TreeEntry[] = [];
  let sockets = 0;
  let devices = 0;

  // 1. Folders (path order: a parent before its children), symlinks, fifos and device nodes.
  for (const e of entries) {
    const path = abs(e.path);
    try {
      switch (e.type) {
        case 'dir':
          if (e.path.length > 0) makeDir(path, force);
          result.dirs++;
          break;
        case 'symlink':
          await replacing(path, force, async () => symlinkSync(e.target!, path));
          result.symlinks++;
          break;
        case 'fifo':
        case 'chardev':
        case 'blockdev': {
          const type = e.type;
          if (type !== 'fifo' && !root) {
            devices++;
            continue;
          }
          await replacing(path, force, () => makeNode(target, path, type, e.rdev));
          result.special++;
          break;
        }
        case 'socket':
          sockets++;
          continue;
        default:
          continue;
      }
    } catch (err) {
      throw targetError(err, showPath(path));
    }
    restored.push(e);
  }

  // 2. File data.
  const total = files.reduce((s, e) => s + e.chunks!.reduce((t, c) => t + (c.id.equals(ZERO_ID) ? 0 : c.length), 0), 0);
  await restoreFiles(vault, pool, files, locations, abs, force, (n) => {
    result.bytesWritten += n;
    req.onProgress?.(result.bytesWritten, total);
  });
  for (const e of files) {
    result.files++;
    result.bytes += e.size;
    restored.push(e);
  }

  // 3. Hard links, to the path that now holds their data.
  for (const e of entries) {
    if (e.type !== 'hardlink' || !e.link) continue;
    const path = abs(e.path);
    try {
      await replacing(path, force, async () => linkSync(abs(e.link!), path));
    } catch (err) {
      warnings.push(`hard link ${showPath(e.path)} to ${showPath(e.link)} not restored: ${(err as Error).message}`);
      continue;
    }
    result.hardlinks++;
  }

  // 4. Metadata: owner first (a chown drops security.capability and setuid), then attributes, then
  // mode (a user.* attribute needs write permission, which the mode may take away), then times,
  // folders last and deepest first.
  const me = { uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1 };
  let foreignOwners = 0;
  for (const e of restored) {
    if (root) {
      try {
        lchownSync(abs(e.path), e.uid, e.gid);
      } catch (err) {
        warnings.push(`owner of ${showPath(e.path)} not restored: ${(err as Error).message}`);
      }
    } else if (e.uid !== me.uid || e.gid !== me.gid) foreignOwners++;
  }
  warnings.push(...(await restoreXattrs(restored.filter((e) => e.xattrs?.length).map((e): Xattrs => ({ path: abs(e.path), xattrs: e.xattrs! })), root)));
  for (const e of restored) {
    if (e.type === 'symlink') continue;
    try {
      chmodSync(abs(e.path), e.mode & 0o7777);
    } catch (err) {
      warnings.push(`mode of ${showPath(e.path)} not restored: ${(err as Error).message}`);
    }
  }
  const times = (e: TreeEntry): Times => ({ path: abs(e.path), atimeNs: e.atimeNs, mtimeNs: e.mtimeNs });
  const dirs = restored.filter((e) => e.type === 'dir').reverse();
  warnings.push(...(await restoreTimes([...restored.filter((e) => e.type !== 'dir').map(times), ...dirs.map(times)])));

  if (foreignOwners > 0) {
    warnings.push(`owners of ${foreignOwners} entries not restored: only root can give files to other users; they belong to uid ${me.uid}`);
  }
  if (devices > 0) warnings.push(`${devices} device nodes not restored: only root can make them`);
  if (skipped.length > 0) warnings.push(skippedWarning(skipped));
  const flagged = restored.filter((e) => e.warning && !isUnreadable(e)).length;
  if (flagged > 0) warnings.push(`${flagged} restored entries carry a warning from the backup (e.g. changed while read); see 'cairn ls --json'`);
  if (sockets > 0) warnings.push(`${sockets} sockets not restored: a socket is made by the program that listens on it`);
  result.entries = restored.length + result.hardlinks;
  result.durationMs = Math.round(performance.now() - t0);
  return result;
}

function isUnreadable(e: TreeEntry): boolean {
  return e.warning?.startsWith('unreadable') === true;
}

/**
 * Leaves out what the backup could not read: entries recorded 'unreadable', files without a chunk
 * list, symlinks without a target, and hard links to any of those files. A folder recorded
 * unreadable stays (it is made, empty: its listing failed) but is named too. Entries 'changed
 * while read' stay: their data is what was read.
 */
function leaveOutUnreadable(entries: TreeEntry[]): { entries: TreeEntry[]; skipped: Skipped[] } {
  const kept: TreeEntry[] = [];
  const skipped: Skipped[] = [];
  const missing = new Set<string>();
  for (const e of entries) {
    if (e.type === 'dir') {
      if (isUnreadable(e)) skipped.push({ path: e.path, dir: true, why: e.warning! });
      kept.push(e);
    } else if (e.type === 'hardlink' && e.link && missing.has(e.link.toString('latin1'))) {
      skipped.push({ path: e.path, dir: false, why: `a hard link to ${showPath(e.link)}` });
    } else if (isUnreadable(e) || (e.type === 'file' && !e.chunks) || (e.type === 'symlink' && !e.target)) {
      if (e.type === 'file') missing.add(e.path.toString('latin1'));
      skipped.push({ path: e.path, dir: false, why: e.warning ?? 'the backup holds no data for it' });
    } else kept.push(e);
  }
  return { entries: kept, skipped };
}

function skippedWarning(skipped: Skipped[]): string {
  const named = skipped.slice(0, WARN_PATHS).map((s) => (s.dir ? `${showPath(s.path)}/ (made empty; ${s.why})` : `${showPath(s.path)} (${s.why})`));
  const more = skipped.length > named.length ? `; and ${skipped.length - named.length} more (see 'skipped' in --json)` : '';
  return (
    `${skipped.length} entr${skipped.length === 1 ? 'y' : 'ies'} not restored as backed up: the backup could not read ` +
    `${skipped.length === 1 ? 'it' : 'them'} (the restore is partial): ${named.join('; ')}${more}`
  );
}

/**
 * With `force`, before anything is written: a file, symlink, hard link or node of the backup may
 * replace an empty folder of the target, never one with contents (TARGET_UNWRITABLE naming it).
 * Folders the restore makes anew are not looked into.
 */
function checkInTheWay(target: string, entries: TreeEntry[], backupName: string): void {
  const fresh = new Set<string>();
  for (const e of entries) {
    if (e.path.length === 0) continue;
    const parent = parentPath(e.path)!;
    const key = e.path.toString('latin1');
    if (parent.length > 0 && fresh.has(parent.toString('latin1'))) {
      if (e.type === 'dir') fresh.add(key);
      continue;
    }
    const path = Buffer.concat([Buffer.from(target + '/'), e.path]);
    let st;
    try {
      st = lstatSync(path, { throwIfNoEntry: false });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOTDIR') throw targetError(err, showPath(path));
    }
    if (!st?.isDirectory()) {
      if (e.type === 'dir') fresh.add(key);
      continue;
    }
    if (e.type === 'dir') continue;
    let inside: Buffer[];
    try {
      inside = readdirSync(path, { encoding: 'buffer' });
    } catch (err) {
      throw targetError(err, showPath(path));
    }
    if (inside.length > 0) {
      throw new CairnError(
        'TARGET_UNWRITABLE',
        `${showPath(path)} is a folder with ${inside.length} entries, where backup ${backupName} has a ${e.type === 'hardlink' ? 'file' : e.type}; ` +
          `nothing was restored: move or delete that folder, or restore into another folder, and run the restore again`,
      );
    }
  }
}

/** The target must be a folder that is new or empty, or `force`. */
async function checkTarget(target: string, force: boolean): Promise<void> {
  let st;
  try {
    st = await stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw targetError(err, target);
  }
  if (!st.isDirectory()) {
    throw new CairnError('ALREADY_EXISTS', `restore target ${target} exists and is not a folder; give a new or empty folder as --to`);
  }
  if (force) return;
  const inside = await readdir(target).catch((err) => {
    throw targetError(err, target);
  });
  if (inside.length > 0) {
    throw new CairnError(
      'ALREADY_EXISTS',
      `restore target ${target} is not empty (it holds ${inside.length} entries); give a new or empty folder as --to, or add --force to restore into it`,
    );
  }
}

/**
 * Reads the tree and keeps what is selected: entries at or below a selected path, and the folders
 * above them. NOT_FOUND for a selected path the tree lacks. A selected hard link whose data-holding
 * path is not selected becomes a file with that path's data (the first such link of an inode; the
 * others link to it), which may take a second read of the tree.
 */
async function planRestore(vault: Vault, index: ChunkIndex, m: Manifest, record: TreeRecord, selection: Buffer[]): Promise<Plan> {
  const all = selection.length === 0 || selection.some((p) => p.length === 0);
  const found = selection.map(() => false);
  const nearest = selection.map((): Buffer => Buffer.alloc(0));
  const entries: TreeEntry[] = [];
  for await (const e of readTree(vault, index, record)) {
    let keep = all;
    if (!all) {
      selection.forEach((sel, i) => {
        if (isAtOrBelow(e.path, sel)) {
          keep = true;
          if (e.path.length === sel.length) found[i] = true;
        } else if (isAncestor(e.path, sel)) {
          nearest[i] = e.path;
          if (e.type === 'dir') keep = true;
        }
      });
    }
    // An empty file may come without a chunk list.
    if (keep) entries.push(e.type === 'file' && !e.chunks && e.size === 0 ? { ...e, chunks: [] } : e);
  }
  if (!all) {
    const missing = selection.findIndex((_, i) => !found[i]);
    if (missing >= 0) throw pathNotFound(m.name, selection[missing], nearest[missing]);
  }
  const kept = new Set(entries.filter((e) => e.type === 'file').map((e) => e.path.toString('latin1')));
  const orphans = entries.filter((e) => e.type === 'hardlink' && e.link && !kept.has(e.link.toString('latin1')));
  if (orphans.length === 0) return { entries, warnings: [] };
  const wanted = new Map(orphans.map((e) => [e.link!.toString('latin1'), undefined as TreeEntry | undefined]));
  for await (const e of readTree(vault, index, record)) {
    const k = e.path.toString('latin1');
    if (wanted.has(k)) wanted.set(k, e);
  }
  const holder = new Map<string, Buffer>();
  const warnings: string[] = [];
  const out: TreeEntry[] = [];
  for (const e of entries) {
    if (e.type !== 'hardlink' || !e.link || kept.has(e.link.toString('latin1'))) {
      out.push(e);
      continue;
    }
    const k = e.link.toString('latin1');
    const first = holder.get(k);
    const data = wanted.get(k);
    if (first) out.push({ ...e, link: first });
    else if (data?.type === 'file') {
      holder.set(k, e.path);
      // The inode's data and metadata (mode, owner, times, attributes) are recorded on its first path.
      out.push({ ...data, path: e.path });
    } else {
      warnings.push(`hard link ${showPath(e.path)} not restored: its data should be at ${showPath(e.link)}, which the backup lacks`);
    }
  }
  return { entries: out, warnings };
}

interface Located {
  loc: ChunkLocation;
  id: Buffer;
}

/** Every stored chunk of the files, by file: VAULT_CORRUPT (naming file and offset) for one no index holds. */
function locateChunks(vault: Vault, index: ChunkIndex, files: TreeEntry[]): Map<TreeEntry, (Located | undefined)[]> {
  const out = new Map<TreeEntry, (Located | undefined)[]>();
  for (const e of files) {
    const list: (Located | undefined)[] = [];
    let offset = 0;
    for (const c of e.chunks!) {
      if (c.id.equals(ZERO_ID)) list.push(undefined);
      else {
        const loc = index.get(c.id);
        if (!loc) {
          throw new CairnError(
            'VAULT_CORRUPT',
            `chunk ${c.id.toString('hex')} of ${showPath(e.path)} (offset ${offset}) is in no index of the vault at ${vault.store.location}; run 'cairn vault verify'`,
          );
        }
        list.push({ loc, id: c.id });
      }
      offset += c.length;
    }
    if (offset !== e.size) {
      throw new CairnError('VAULT_CORRUPT', `the chunks of ${showPath(e.path)} in backup tree cover ${offset} bytes, but the file has ${e.size}`);
    }
    out.set(e, list);
  }
  return out;
}

/** One blob to fetch and where its plaintext goes. */
interface Want {
  id: Buffer;
  loc: ChunkLocation;
  places: { file: number; offset: number }[];
}

/**
 * Writes the files' data in batches of open files: each batch's chunks are read pack by pack in
 * offset order (neighbours merged into one ranged get) into shared slots, and decoded, checked and
 * written by the workers at the right offsets of the right files. A batch's files live under
 * temporary names until the whole batch is written; on an error they are removed.
 */
async function restoreFiles(
  vault: Vault,
  pool: WorkerPool,
  files: TreeEntry[],
  locations: Map<TreeEntry, (Located | undefined)[]>,
  abs: (p: Buffer) => Buffer,
  force: boolean,
  onBytes: (n: number) => void,
): Promise<void> {
  let biggest = 0;
  for (const list of locations.values()) for (const l of list) if (l && l.loc.length > biggest) biggest = l.loc.length;
  const slotBytes = Math.max(MAX_READ, biggest + SEAL_OVERHEAD) + 64 * 1024;
  // Two batches in flight, each with its own slots: one creates its files while the other's chunks
  // are decoded, so neither the disk nor the workers wait for the other.
  const perLane = pool.size + 1;
  const slots: BatchSlot[] = [];
  for (let i = 0; i < LANES * perLane; i++) slots.push({ input: new SharedArrayBuffer(slotBytes), output: new SharedArrayBuffer(0) });
  await pool.broadcast({ type: 'slots', slots });
  const inputs = slots.map((s) => Buffer.from(s.input));
  const ctx: BatchContext = {
    vault,
    pool,
    inputs,
    perLane,
    locations,
    abs,
    force,
    onBytes,
    jobNo: 0,
    tmpPrefix: `.cairn-partial-${randomBytes(6).toString('hex')}-`,
    tmpNo: 0,
    failed: false,
  };

  const free = Array.from({ length: LANES }, (_, i) => i);
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for (let start = 0; start < files.length; ) {
    while (free.length === 0) await Promise.race(running);
    if (failure !== undefined) break;
    let end = start;
    let bytes = 0;
    while (end < files.length && end - start < BATCH_FILES && (end === start || bytes + files[end].size <= BATCH_BYTES)) bytes += files[end++].size;
    const batch = files.slice(start, end);
    start = end;
    const lane = free.pop()!;
    const run: Promise<void> = restoreBatch(ctx, batch, lane)
      .catch((err) => {
        failure ??= err;
        ctx.failed = true;
      })
      .finally(() => {
        running.delete(run);
        free.push(lane);
      });
    running.add(run);
  }
  await Promise.all(running);
  if (failure !== undefined) throw failure;
}

interface BatchContext {
  vault: Vault;
  pool: WorkerPool;
  inputs: Buffer[];
  perLane: number;
  locations: Map<TreeEntry, (Located | undefined)[]>;
  abs: (p: Buffer) => Buffer;
  /** An empty folder where a file goes is removed (the restore checked that none has contents). */
  force: boolean;
  onBytes: (n: number) => void;
  jobNo: number;
  /** Temporary names are `<tmpPrefix><tmpNo>` (created O_EXCL): one random part per restore, then a counter. */
  tmpPrefix: string;
  tmpNo: number;
  /** Set when a batch failed: the others stop starting jobs. */
  failed: boolean;
}

/** Creates a batch's files under temporary names, writes their data, and renames them into place; on an error removes them. */
async function restoreBatch(ctx: BatchContext, batch: TreeEntry[], lane: number): Promise<void> {
  const open_: { path: Buffer; tmp: Buffer; fd: number }[] = [];
  const forget = onInterrupt(() => open_.forEach((f) => f.tmp.length && unlinkQuietly(f.tmp)));
  try {
    // Created with synchronous calls: a create takes microseconds, less than a trip through the
    // thread pool, which the pack reads of the other lane keep busy.
    for (const e of batch) {
      const path = ctx.abs(e.path);
      const tmp = Buffer.concat([path.subarray(0, path.lastIndexOf(0x2f) + 1), Buffer.from(`${ctx.tmpPrefix}${ctx.tmpNo++}`)]);
      let fd: number;
      try {
        fd = openSync(tmp, 'wx', 0o600);
      } catch (err) {
        throw targetError(err, showPath(path)); // nothing of ours to remove (EEXIST: not ours either)
      }
      const f = { path, tmp, fd };
      open_.push(f);
      try {
        // Data writes set the size, unless the file ends in a hole (or is one).
        const chunks = e.chunks!;
        if (chunks.length && chunks[chunks.length - 1].id.equals(ZERO_ID)) ftruncateSync(f.fd, e.size);
      } catch (err) {
        throw targetError(err, showPath(path));
      }
    }
    // Each distinct blob is fetched and decoded once however many places use it.
    const byBlob = new Map<string, Want>();
    batch.forEach((e, file) => {
      let offset = 0;
      e.chunks!.forEach((c, k) => {
        const l = ctx.locations.get(e)![k];
        if (l) {
          const key = l.id.toString('latin1');
          const want = byBlob.get(key);
          if (want) want.places.push({ file, offset });
          else byBlob.set(key, { id: l.id, loc: l.loc, places: [{ file, offset }] });
        }
        offset += c.length;
      });
    });
    const runner = new SlotRunner(ctx.perLane);
    for (const job of packReadJobs(byBlob.values(), MAX_READ, MAX_GAP)) {
      const n = await runner.acquire();
      if (n === undefined || ctx.failed) break;
      const slot = lane * ctx.perLane + n;
      const jobNo = ctx.jobNo++;
      runner.start(n, () => runJob(ctx.vault, ctx.pool, job, jobNo, slot, ctx.inputs[slot], batch, open_, ctx.onBytes));
    }
    await runner.drain();
    if (ctx.failed) throw new CairnError('INTERNAL', 'another batch failed');
    for (const f of open_) {
      const fd = f.fd;
      f.fd = -1; // closed even if close reports an error: never closed twice (the number may be reused)
      closeSync(fd);
    }
    for (const f of open_) {
      try {
        try {
          renameSync(f.tmp, f.path);
        } catch (err) {
          if (!ctx.force || (err as NodeJS.ErrnoException).code !== 'EISDIR') throw err;
          rmdirSync(f.path);
          renameSync(f.tmp, f.path);
        }
      } catch (err) {
        throw targetError(err, showPath(f.path));
      }
      f.tmp = Buffer.alloc(0);
    }
  } catch (err) {
    // Every file is cleaned up, whatever one of them reports, and the first error is the one told.
    for (const f of open_) {
      if (f.fd >= 0) {
        const fd = f.fd;
        f.fd = -1;
        try {
          closeSync(fd);
        } catch {
          // already failing
        }
      }
      if (f.tmp.length) unlinkQuietly(f.tmp);
    }
    throw err;
  } finally {
    forget();
  }
}

function unlinkQuietly(path: Buffer): void {
  try {
    unlinkSync(path);
  } catch {
    // gone already
  }
}

async function runJob(
  vault: Vault,
  pool: WorkerPool,
  job: Want[],
  jobNo: number,
  slot: number,
  into: Buffer,
  batch: TreeEntry[],
  files: { fd: number }[],
  onBytes: (n: number) => void,
): Promise<void> {
  const { packId, start, data, ids } = await readPackJob(vault, job, into);
  if (data.buffer !== into.buffer) copyInto(data, into, 0); // the worker decodes from the slot
  const items: DecodeItem[] = job.map((w) => ({
    offset: w.loc.offset - start,
    length: w.loc.length,
    codec: w.loc.codec,
    rawLength: w.loc.rawLength,
    offsets: w.places.map((p) => p.offset),
    fds: w.places.map((p) => files[p.file].fd),
  }));
  const reply = await pool.call(
    pool.leastBusy(),
    { type: 'decode', job: jobNo, where: `pack ${packId}`, slot, length: data.length, ids: ids.buffer as ArrayBuffer, items },
    [ids.buffer as ArrayBuffer],
  );
  if (reply.type !== 'decoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
  onBytes(reply.bytesWritten);
  if (reply.errors.length) {
    const bad = job[reply.errors[0].index].places[0];
    throw new CairnError(
      'VAULT_CORRUPT',
      `${showPath(batch[bad.file].path)} (offset ${bad.offset}) cannot be restored: ${reply.errors[0].message}; run 'cairn vault verify --read-data'`,
    );
  }
}

/**
 * Makes a folder of the tree. Its parent was made (or checked) before, so only the last component
 * can be in the way: a folder there is used as it is; anything else, a symlink above all (which
 * would lead later entries outside the target), is removed with `force` and refused without.
 */
function makeDir(path: Buffer, force: boolean): void {
  try {
    mkdirSync(path, { mode: 0o700 });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (lstatSync(path).isDirectory()) return;
  if (!force) throw Object.assign(new Error(`${path.toString()} exists and is not a folder`), { code: 'EEXIST' });
  unlinkSync(path);
  mkdirSync(path, { mode: 0o700 });
}

/** Runs `make`; with `force`, when something is in the way, removes it (an empty folder, or anything else but a folder) and runs it again. */
async function replacing(path: Buffer, force: boolean, make: () => Promise<unknown>): Promise<void> {
  try {
    await make();
  } catch (err) {
    // EISDIR: a rename (fifos, device nodes) onto a folder.
    const code = (err as NodeJS.ErrnoException).code;
    if (!force || (code !== 'EEXIST' && code !== 'EISDIR')) throw err;
    removeInTheWay(path);
    await make();
  }
}

/** Removes what is at `path`: a folder only when empty (checkInTheWay refused the others before the restore began). */
function removeInTheWay(path: Buffer): void {
  if (lstatSync(path).isDirectory()) rmdirSync(path);
  else unlinkSync(path);
}

function targetError(err: unknown, where: string): CairnError {
  const e = fromSystemError(err, 'cannot write restore target', where);
  return e.code === 'INTERNAL' ? new CairnError('TARGET_UNWRITABLE', e.message, { cause: err }) : e;
}
