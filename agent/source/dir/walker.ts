import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { resolve } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { CairnError } from '../../../shared/errors.js';
import type { EntryType } from '../../../shared/vault/tree.js';
import { ExcludeMatcher } from './exclude.js';
import { loadWalkAddon } from './native/load-walk-addon.js';
import { RECORD, RECORD_FLAGS, type WalkAddon } from './native/walk-addon.js';

/** What lstat said about an entry (times in ns), as the tree stores it. */
export interface EntryStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  ctimeNs: bigint;
  dev: number;
  /** 64 bits on some file systems (XFS, btrfs, NFS): a bigint, never rounded. */
  ino: bigint;
  nlink: number;
  rdev: number;
}

export interface WalkEntry {
  /** Relative to the root, '/'-separated; the root is the empty path. */
  path: Buffer;
  /** Absolute path, raw bytes (what open and getfattr take). */
  abs: Buffer;
  type: Exclude<EntryType, 'hardlink'>;
  stat: EntryStat;
  /** Symlink target, raw bytes. */
  target?: Buffer;
  /**
   * The entry is recorded but could not be fully read: a directory that cannot be listed or that was
   * replaced between its lstat and its listing ('changed during the walk'), an lstat or readlink failure.
   */
  error?: string;
  /** A directory on another file system, not entered (one file system per backup unless asked). */
  mountPoint?: boolean;
}

export interface WalkOptions {
  excludes?: ExcludeMatcher;
  /** Enter directories on other file systems (mounts below the root); default: record them empty. */
  crossFileSystems?: boolean;
  /**
   * List folders with the native addon (native/walk.c) when it loads (the default), or, when false,
   * with Node's calls only. Both give the same entries in the same order.
   */
  native?: boolean;
}

let addon: WalkAddon | null | undefined;

/** The native addon, loaded on first use; null when it cannot be loaded (not built): the walk does without. */
function walkAddon(): WalkAddon | null {
  if (addon === undefined) {
    try {
      addon = loadWalkAddon();
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** Whether walkTree lists folders with the native addon (it loaded). */
export function nativeWalkAvailable(): boolean {
  return walkAddon() !== null;
}

/**
 * Walks a directory tree with lstat (symlinks are never followed; the root itself may be a link to
 * a directory) and yields every entry not excluded, in tree order: the byte order of the whole
 * relative path (path-bytes.ts). It is synchronous on purpose: lstat of cached metadata costs a few
 * microseconds, far less than a trip through libuv's thread pool, and the caller interleaves its
 * own asynchronous work between entries.
 *
 * Contract: an entry that vanishes between readdir and lstat is left out silently (it was not there
 * at the instant of its lstat); a directory that cannot be listed, or an entry that cannot be
 * lstat'ed or whose link cannot be read, is yielded with `error` and the walk goes on. Memory is a
 * directory listing per level of the path being walked (plus directories whose listing waits for
 * siblings that sort between `name` and `name/`); one directory is open at a time.
 *
 * The walk never leaves the tree through a directory swapped during it: each directory is opened
 * with O_NOFOLLOW | O_DIRECTORY and listed only when the open directory is the one its entry's
 * lstat saw (same dev and inode); otherwise it is yielded with an error 'changed during the walk'
 * and its contents are not walked. Listing and the children's lstat and readlink go through the
 * open descriptor, so a swap of the directory or of one above it after the check redirects nothing:
 * the native addon (native/walk.c) lists with openat, readdir, fstatat and readlinkat on it; without
 * it, Node's calls take the descriptor's /proc/<pid>/fd/N path, or without /proc the checked absolute
 * path (a narrow race remains).
 * `abs` stays the absolute path: whoever opens an entry by it compares what it opened with `stat`.
 */
export function* walkTree(root: string, opts: WalkOptions = {}): Generator<WalkEntry> {
  const excludes = opts.excludes ?? ExcludeMatcher.none;
  const native = opts.native === false ? null : walkAddon();
  const absRoot = resolve(root);
  let rootStat: BigIntStats;
  try {
    rootStat = statSync(absRoot, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CairnError(code === 'ENOENT' ? 'NOT_FOUND' : 'SOURCE_UNREADABLE', `${absRoot} cannot be backed up: ${code ?? (err as Error).message}`);
  }
  if (!rootStat.isDirectory()) {
    throw new CairnError('USAGE', `${absRoot} is not a directory; a file-system backup starts at a folder`);
  }
  const rootDev = rootStat.dev;
  const rootDevNumber = Number(rootDev);
  const rootEntry: WalkEntry = { path: Buffer.alloc(0), abs: Buffer.from(absRoot), type: 'dir', stat: toEntryStat(rootStat) };
  /** Where open descriptors have paths (FD_DIRS; null: nowhere), settled at the first open directory. */
  let fdDir: string | null | undefined;
  // The root may be a symlink to a folder (statSync above followed it): its open follows it too.
  const listing = list(rootEntry, true);
  if (listing.error) rootEntry.error = listing.error;
  yield rootEntry;

  const stack: Frame[] = [{ items: listing.items, next: 0 }];
  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next === frame.items.length) {
      stack.pop();
      continue;
    }
    const item = frame.items[frame.next++];
    if (item.contents) {
      const items = item.contents.items;
      item.contents.items = undefined; // freed when the frame is done
      if (items) stack.push({ items, next: 0 });
      continue;
    }
    const entry = item.entry!;
    if (item.dir) {
      // Listed now, just before its entry is yielded: a listing error belongs on the entry.
      const sub = list(entry, false);
      if (sub.error) entry.error = sub.error;
      item.dir.items = sub.items;
    }
    yield entry;
  }

  /**
   * Lists the directory `dir` through a descriptor checked against its recorded stat (see above);
   * `isRoot`: the root, which may be a symlink to a folder, is opened through it.
   */
  function list(dir: WalkEntry, isRoot: boolean): Listing {
    if (native) return listNative(native, dir, isRoot);
    let fd: number;
    try {
      fd = openSync(dir.abs, isRoot ? ROOT_FLAGS : DIR_FLAGS);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'ENOTDIR') return noLongerAFolder();
      return { items: [], error: `cannot be listed: ${errText(err)}` };
    }
    try {
      const now = fstatSync(fd, { bigint: true });
      if (now.ino !== dir.stat.ino || Number(now.dev) !== dir.stat.dev) return anotherFolder();
      fdDir ??= FD_DIRS.find((d) => sameFile(Buffer.from(`${d}${fd}`), now)) ?? null;
      return listOpen(fdDir === null ? dir.abs : Buffer.from(`${fdDir}${fd}`), dir);
    } catch (err) {
      return { items: [], error: `cannot be listed: ${errText(err)}` };
    } finally {
      closeSync(fd);
    }
  }

  /** Lists the open directory `dir` by `at` (its descriptor's /proc path, or its checked path). */
  function listOpen(at: Buffer, dir: WalkEntry): Listing {
    // Names as latin1 text (one char per byte, lossless): far cheaper than a Buffer per name.
    const names = readdirSync(at, { encoding: 'latin1' });
    const items: Item[] = [];
    // `at/name`, built in one buffer reused for every name (it is only passed to lstat and readlink).
    const from = at.length + 1;
    let scratch = Buffer.allocUnsafe(from + 256);
    scratch.set(at);
    scratch[at.length] = 0x2f;
    for (const name of names) {
      if (from + name.length > scratch.length) {
        const bigger = Buffer.allocUnsafe(from + name.length);
        bigger.set(scratch.subarray(0, from));
        scratch = bigger;
      }
      scratch.write(name, from, 'latin1');
      const childAt = scratch.subarray(0, from + name.length);
      const childRel = joinName(dir.path, name);
      let st: BigIntStats | undefined;
      let error: string | undefined;
      try {
        st = lstatSync(childAt, { bigint: true, throwIfNoEntry: false });
        if (!st) continue; // gone since readdir
      } catch (err) {
        error = `cannot be read: ${errText(err)}`;
      }
      const type = st ? typeOf(st) : 'file';
      const isDir = type === 'dir';
      if (excludes.excludes(childRel, isDir)) continue;
      const entry: WalkEntry = { path: childRel, abs: joinName(dir.abs, name), type, stat: st ? toEntryStat(st) : ZERO_STAT };
      if (error) entry.error = error;
      if (type === 'symlink') {
        try {
          entry.target = readlinkSync(childAt, { encoding: 'buffer' });
        } catch (err) {
          entry.error = `link cannot be read: ${errText(err)}`;
        }
      }
      add(items, entry, isDir && st !== undefined && !entry.error, st !== undefined && st.dev !== rootDev);
    }
    items.sort((a, b) => Buffer.compare(a.key, b.key));
    return { items };
  }

  /** list() by the addon: the same checks, entries and errors, from one call's records (walk.c). */
  function listNative(native: WalkAddon, dir: WalkEntry, isRoot: boolean): Listing {
    const got = native.listDir(dir.abs, isRoot, dir.stat.dev, dir.stat.ino);
    if (typeof got === 'number') {
      if (got === 0) return anotherFolder();
      if (got === ELOOP || got === ENOTDIR) return noLongerAFolder();
      return { items: [], error: `cannot be listed: ${errnoText(Math.abs(got))}` };
    }
    const bytes = new Uint8Array(got);
    const u32 = new Uint32Array(got);
    const f64 = new Float64Array(got);
    const i64 = new BigInt64Array(got);
    const u64 = new BigUint64Array(got);
    const items: Item[] = [];
    for (let next = 0; next < got.byteLength; ) {
      // The record at `at`, as an index of 32-bit (w) and 64-bit (q) words.
      const at = next;
      const w = at >>> 2;
      const q = at >>> 3;
      const nameAt = at + RECORD.header;
      const nameLength = u32[w + RECORD.nameLength / 4];
      const targetLength = u32[w + RECORD.targetLength / 4];
      const flags = u32[w + RECORD.flags / 4];
      const errno = u32[w + RECORD.errno / 4];
      next += (RECORD.header + nameLength + targetLength + 7) & ~7;
      const statFailed = (flags & RECORD_FLAGS.statFailed) !== 0;
      const mode = u32[w + RECORD.mode / 4];
      const type = statFailed ? 'file' : typeOfMode(mode);
      const isDir = type === 'dir';
      const childRel = joinBytes(dir.path, bytes, nameAt, nameLength);
      if (excludes.excludes(childRel, isDir)) continue;
      const dev = f64[q + RECORD.dev / 8];
      const stat: EntryStat = statFailed
        ? ZERO_STAT
        : {
            mode: mode & 0o7777,
            uid: u32[w + RECORD.uid / 4],
            gid: u32[w + RECORD.gid / 4],
            size: f64[q + RECORD.size / 8],
            mtimeNs: timeNs(i64, u32, at, flags, MTIME),
            atimeNs: timeNs(i64, u32, at, flags, ATIME),
            ctimeNs: timeNs(i64, u32, at, flags, CTIME),
            dev,
            ino: u64[q + RECORD.ino / 8],
            nlink: f64[q + RECORD.nlink / 8],
            rdev: f64[q + RECORD.rdev / 8],
          };
      const entry: WalkEntry = { path: childRel, abs: joinBytes(dir.abs, bytes, nameAt, nameLength), type, stat };
      if (statFailed) entry.error = `cannot be read: ${errnoText(errno)}`;
      if (type === 'symlink') {
        if (flags & RECORD_FLAGS.linkFailed) {
          entry.error = `link cannot be read: ${errnoText(errno)}`;
        } else {
          const target = Buffer.allocUnsafe(targetLength);
          target.set(bytes.subarray(nameAt + nameLength, nameAt + nameLength + targetLength));
          entry.target = target;
        }
      }
      add(items, entry, isDir && !entry.error, dev !== rootDevNumber);
    }
    items.sort((a, b) => Buffer.compare(a.key, b.key));
    return { items };
  }

  /**
   * Adds `entry` to a listing, and, for a directory to enter (`enter`; not one on another file
   * system unless asked), the item of its contents. Siblings share the prefix `dir/`: their whole
   * paths sort as their names do.
   */
  function add(items: Item[], entry: WalkEntry, enter: boolean, otherFileSystem: boolean): void {
    const item: Item = { key: entry.path, entry };
    items.push(item);
    if (!enter) return;
    if (otherFileSystem && !opts.crossFileSystems) {
      entry.mountPoint = true;
      return;
    }
    item.dir = {};
    items.push({ key: Buffer.concat([entry.path, SLASH]), contents: item.dir });
  }
}

/** A folder's listing; on `error`, none. */
interface Listing {
  items: Item[];
  error?: string;
}

/** The listing of a folder that was replaced by something else between its lstat and its open. */
function noLongerAFolder(): Listing {
  return { items: [], error: `${CHANGED}: it is no longer a folder; its contents were not backed up` };
}

/** The listing of a folder whose open found another folder than the one its lstat saw. */
function anotherFolder(): Listing {
  return { items: [], error: `${CHANGED}: another folder took its place; its contents were not backed up` };
}

const { ELOOP, ENOTDIR } = osConstants.errno;
const NS = 1_000_000_000n;
const [ATIME, MTIME, CTIME] = [0, 1, 2];

/**
 * The time `which` (ATIME, MTIME, CTIME) of the record at byte `at`, in ns: its slot, or, when
 * its flag says the ns did not fit in 64 bits, the slot's seconds with the record's nsec.
 */
function timeNs(i64: BigInt64Array, u32: Uint32Array, at: number, flags: number, which: number): bigint {
  const slot = i64[(at + RECORD.atime) / 8 + which];
  return flags & (RECORD_FLAGS.timeInSeconds << which) ? slot * NS + BigInt(u32[(at + RECORD.atimeNsec) / 4 + which]) : slot;
}

/** `dir/name` (`name` under the root's empty path), `name` being `length` bytes of `from` at `at`. */
function joinBytes(dir: Buffer, from: Uint8Array, at: number, length: number): Buffer {
  const start = dir.length === 0 ? 0 : dir.length + 1;
  const out = Buffer.allocUnsafe(start + length);
  if (start) {
    out.set(dir);
    out[dir.length] = 0x2f;
  }
  for (let i = 0; i < length; i++) out[start + i] = from[at + i];
  return out;
}

/** `dir/name` (`name` under the root's empty path); `name` is latin1 text, one char per byte. */
function joinName(dir: Buffer, name: string): Buffer {
  const at = dir.length === 0 ? 0 : dir.length + 1;
  const out = Buffer.allocUnsafe(at + name.length);
  if (at) {
    out.set(dir);
    out[dir.length] = 0x2f;
  }
  out.write(name, at, 'latin1');
  return out;
}

/** A listing item: an entry (sorts at its path), or a directory's contents (sort at `path/`). */
interface Item {
  key: Buffer;
  entry?: WalkEntry;
  /** On a directory's entry: where its listing goes when the entry is yielded. */
  dir?: { items?: Item[] };
  /** The contents item of a directory, walked after every sibling that sorts before `name/`. */
  contents?: { items?: Item[] };
}

interface Frame {
  items: Item[];
  next: number;
}

const SLASH = Buffer.from('/');

/** How the root is opened (it may be a symlink to a folder), and every directory below it. */
const ROOT_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY;
const DIR_FLAGS = ROOT_FLAGS | constants.O_NOFOLLOW;

/** The start of the error of a directory replaced between its lstat and its listing. */
export const CHANGED = 'changed during the walk';

/**
 * Folders whose entry N is the open descriptor N. /proc/PID resolves faster than /proc/self (a
 * symlink); it is not this process's when /proc belongs to another pid namespace.
 */
const FD_DIRS = [`/proc/${process.pid}/fd/`, '/proc/self/fd/'];

/** Whether `path` (a descriptor's /proc link) resolves to the open file `st` describes. */
function sameFile(path: Buffer, st: BigIntStats): boolean {
  try {
    const via = statSync(path, { bigint: true });
    return via.ino === st.ino && via.dev === st.dev;
  } catch {
    return false;
  }
}

const ZERO_STAT: EntryStat = { mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 0, ino: 0n, nlink: 1, rdev: 0 };

export function toEntryStat(st: BigIntStats): EntryStat {
  return {
    mode: Number(st.mode) & 0o7777,
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    atimeNs: st.atimeNs,
    ctimeNs: st.ctimeNs,
    dev: Number(st.dev),
    ino: st.ino,
    nlink: Number(st.nlink),
    rdev: Number(st.rdev),
  };
}

/** The entry type of a file mode (st_mode & S_IFMT; BigIntStats' isFile() and kin cost a BigInt each). */
function typeOf(st: BigIntStats): WalkEntry['type'] {
  return typeOfMode(Number(st.mode));
}

function typeOfMode(mode: number): WalkEntry['type'] {
  switch (mode & constants.S_IFMT) {
    case constants.S_IFREG:
      return 'file';
    case constants.S_IFDIR:
      return 'dir';
    case constants.S_IFLNK:
      return 'symlink';
    case constants.S_IFIFO:
      return 'fifo';
    case constants.S_IFSOCK:
      return 'socket';
    case constants.S_IFCHR:
      return 'chardev';
    default:
      return 'blockdev';
  }
}

let systemErrors: Map<number, [string, string]> | undefined;

/** errText's text for an errno from the addon: 'EACCES (permission denied)', as Node words it. */
function errnoText(errno: number): string {
  systemErrors ??= getSystemErrorMap();
  const known = systemErrors.get(-errno);
  return known ? `${known[0]} (${known[1]})` : `errno ${errno}`;
}

export function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code} (${e.message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/s, '')})` : String(e.message ?? err);
}
