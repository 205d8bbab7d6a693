import { close, closeSync, constants, fstat, fstatSync, open, openSync, read, readlinkSync, readSync, realpathSync, type BigIntStats } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { CairnError } from '../../shared/errors.js';
import { uniqueName } from './backup-engine.js';
import { ZERO_ID } from '../../shared/vault/block-map.js';
import type { CdcParams } from '../../shared/vault/cdc.js';
import type { ChunkIndex } from '../../shared/vault/chunk-index.js';
import { cdcParams, fileCompressionLevel } from '../../shared/vault/config.js';
import { ID_BYTES } from '../../shared/vault/crypto.js';
import { Lease } from '../../shared/vault/lease.js';
import { countManifestBytes, type Manifest } from '../../shared/vault/manifest.js';
import { PackWriter } from '../../shared/vault/pack-writer.js';
import { protectPacks } from '../../shared/vault/retention.js';
import { SlotRunner } from '../../shared/vault/slot-runner.js';
import { PartCursor, TreeReader, TreeWriter, TREE_FLAGS, TREE_TYPE_CODES, type FileChunk, type RawTreePart, type TreeEntry, type TreeRecord } from '../../shared/vault/tree.js';
import type { Vault } from '../../shared/vault/vault.js';
import { InlineFirstPool } from '../../shared/vault/worker-pool.js';
import { cutOutputBytes, type BatchSlot, type CutSegment } from '../../shared/vault/worker-protocol.js';
import { ExcludeMatcher } from '../source/dir/exclude.js';
import { displayPath } from '../source/dir/path-bytes.js';
import { NUMS, WALK_TYPES, type WalkBatchView } from '../source/dir/walk-protocol.js';
import { WalkStream } from '../source/dir/walk-stream.js';
import { errText, type EntryStat, type WalkEntry } from '../source/dir/walker.js';
import { XattrReader } from '../source/dir/xattrs.js';
import { compareBytes, copyInto } from '../../shared/vault/bytes.js';

export interface FileBackupProgress {
  files: number;
  bytesRead: number;
  bytesStored: number;
}

export interface FileBackupOptions {
  name?: string;
  namePrefix?: 'manualbk' | 'autobk';
  resourceName?: string;
  /** Ignore the parent backup: read every file (chunks already in the vault are still reused). */
  full?: boolean;
  /** Exclude patterns (exclude.ts). */
  excludes?: string[];
  /** Enter mounted file systems below the root (default: record their mount points as empty directories). */
  crossFileSystems?: boolean;
  /**
   * The walk of `root`, started by the caller (so it runs while the vault opens: the key derivation
   * takes a few hundred ms) with these options' excludes and crossFileSystems; runFileBackup closes it.
   */
  walk?: WalkStream;
  workers?: number;
  /**
   * false: every entry is compared with its parent's as objects, none in place (for tests: both
   * ways must give the same tree).
   */
  compareInPlace?: boolean;
  onProgress?: (p: FileBackupProgress) => void;
}

export interface FileBackupResult {
  manifest: Manifest;
  tree: TreeRecord;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  recoveredPacks: number;
  /** Files whose chunk lists came from the parent's tree without a read (size, mtime, ctime and inode equal). */
  filesReused: number;
  /** Files opened and read (new or changed, or no parent). */
  filesRead: number;
  newChunks: number;
  newBytes: number;
  /** Paths (display form, path-bytes.ts) recorded without their data or contents: they could not be read (the first LIST_PATHS). */
  unreadable: string[];
  unreadableCount: number;
  /** Paths whose size or times changed while they were read: recorded as read, with a warning (the first LIST_PATHS). */
  changed: string[];
  changedCount: number;
  warnings: string[];
}

/** The resource key of a file-system backup: backups of the same folder chain as incrementals. */
export function fileResourceKey(root: string): string {
  return `dir://${resolve(root)}`;
}

/** Bytes of file data per worker batch; a file larger than this is read into several batches in turn. */
const SLOT_DATA = 8 * 1024 * 1024;
/** At most this many files share a batch (each is a segment of the 'cut' request). */
const SEGMENTS_PER_SLOT = 1024;
/** Entries waiting (in tree order) for their data or attributes before the walk pauses. */
const MAX_PENDING = 32768;
/**
 * Entries queued behind a waiting one before the half-filled batches (data, attributes) are sent
 * anyway, and at most once per this many entries from the walk: an incremental with a few changed
 * files does not hold MAX_PENDING entries (memory, GC) until its batches fill, and sends at most one
 * extra batch of attribute reads (a getfattr run) per this many entries, however scattered its
 * changes. A full backup fills its batches before (2048 paths, 1024 files).
 */
const FLUSH_PENDING = 4096;
/**
 * Files up to this size are read with synchronous calls: open, read, fstat and close of a cached
 * small file take microseconds, less than one trip through libuv's thread pool (measured on
 * /usr/lib: 2.7 s synchronous against 5.4 s with 16 asynchronous reads at a time).
 */
const SYNC_READ_MAX = 256 * 1024;
/**
 * File data cut, hashed and encoded on the main thread before the worker threads start: an
 * incremental that reads a few changed files does not pay for starting them (InlineFirstPool).
 */
const INLINE_BYTES = 16 * 1024 * 1024;
/** Larger files read at once (open, read, fstat, close each in the thread pool). */
const READ_CONCURRENCY = 8;
/** Large files (several batches each) in flight at once. */
const LARGE_FILES = 4;
/** Paths listed in the manifest's warnings; the rest are counted. */
const WARN_PATHS = 20;
/** Paths kept in the result's unreadable and changed lists (a tree may have millions); the rest are counted. */
const LIST_PATHS = 1000;
/** How often the merge reports progress (ms). */
const PROGRESS_MS = 100;

/**
 * Backs up a folder into the vault as one file-system backup (FORMAT.md, "Trees"). Write order:
 * lease, packs (file data and tree parts), index objects, manifest. The manifest is the commit point; a failure
 * or kill before it leaves only unreferenced objects (gc removes them; packs are reused by the next
 * backup).
 *
 * The walk (agent/source/dir/walker.ts) runs in a thread of its own (walk-stream.ts) and yields
 * entries in tree order, ahead of their use by up to 64k (walk-stream.ts); the parent's tree is read
 * alongside in the same order, a part at a time (a merge join: memory is a few parts of it, not the
 * whole tree). A file
 * whose size, mtime, ctime and inode equal its parent entry's keeps that entry's chunk list and is
 * not opened; an entry whose ctime and inode are unchanged keeps the parent's extended attributes.
 * Other files are read into shared batch slots (many small files per slot), cut and hashed (by the
 * worker threads, or on this thread for the first INLINE_BYTES), and only chunks the vault lacks are
 * encoded and stored. A file is lstat'ed before and
 * fstat'ed after its read: a change in between is recorded as a warning on the entry. An entry that
 * cannot be read is recorded with a warning and no data; the backup goes on and is partial.
 * Memory is bounded: at most MAX_PENDING entries wait for their data, plus the slots.
 */
export async function runFileBackup(vault: Vault, root: string, opts: FileBackupOptions = {}): Promise<FileBackupResult> {
  const started = vault.clock.now();
  const t0 = performance.now();
  const absRoot = resolve(root);
  const resource = fileResourceKey(absRoot);
  // The walk runs in its own thread from now on, beside the index, the parent's tree and the data
  // (a caller that started it checked the patterns); a bad pattern is USAGE before anything starts.
  const walk = opts.walk ?? startWalk(absRoot, opts);
  try {
    // Fail on a missing or non-folder root before taking the lease.
    await walk.first();
    return await backupWalk(vault, walk, absRoot, resource, started, t0, opts);
  } finally {
    await walk.close();
  }
}

function startWalk(absRoot: string, opts: FileBackupOptions): WalkStream {
  ExcludeMatcher.compile(opts.excludes ?? []);
  return new WalkStream(absRoot, { excludes: opts.excludes ?? [], crossFileSystems: opts.crossFileSystems });
}

async function backupWalk(
  vault: Vault,
  walk: WalkStream,
  absRoot: string,
  resource: string,
  started: Date,
  t0: number,
  opts: FileBackupOptions,
): Promise<FileBackupResult> {
  const existing = await vault.listBackups();
  const name = opts.name ?? uniqueName(vault, opts.namePrefix ?? 'manualbk', existing);
  if (existing.some((m) => m.name === name)) {
    throw new CairnError('ALREADY_EXISTS', `a backup named '${name}' exists already in ${vault.store.location}; choose another --name`);
  }
  const parent = opts.full ? undefined : [...existing].reverse().find((m) => m.resource === resource && m.type === 'filesystem' && m.tree);

  const lease = await Lease.acquire(vault, 'backup');
  // The getfattr helper starts first, while this process is small (a fork copies its page tables).
  const xattrs = new XattrReader();
  // Chunk work starts on this thread; its worker threads start past INLINE_BYTES of file data.
  const pool = new InlineFirstPool(vault.key, fileCompressionLevel(vault.config), opts.workers);
  try {
    const { index, plan, packs } = await vault.loadIndex();
    const recoveredPacks = await vault.recoverUnindexedPacks(index, plan, packs);
    const id = vault.newBackupId();
    const writer = new PackWriter(vault, index);
    // Tree parts go into packs of their own, in tree order: the next backup reads the parts it
    // needs in a few long ranged gets rather than one per part scattered among the file data.
    const treePacks = new PackWriter(vault, index);
    const tree = new TreeWriter(vault, treePacks, index);
    const data = new FileData(vault, index, writer, pool, cdcParams(vault.config), new TreePlace(absRoot));
    await data.start();
    // The parent's tree may lie in packs a pending gc condemned (reused by a backup that finished
    // meanwhile; the sweep spares them): it is read through an index that has them too.
    const parentIndex = parent && plan?.condemnedPacks.length ? (await vault.loadIndex({ includeCondemned: true })).index : index;
    const run = new TreeRun(tree, data, xattrs, index, parent ? new TreeReader(vault, parentIndex, parent.tree!) : undefined, opts.onProgress, () => writer.bytesWritten + treePacks.bytesWritten);
    if (parent) run.setRacyFrom(BigInt(Date.parse(parent.startedAt) - 2000) * 1_000_000n);
    run.immutable = vault.config.immutability !== undefined;
    run.inPlace = opts.compareInPlace ?? true;

    // Entries a batch at a time, each handled synchronously unless it must wait (for the parent's
    // next part, for room in the writer, for data when too much is pending): no promise per entry.
    // Between batches, I/O callbacks (file reads, worker results) get their turn.
    for await (const view of walk.views()) {
      const wait = run.addBatch(view);
      if (wait) await wait;
      await new Promise<void>((r) => setImmediate(r));
    }
    await run.finish();
    const record = await tree.finish();
    await data.drain();
    await Promise.all([writer.flush(), treePacks.flush()]);

    const warnings: string[] = [];
    if (xattrs.unavailable) warnings.push(xattrs.unavailable);
    if (xattrs.broken) warnings.push(`extended attributes of some entries may be missing: ${xattrs.broken}`);
    for (const [attr, count] of xattrs.skipped) {
      warnings.push(`extended attribute ${attr} was not backed up on ${count} entr${count === 1 ? 'y' : 'ies'} (only user.*, trusted.* and, as root, security.* are)`);
    }
    if (run.unreadableCount) {
      warnings.push(
        `${run.unreadableCount} entr${run.unreadableCount === 1 ? 'y' : 'ies'} could not be read and ${run.unreadableCount === 1 ? 'is' : 'are'} recorded without data (the backup is partial): ` +
          listPaths(run.unreadableDetail, run.unreadableCount),
      );
    }
    if (run.changedCount) {
      warnings.push(
        `${run.changedCount} file${run.changedCount === 1 ? '' : 's'} changed while read (recorded as read): ` + listPaths(run.changedDetail, run.changedCount),
      );
    }

    const manifest: Manifest = {
      version: 2,
      id,
      name,
      kind: parent ? 'incremental' : 'full',
      resource,
      ...(opts.resourceName !== undefined ? { resourceName: opts.resourceName } : {}),
      parent: parent?.id ?? null,
      startedAt: started.toISOString(),
      finishedAt: vault.clock.now().toISOString(),
      host: hostname(),
      consistency: 'crash_consistent',
      disks: [],
      type: 'filesystem',
      tree: record,
      bytesRead: data.bytesRead,
      bytesStored: writer.bytesWritten + treePacks.bytesWritten,
      ...(warnings.length ? { warnings } : {}),
    };
    countManifestBytes(vault.key.encryption, manifest);
    await protectPacks(vault, new Set([...run.packsUsed, ...tree.packsReused]));
    await vault.writeManifest(manifest);
    opts.onProgress?.({ files: run.files, bytesRead: data.bytesRead, bytesStored: manifest.bytesStored });
    return {
      manifest,
      tree: record,
      bytesRead: data.bytesRead,
      bytesStored: manifest.bytesStored,
      durationMs: Math.round(performance.now() - t0),
      recoveredPacks,
      filesReused: run.filesReused,
      filesRead: run.filesRead,
      newChunks: data.newChunks,
      newBytes: data.newBytes,
      unreadable: run.unreadable,
      unreadableCount: run.unreadableCount,
      changed: run.changed,
      changedCount: run.changedCount,
      warnings,
    };
  } finally {
    xattrs.close();
    // Work queued before a failure fails from here on: a closed pool refuses it, and starts no threads.
    await pool.close();
    await lease.release().catch(() => undefined);
  }
}

function listPaths(detail: string[], total: number): string {
  return detail.join('; ') + (total > detail.length ? `; and ${total - detail.length} more` : '');
}

// ---- the walk, merged with the parent's tree ---------------------------------------------------

/** An entry to write, or a run of the parent's entries to write as they were (TreeWriter.addStored). */
interface Pending {
  entry: TreeEntry | undefined;
  /** Unsettled work (data, attributes) the entry waits for; undefined once done (a failure stays, for drain to throw). */
  wait: Promise<void> | undefined;
  /** Without entry: entries at, at + 1, ... at + n - 1 of the parent's part `from`. */
  from?: RawTreePart;
  at?: number;
  n?: number;
}

/** Written entries leave the queue at once (the writer keeps no reference either). */
const DONE: Pending = { entry: undefined, wait: undefined };

/** Whether the chunk id at bytes[at..at+32) is the zero id (an all-zero run: never stored). */
function isZeroId(bytes: Buffer, at: number): boolean {
  for (let i = 0; i < ID_BYTES; i++) if (bytes[at + i] !== 0) return false;
  return true;
}

/** The tree's type code (tree.ts) of each of the walk's (walk-protocol.ts: no hard links). */
const TREE_TYPE_OF_WALK = WALK_TYPES.map((t) => TREE_TYPE_CODES[t]);

/**
 * Turns walk entries into tree entries in tree order: merges with the parent's tree, decides what
 * to read, and hands entries to the TreeWriter in order as their data and attributes arrive.
 */
class TreeRun {
  files = 0;
  filesReused = 0;
  filesRead = 0;
  readonly unreadable: string[] = [];
  unreadableCount = 0;
  readonly unreadableDetail: string[] = [];
  readonly changed: string[] = [];
  changedCount = 0;
  readonly changedDetail: string[] = [];
  /**
   * Packs written before this backup that hold its chunks (retention on immutable vaults): a chunk
   * not in the index when its file's chunks arrive is new, and new packs get full retention when put.
   */
  readonly packsUsed = new Set<string>();
  /** The vault keeps backups under Object Lock: packsUsed is collected. */
  immutable = false;
  /** Entries equal to their parent's are found in place (sameAsParent), not as objects. */
  inPlace = true;
  private readonly queue: Pending[] = [];
  private head = 0;
  /** Entries taken from the walk, and how many there were when batches were last sent early (FLUSH_PENDING). */
  private added = 0;
  private flushedAt = 0;
  /** Entries in the queue not written yet (a queued run of the parent's entries counts each). */
  private waiting = 0;
  /** Entries taken, and the time, when progress was last reported. */
  private reportedAt = 0;
  private reportedTime = 0;
  private readonly links = new Map<string, Buffer>();
  /** The parent's tree, an entry at a time; `atEntry`: the cursor holds an entry not yet passed by the walk. */
  private readonly cursor = new PartCursor();
  private atEntry = false;
  private parentDone: boolean;
  /** racyFromNs as the two int32 halves of an int64. */
  private racyHigh = 0;
  private racyLow = 0;
  /**
   * A parent entry changed at or after this instant (2 s before the parent started) may have been
   * written again within the same timestamp tick after it was read (file times are coarser than a
   * read): it is read again rather than trusted, as git does with racy index entries.
   */
  racyFromNs = -1n;

  constructor(
    private readonly tree: TreeWriter,
    private readonly data: FileData,
    private readonly xattrs: XattrReader,
    private readonly index: ChunkIndex,
    private readonly parentTree: TreeReader | undefined,
    private readonly onProgress: ((p: FileBackupProgress) => void) | undefined,
    private readonly stored: () => number,
  ) {
    this.parentDone = !parentTree;
  }

  /** Sets the racy instant (see racyFromNs). */
  setRacyFrom(ns: bigint): void {
    this.racyFromNs = ns;
    this.racyHigh = Number(BigInt.asIntN(32, ns >> 32n));
    this.racyLow = Number(BigInt.asUintN(32, ns));
  }

  /**
   * Takes a batch of the walk from entry `from` on; returns a promise only when it must wait:
   * await it before the next call.
   */
  addBatch(view: WalkBatchView, from = 0): Promise<void> | undefined {
    for (let i = from; i < view.length; i++) {
      const match = this.parentMatch(view, i);
      if (match === null) return this.readParent().then(() => this.addBatch(view, i));
      let wait: Promise<void> | undefined;
      if (match && this.inPlace && this.sameAsParent(view, i)) wait = this.addAsBefore();
      else wait = this.add(view.entry(i), match ? this.cursor.entry() : undefined);
      if (wait) return wait.then(() => this.addBatch(view, i + 1));
    }
    return undefined;
  }

  /**
   * The cursor's entry, equal to the walk's (sameAsParent), goes into the new tree as it was: most
   * entries of an incremental. A run of them through a whole part reuses that part as it is.
   */
  private addAsBefore(): Promise<void> | undefined {
    const c = this.cursor;
    const part = c.part!;
    if (c.type === TREE_TYPE_CODES.file) {
      this.files++;
      this.filesReused++;
      if (this.immutable) this.usePacks(c.entry().chunks!);
    }
    this.added++;
    if (this.head === this.queue.length) {
      this.report();
      return this.tree.addStored(part, c.n, 1);
    }
    // Behind entries that wait: one queue item for the run.
    const last = this.queue[this.queue.length - 1];
    if (last.entry === undefined && last.from === part && last.at! + last.n! === c.n) last.n!++;
    else this.queue.push({ entry: undefined, wait: undefined, from: part, at: c.n, n: 1 });
    this.waiting++;
    return this.drain(false);
  }

  /**
   * Whether the entry add() would make of the walk's entry i equals the cursor's entry (same path)
   * in every field, read in place: same type, stat and link target, a file reusable as it was
   * (reusable()), attributes kept (same ctime and inode), no warning. Hard-linked files (nlink > 1)
   * and inode numbers of 2^53 or more take the long way.
   */
  private sameAsParent(v: WalkBatchView, i: number): boolean {
    const c = this.cursor;
    const k = i * NUMS;
    const nums = v.nums;
    const type = TREE_TYPE_OF_WALK[nums[k]];
    const flags = c.flags;
    if (c.type !== type || (flags & (TREE_FLAGS.WARNING | TREE_FLAGS.LINK)) !== 0) return false;
    if (c.mode !== nums[k + 1] || c.uid !== nums[k + 2] || c.gid !== nums[k + 3] || c.dev !== nums[k + 5]) return false;
    const inoHigh = v.inoWords[i * 2 + 1];
    if (c.ino < 0 || inoHigh >= 0x200000 || c.ino !== inoHigh * 0x100000000 + v.inoWords[i * 2]) return false;
    const x = v.extra(i);
    if (x?.error !== undefined) return false;
    // mtime, atime (a folder records its mtime), ctime: the stored bytes against the walk's.
    const plain = c.part!.plain;
    const t = c.timesAt;
    const w = i * 6;
    const tw = v.timeWords;
    const aw = type === TREE_TYPE_CODES.dir ? w : w + 2;
    if (plain.readInt32LE(t) !== tw[w] || plain.readInt32LE(t + 4) !== tw[w + 1]) return false;
    if (plain.readInt32LE(t + 8) !== tw[aw] || plain.readInt32LE(t + 12) !== tw[aw + 1]) return false;
    if (plain.readInt32LE(t + 16) !== tw[w + 4] || plain.readInt32LE(t + 20) !== tw[w + 5]) return false;
    const kinds = flags & (TREE_FLAGS.TARGET | TREE_FLAGS.RDEV | TREE_FLAGS.CHUNKS);
    switch (type) {
      case TREE_TYPE_CODES.file: {
        if (kinds !== TREE_FLAGS.CHUNKS || nums[k + 6] > 1 || c.size !== nums[k + 4]) return false;
        // reusable(): not changed in the racy window, every chunk still in the vault.
        if (this.racyFromNs >= 0n) {
          const high = plain.readInt32LE(t + 20);
          if (high > this.racyHigh || (high === this.racyHigh && plain.readUInt32LE(t + 16) >= this.racyLow)) return false;
        }
        let at = c.chunksAt;
        for (let n = c.chunkCount; n > 0; n--) {
          if (!isZeroId(plain, at) && !this.index.hasAt(plain, at)) return false;
          at += ID_BYTES;
          while (plain[at++] & 0x80);
        }
        return true;
      }
      case TREE_TYPE_CODES.symlink: {
        const target = x?.target;
        if (kinds !== TREE_FLAGS.TARGET || c.size !== 0 || !target || target.length !== c.targetLength) return false;
        for (let b = 0; b < target.length; b++) if (target[b] !== plain[c.targetAt + b]) return false;
        return true;
      }
      case TREE_TYPE_CODES.chardev:
      case TREE_TYPE_CODES.blockdev:
        return kinds === TREE_FLAGS.RDEV && c.size === 0 && c.rdev === nums[k + 7];
      default:
        return kinds === 0 && c.size === 0;
    }
  }

  /**
   * Moves the parent's cursor to the walk's entry i (a merge join): true when it holds the same
   * path, false when the parent has no such entry; null when its next part must be read first.
   */
  private parentMatch(v: WalkBatchView, i: number): boolean | null {
    if (this.parentDone) return false;
    const c = this.cursor;
    const paths = v.paths;
    const start = v.start(i);
    const end = v.ends[i];
    for (;;) {
      if (!this.atEntry) {
        if (!c.part || !c.next()) return null;
        this.atEntry = true;
      }
      // The cursor's path against the walk's, byte by byte.
      const p = c.path;
      const pl = c.pathLength;
      let cmp = 0;
      for (let b = 0; cmp === 0 && b < pl && start + b < end; b++) cmp = p[b] - paths[start + b];
      if (cmp === 0) cmp = pl - (end - start);
      if (cmp === 0) return true;
      if (cmp > 0) return false;
      this.atEntry = false;
    }
  }

  /** Takes the walk's entry `w`, its parent's entry being `prev`; returns a promise as addBatch does. */
  private add(w: WalkEntry, prev: TreeEntry | undefined): Promise<void> | undefined {
    const st = w.stat;
    const entry: TreeEntry = {
      path: w.path,
      type: w.type,
      mode: st.mode,
      uid: st.uid,
      gid: st.gid,
      size: 0,
      mtimeNs: st.mtimeNs,
      // A folder's atime moves whenever it is listed (this walk included), so recording it would
      // make every tree part differ from the parent's: folders record their mtime as atime.
      atimeNs: w.type === 'dir' ? st.mtimeNs : st.atimeNs,
      ctimeNs: st.ctimeNs,
      dev: st.dev,
      ino: st.ino,
    };
    if (w.target) entry.target = w.target;
    if (w.type === 'chardev' || w.type === 'blockdev') entry.rdev = st.rdev;
    const waits: Promise<unknown>[] = [];
    if (w.type === 'file' && !w.error) {
      this.files++;
      const key = st.nlink > 1 ? `${st.dev}:${st.ino}` : undefined;
      const first = key !== undefined ? this.links.get(key) : undefined;
      if (first) {
        // Hard link: the first path in tree order holds the data and the attributes.
        entry.type = 'hardlink';
        entry.link = first;
        entry.size = st.size;
        return this.enqueue({ entry, wait: undefined });
      }
      if (key !== undefined) this.links.set(key, w.path);
      if (prev && this.reusable(prev, st)) {
        entry.size = prev.size;
        entry.chunks = prev.chunks;
        this.filesReused++;
        this.usePacks(prev.chunks!);
      } else {
        this.filesRead++;
        entry.size = st.size;
        if (st.size === 0) entry.chunks = [];
        else waits.push(this.data.readFile(w.abs, st).then((r) => this.fileRead(entry, r)));
      }
    }
    if (w.error) {
      if (entry.type === 'file') entry.chunks = [];
      this.noteUnreadable(entry, w.error);
    } else if (prev && prev.type === entry.type && prev.ctimeNs === st.ctimeNs && prev.ino === st.ino && !prev.warning) {
      // ctime changes with any change of attributes; with the same inode they are the parent's.
      if (prev.xattrs) entry.xattrs = prev.xattrs;
    } else {
      waits.push(
        this.xattrs.read(w.abs).then((x) => {
          if (x) entry.xattrs = x;
        }),
      );
    }
    const pending: Pending = { entry, wait: undefined };
    if (waits.length) {
      // Cleared once done, so the next drain writes the entry without waiting for it; a failure
      // stays, and fails the backup when drain awaits it.
      pending.wait = Promise.all(waits).then(() => {
        pending.wait = undefined;
      });
      pending.wait.catch(() => undefined);
    }
    return this.enqueue(pending);
  }

  private enqueue(p: Pending): Promise<void> | undefined {
    this.queue.push(p);
    this.added++;
    this.waiting++;
    return this.drain(false);
  }

  /** Sends the half-filled batches (file data, attribute reads) now. */
  private flushBatches(): void {
    this.data.flush();
    this.xattrs.flush();
  }

  private fileRead(entry: TreeEntry, r: FileReadResult): void {
    if (r.error) {
      entry.size = 0;
      entry.chunks = [];
      this.noteUnreadable(entry, r.error);
      return;
    }
    entry.chunks = r.chunks;
    this.usePacks(r.chunks);
    if (r.changed) {
      entry.warning = `changed while read: ${r.changed}`;
      const p = displayPath(entry.path);
      if (this.changedCount++ < LIST_PATHS) this.changed.push(p);
      if (this.changedDetail.length < WARN_PATHS) this.changedDetail.push(`${p} (${r.changed})`);
    }
  }

  private noteUnreadable(entry: TreeEntry, why: string): void {
    entry.warning = `unreadable: ${why}`;
    const p = displayPath(entry.path);
    if (this.unreadableCount++ < LIST_PATHS) this.unreadable.push(p);
    if (this.unreadableDetail.length < WARN_PATHS) this.unreadableDetail.push(`${p || '/'}: ${why}`);
  }

  /** Same file as the parent's entry, with every chunk still in the vault. */
  private reusable(prev: TreeEntry, st: EntryStat): boolean {
    if (prev.type !== 'file' || prev.warning || !prev.chunks) return false;
    if (prev.size !== st.size || prev.mtimeNs !== st.mtimeNs || prev.ctimeNs !== st.ctimeNs || prev.ino !== st.ino) return false;
    if (this.racyFromNs >= 0n && prev.ctimeNs >= this.racyFromNs) return false;
    for (const c of prev.chunks) if (!c.id.equals(ZERO_ID) && !this.index.has(c.id)) return false;
    return true;
  }

  private usePacks(chunks: FileChunk[]): void {
    // Only an immutable vault extends the retention of the packs a backup reuses (retention.ts);
    // elsewhere this lookup per chunk (60 000 in an incremental of /usr/lib) would be for nothing.
    if (!this.immutable) return;
    for (const c of chunks) {
      const loc = this.index.get(c.id);
      if (loc) this.packsUsed.add(loc.packId);
    }
  }

  private async readParent(): Promise<void> {
    // A damaged parent tree fails the backup (VAULT_CORRUPT, naming the part): going on without
    // it would store the same tree parts again, and dedup would point them at the damaged copy.
    const part = await this.parentTree!.nextRawPart();
    if (part) this.cursor.start(part);
    else this.parentDone = true;
    this.atEntry = false;
  }

  /**
   * Writes entries whose work is done, in order; with `all`, waits for every one. Past MAX_PENDING
   * waiting entries the walk waits until half are written, so batches fill up again after. Returns
   * a promise only when it has to wait.
   */
  private drain(all: boolean): Promise<void> | undefined {
    const until = all ? 0 : this.waiting >= MAX_PENDING ? MAX_PENDING / 2 : Infinity;
    return this.drainTo(until, false);
  }

  private drainTo(until: number, flushed: boolean): Promise<void> | undefined {
    while (this.head < this.queue.length) {
      const p = this.queue[this.head];
      if (p.wait) {
        if (this.waiting <= until) {
          // The first entry waits, perhaps for a batch that would fill up only much later (a few
          // changed files in an incremental): past FLUSH_PENDING entries queued behind it, its
          // batches go now, rather than letting MAX_PENDING entries pile up (memory, GC).
          if (this.waiting > FLUSH_PENDING && this.added - this.flushedAt > FLUSH_PENDING) {
            this.flushedAt = this.added;
            this.flushBatches();
          }
          break;
        }
        if (!flushed) {
          // Nothing may sit in a half-filled batch while we wait for it.
          this.flushBatches();
          flushed = true;
        }
        return p.wait.then(() => {
          p.wait = undefined;
          return this.drainTo(until, true);
        });
      }
      const added = p.entry ? this.tree.add(p.entry) : this.tree.addStored(p.from!, p.at!, p.n!);
      this.waiting -= p.entry ? 1 : p.n!;
      this.queue[this.head++] = DONE;
      if (added) return added.then(() => this.drainTo(until, flushed));
    }
    if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    this.report();
    return undefined;
  }

  /** Progress, at most every PROGRESS_MS (a report per entry cost more than the merge's compares). */
  private report(): void {
    if (!this.onProgress || this.added - this.reportedAt < 256) return;
    this.reportedAt = this.added;
    const now = performance.now();
    if (now - this.reportedTime >= PROGRESS_MS) {
      this.reportedTime = now;
      this.onProgress({ files: this.files, bytesRead: this.data.bytesRead, bytesStored: this.stored() });
    }
  }

  async finish(): Promise<void> {
    this.flushBatches();
    await this.drain(true);
  }
}

// ---- file data: batches of small files, large files in turn -----------------------------------

interface FileReadResult {
  chunks: FileChunk[];
  /** Why the file counts as changed while read. */
  changed?: string;
  /** The file could not be opened or read: no data recorded. */
  error?: string;
}

/** One file's segment in a batch, and where its result goes. */
interface SegmentJob {
  length: number;
  final: boolean;
  /** Where the unconsumed tail is copied (at least params.max bytes); only for a non-final segment. */
  tailInto?: Buffer;
  onChunks: (chunks: FileChunk[], tail: Buffer) => void;
  onError: (err: unknown) => void;
}

interface OpenBatch {
  slot: number;
  at: number;
  segments: SegmentJob[];
  reads: Promise<void>[];
}

/**
 * Reads file data into shared slots and drives the workers: small files share a batch (one
 * segment each); a large file goes through batches one after the other, the unconsumed tail of
 * each passed again at the start of the next (worker-protocol.ts, 'cut').
 */
class FileData {
  bytesRead = 0;
  newChunks = 0;
  newBytes = 0;
  private slots: BatchSlot[] = [];
  private inputs: Buffer[] = [];
  private outputs: Buffer[] = [];
  /** Bytes of files handed to readFile: past INLINE_BYTES the worker threads start. */
  private requested = 0;
  private runner!: SlotRunner;
  private batchNo = 0;
  private open: OpenBatch | undefined;
  private readonly pendingIds = new Set<string>();
  private readonly reads = new Limiter(READ_CONCURRENCY);
  private readonly large = new Limiter(LARGE_FILES);
  private readonly largeRuns = new Set<Promise<void>>();
  /** Tail buffers of large files (params.max bytes each), reused: fresh pages cost more than the copy. */
  private readonly tailBuffers: Buffer[] = [];
  private readonly slotData: number;

  constructor(
    private readonly vault: Vault,
    private readonly index: ChunkIndex,
    private readonly writer: PackWriter,
    private readonly pool: InlineFirstPool,
    private readonly params: CdcParams,
    private readonly place: TreePlace,
  ) {
    this.slotData = Math.max(SLOT_DATA, 2 * params.max);
  }

  async start(): Promise<void> {
    const count = Math.max(4, this.pool.size * 3);
    const outBytes = cutOutputBytes(this.slotData, SEGMENTS_PER_SLOT, this.params);
    for (let i = 0; i < count; i++) this.slots.push({ input: new SharedArrayBuffer(this.slotData), output: new SharedArrayBuffer(outBytes) });
    await this.pool.broadcast({ type: 'slots', slots: this.slots });
    this.inputs = this.slots.map((s) => Buffer.from(s.input));
    this.outputs = this.slots.map((s) => Buffer.from(s.output));
    this.runner = new SlotRunner(this.slots.length);
  }

  /** Reads, cuts and stores a file's data; resolves with its chunks (or why it could not be read). */
  readFile(abs: Buffer, st: EntryStat): Promise<FileReadResult> {
    this.requested += st.size;
    if (this.requested > INLINE_BYTES) this.pool.grow();
    if (st.size > this.slotData) return this.readLarge(abs, st);
    return new Promise((resolveResult, rejectResult) => {
      const go = async (): Promise<void> => {
        if (!this.open || this.open.at + st.size > this.slotData || this.open.segments.length >= SEGMENTS_PER_SLOT) {
          this.closeBatch();
          await this.openBatch();
        }
        const b = this.open!;
        const at = b.at;
        b.at += st.size;
        let result: FileReadResult = { chunks: [] };
        b.segments.push({
          length: st.size,
          final: true,
          onChunks: (chunks) => {
            if (!result.error) result.chunks = chunks;
            resolveResult(result);
          },
          onError: rejectResult,
        });
        const input = this.inputs[b.slot];
        const into = input.subarray(at, at + st.size);
        if (st.size <= SYNC_READ_MAX) {
          result = readSmallSync(abs, st, into, this.place);
          if (!result.error) this.bytesRead += st.size;
        } else {
          b.reads.push(
            this.reads.run(async () => {
              result = await readSmall(abs, st, into, this.place);
              if (!result.error) this.bytesRead += st.size;
            }),
          );
        }
      };
      this.chain = this.chain.then(go).catch(rejectResult);
    });
  }

  /** Batch assignment is sequential (it awaits free slots); reads run concurrently. */
  private chain: Promise<void> = Promise.resolve();

  private async openBatch(): Promise<void> {
    this.open = { slot: await this.acquire(), at: 0, segments: [], reads: [] };
  }

  /** Sends the open batch of small files to a worker as soon as its reads are done. */
  flush(): void {
    this.chain = this.chain.then(() => this.closeBatch());
  }

  /** Starts the open batch (only from within the chain). */
  private closeBatch(): void {
    const b = this.open;
    this.open = undefined;
    if (!b) return;
    if (b.segments.length === 0) this.runner.start(b.slot, async () => undefined);
    else this.startBatch(b.slot, b.segments, Promise.all(b.reads));
  }

  /** A free slot; rethrows the failure of an earlier batch. */
  private async acquire(): Promise<number> {
    const slot = await this.runner.acquire();
    if (slot !== undefined) return slot;
    await this.runner.drain();
    throw new CairnError('INTERNAL', 'a batch failed');
  }

  /** Runs a batch in its slot once `ready`; on failure every segment hears of it. */
  private startBatch(slot: number, segments: SegmentJob[], ready: Promise<unknown>): void {
    this.runner.start(slot, async () => {
      try {
        await ready;
        await this.cutAndStore(slot, segments);
      } catch (err) {
        for (const s of segments) s.onError(err);
        throw err;
      }
    });
  }

  /** Waits until every batch is stored; rethrows the first failure. */
  async drain(): Promise<void> {
    this.flush();
    await this.chain;
    await Promise.all(this.largeRuns);
    await this.runner.drain();
  }

  /**
   * Cuts and hashes the segments of a slot, encodes the chunks the vault lacks, adds them to packs,
   * and gives each segment its chunks and unconsumed tail (copied out: the slot is reused after).
   */
  private async cutAndStore(slot: number, segments: SegmentJob[]): Promise<void> {
    await this.writer.waitForCapacity();
    const worker = this.pool.leastBusy();
    const batch = this.batchNo++;
    const reply = await this.pool.call(worker, {
      type: 'cut',
      batch,
      slot,
      segments: segments.map((s): CutSegment => ({ length: s.length, final: s.final })),
      params: this.params,
    });
    if (reply.type !== 'chunked') throw new CairnError('INTERNAL', 'unexpected worker reply');
    const ids = Buffer.from(reply.ids);
    const which: number[] = [];
    for (let i = 0; i < reply.lengths.length; i++) {
      const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
      if (id.equals(ZERO_ID)) continue;
      const key = id.toString('latin1');
      if (this.index.has(id) || this.pendingIds.has(key)) continue;
      this.pendingIds.add(key);
      which.push(i);
    }
    // Hand out results before encoding, so a large file's next batch is read meanwhile.
    const input = this.inputs[slot];
    let chunk = 0;
    let at = 0;
    const results: (() => void)[] = [];
    segments.forEach((s, k) => {
      const chunks: FileChunk[] = [];
      for (let n = 0; n < reply.chunks[k]; n++, chunk++) chunks.push({ id: ids.subarray(chunk * ID_BYTES, (chunk + 1) * ID_BYTES), length: reply.lengths[chunk] });
      const consumed = reply.consumed[k];
      let tail: Buffer = EMPTY;
      if (consumed < s.length) {
        if (!s.tailInto) throw new CairnError('INTERNAL', 'a final segment was left partly uncut');
        tail = s.tailInto.subarray(0, copyInto(input.subarray(at + consumed, at + s.length), s.tailInto, 0));
      }
      results.push(() => s.onChunks(chunks, tail));
      at += s.length;
    });
    const encoding = this.pool.call(worker, { type: 'encode', batch, which });
    for (const r of results) r();
    const encoded = await encoding;
    if (encoded.type !== 'encoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
    const blob = this.outputs[slot];
    const items = encoded.items;
    for (let k = 0; k < items.length; k += 5) {
      const i = items[k];
      const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
      this.writer.add(id, blob.subarray(items[k + 2], items[k + 2] + items[k + 3]), items[k + 1], items[k + 4]);
      this.pendingIds.delete(id.toString('latin1'));
      this.newChunks++;
      this.newBytes += items[k + 3];
    }
  }

  /** A file larger than a slot: one batch at a time, each starting with the previous one's tail. */
  private readLarge(abs: Buffer, st: EntryStat): Promise<FileReadResult> {
    const run = this.large.run(async (): Promise<FileReadResult> => {
      let fd: number;
      try {
        fd = await openFile(abs);
      } catch (err) {
        return { chunks: [], error: errText(err) };
      }
      const chunks: FileChunk[] = [];
      let changed: string | undefined;
      const tailInto = this.tailBuffers.pop() ?? Buffer.allocUnsafeSlow(this.params.max);
      try {
        const before = await fstatP(fd);
        const other = notTheWalked(st, before, fd, abs, this.place);
        if (other) return { chunks: [], error: other };
        changed = differs(st, before);
        let tail: Buffer = EMPTY;
        let pos = 0;
        while (pos < st.size) {
          const slot = await this.acquire();
          const input = this.inputs[slot];
          copyInto(tail, input, 0);
          const want = Math.min(this.slotData - tail.length, st.size - pos);
          let got: number;
          try {
            got = await readFully(fd, input, tail.length, want, pos);
          } catch (err) {
            this.runner.start(slot, async () => undefined);
            throw err;
          }
          if (got < want) {
            // The file shrank: keep its size as lstat said, the rest as zeros, and say so.
            input.fill(0, tail.length + got, tail.length + want);
            changed ??= `it shrank below ${pos + got} bytes while read`;
          }
          this.bytesRead += got;
          pos += want;
          const segment = { length: tail.length + want, final: pos >= st.size };
          tail = await new Promise<Buffer>((resolveTail, rejectTail) => {
            const job: SegmentJob = {
              ...segment,
              tailInto,
              onChunks: (c, t) => {
                for (const x of c) chunks.push(x);
                resolveTail(t);
              },
              onError: rejectTail,
            };
            this.startBatch(slot, [job], Promise.resolve());
          });
        }
        const after = await fstatP(fd);
        changed ??= notTheWalked(st, after, fd, abs, this.place) ?? differs(st, after);
      } catch (err) {
        if (err instanceof CairnError) throw err;
        return { chunks: [], error: errText(err) };
      } finally {
        close(fd, () => undefined);
        this.tailBuffers.push(tailInto);
      }
      return { chunks, ...(changed ? { changed } : {}) };
    });
    const settled: Promise<void> = run.then(
      () => void this.largeRuns.delete(settled),
      () => void this.largeRuns.delete(settled),
    );
    this.largeRuns.add(settled);
    return run;
  }
}

const EMPTY = Buffer.alloc(0);

/** Runs tasks at most `limit` at a time, in the order given. */
class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

// ---- reading a file ----------------------------------------------------------------------------

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
const NOATIME = constants.O_NOATIME ?? 0;

function openFile(abs: Buffer): Promise<number> {
  return new Promise((resolveFd, reject) => {
    // O_NOATIME keeps atimes as they were; only the owner (or root) may ask for it.
    open(abs, OPEN_FLAGS | NOATIME, (err, fd) => {
      if (!err) return resolveFd(fd);
      if (err.code !== 'EPERM' || !NOATIME) return reject(err);
      open(abs, OPEN_FLAGS, (err2, fd2) => (err2 ? reject(err2) : resolveFd(fd2)));
    });
  });
}

function fstatP(fd: number): Promise<BigIntStats> {
  return new Promise((resolveStat, reject) => fstat(fd, { bigint: true }, (err, st) => (err ? reject(err) : resolveStat(st))));
}

function readP(fd: number, buf: Buffer, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolveN, reject) => read(fd, buf, at, length, position, (err, n) => (err ? reject(err) : resolveN(n))));
}

/** Reads up to `length` bytes at `position` into buf[at...]; fewer only at end of file. */
async function readFully(fd: number, buf: Buffer, at: number, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const n = await readP(fd, buf, at + done, Math.min(length - done, 0x7fff0000), position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * Where the tree is on disk, to tell a file replaced in place from one reached through a folder
 * swapped for a symlink: the kernel's path of an open file (/proc/self/fd/N) has no symlinks in it.
 */
const DELETED = Buffer.from(' (deleted)');

export class TreePlace {
  private readonly root: Buffer;
  private readonly real: Buffer;

  constructor(absRoot: string) {
    this.root = Buffer.from(absRoot);
    let real = absRoot;
    try {
      real = realpathSync(absRoot);
    } catch {
      // the walk reports an unreadable root
    }
    this.real = Buffer.from(real);
  }

  /** Whether `fd` is open on the file at `abs` (raw bytes, below the root) itself. */
  holds(fd: number, abs: Buffer): boolean {
    const want = this.real.equals(this.root) ? abs : Buffer.concat([this.real, abs.subarray(this.root.length)]);
    try {
      const at = readlinkSync(`/proc/self/fd/${fd}`, { encoding: 'buffer' });
      // Replaced again since it was opened: the kernel names where it was, then ' (deleted)'.
      return at.equals(want) || (at.length === want.length + DELETED.length && at.subarray(0, want.length).equals(want) && at.subarray(want.length).equals(DELETED));
    } catch {
      return false; // no /proc: only the walk's own file is trusted
    }
  }
}

/**
 * Why the file opened at an entry's path must not be stored for it, or undefined. Another inode
 * than the walk saw is fine when it is at the entry's own path (replaced in place, as an atomic
 * save does: differs() reports it as changed); reached any other way (a folder above it swapped for
 * a symlink, which may lead outside the tree) its data is not stored and the entry is unreadable.
 */
export function notTheWalked(st: EntryStat, now: BigIntStats, fd: number, abs: Buffer, place: TreePlace): string | undefined {
  if (!now.isFile()) return 'it is no longer a regular file';
  if (now.ino === st.ino && Number(now.dev) === st.dev) return undefined;
  if (Number(now.dev) === st.dev && place.holds(fd, abs)) return undefined;
  return 'another file was at its path when read, not below the backed-up folder (a folder above it was swapped); not backed up';
}

/** What differs between the walk's lstat and a later fstat of the same file, or undefined. */
function differs(st: EntryStat, now: BigIntStats): string | undefined {
  if (now.ino !== st.ino) return 'it was replaced';
  if (Number(now.size) !== st.size) return `its size went from ${st.size} to ${now.size} bytes`;
  if (now.mtimeNs !== st.mtimeNs) return 'its mtime changed';
  if (now.ctimeNs !== st.ctimeNs) return 'its ctime changed';
  return undefined;
}

/**
 * What a small file's read gave, once `got` bytes of it are in `into` and `now` is its fstat: zeros
 * past a premature end (its size stays the walk's), nothing at all for a file from elsewhere
 * (notTheWalked), and why it counts as changed while read.
 */
function readResult(st: EntryStat, into: Buffer, got: number, now: BigIntStats, fd: number, abs: Buffer, place: TreePlace): FileReadResult {
  const other = notTheWalked(st, now, fd, abs, place);
  if (other) {
    into.fill(0);
    return { chunks: [], error: other };
  }
  let changed: string | undefined;
  if (got < into.length) {
    into.fill(0, got);
    changed = `it shrank to ${got} bytes while read`;
  }
  changed ??= differs(st, now);
  return { chunks: [], ...(changed ? { changed } : {}) };
}

/** readSmall with synchronous calls (small files; see SYNC_READ_MAX). */
function readSmallSync(abs: Buffer, st: EntryStat, into: Buffer, place: TreePlace): FileReadResult {
  let fd: number;
  try {
    try {
      fd = openSync(abs, OPEN_FLAGS | NOATIME);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM' || !NOATIME) throw err;
      fd = openSync(abs, OPEN_FLAGS);
    }
  } catch (err) {
    into.fill(0);
    return { chunks: [], error: errText(err) };
  }
  try {
    let got = 0;
    while (got < into.length) {
      const n = readSync(fd, into, got, into.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return readResult(st, into, got, fstatSync(fd, { bigint: true }), fd, abs, place);
  } catch (err) {
    into.fill(0);
    return { chunks: [], error: errText(err) };
  } finally {
    closeSync(fd);
  }
}

/** Reads a small file whole into `into` (its size as lstat said); zeros past a premature end. */
async function readSmall(abs: Buffer, st: EntryStat, into: Buffer, place: TreePlace): Promise<FileReadResult> {
  let fd: number;
  try {
    fd = await openFile(abs);
  } catch (err) {
    into.fill(0);
    return { chunks: [], error: errText(err) };
  }
  try {
    const got = await readFully(fd, into, 0, into.length, 0);
    return readResult(st, into, got, await fstatP(fd), fd, abs, place);
  } catch (err) {
    into.fill(0);
    return { chunks: [], error: errText(err) };
  } finally {
    close(fd, () => undefined);
  }
}
