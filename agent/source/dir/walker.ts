import { lstatSync, readdirSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { resolve } from 'node:path';
import { CairnError } from '../../../shared/errors.js';
import type { EntryType } from '../../../shared/vault/tree.js';
import { ExcludeMatcher } from './exclude.js';
import { joinPath } from './path-bytes.js';

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
  ino: number;
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
  /** The entry is recorded but could not be fully read: a directory that cannot be listed, an lstat or readlink failure. */
  error?: string;
  /** A directory on another file system, not entered (one file system per backup unless asked). */
  mountPoint?: boolean;
}

export interface WalkOptions {
  excludes?: ExcludeMatcher;
  /** Enter directories on other file systems (mounts below the root); default: record them empty. */
  crossFileSystems?: boolean;
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
 * siblings that sort between `name` and `name/`).
 */
export function* walkTree(root: string, opts: WalkOptions = {}): Generator<WalkEntry> {
  const excludes = opts.excludes ?? ExcludeMatcher.none;
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
  const rootEntry: WalkEntry = { path: Buffer.alloc(0), abs: Buffer.from(absRoot), type: 'dir', stat: toEntryStat(rootStat) };
  const listing = list(rootEntry.abs, rootEntry.path);
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
      const sub = list(entry.abs, entry.path);
      if (sub.error) entry.error = sub.error;
      item.dir.items = sub.items;
    }
    yield entry;
  }

  function list(abs: Buffer, rel: Buffer): { items: Item[]; error?: string } {
    let names: Buffer[];
    try {
      names = readdirSync(abs, { encoding: 'buffer' });
    } catch (err) {
      return { items: [], error: `cannot be listed: ${errText(err)}` };
    }
    const items: Item[] = [];
    for (const name of names) {
      const childAbs = joinPath(abs, name);
      const childRel = joinPath(rel, name);
      let st: BigIntStats | undefined;
      let error: string | undefined;
      try {
        st = lstatSync(childAbs, { bigint: true, throwIfNoEntry: false });
        if (!st) continue; // gone since readdir
      } catch (err) {
        error = `cannot be read: ${errText(err)}`;
      }
      const type = st ? typeOf(st) : 'file';
      const isDir = type === 'dir';
      if (excludes.excludes(childRel, isDir)) continue;
      const entry: WalkEntry = { path: childRel, abs: childAbs, type, stat: st ? toEntryStat(st) : ZERO_STAT };
      if (error) entry.error = error;
      if (type === 'symlink') {
        try {
          entry.target = readlinkSync(childAbs, { encoding: 'buffer' });
        } catch (err) {
          entry.error = `link cannot be read: ${errText(err)}`;
        }
      }
      const item: Item = { key: name, entry };
      items.push(item);
      if (isDir && st && !entry.error) {
        if (st.dev !== rootDev && !opts.crossFileSystems) {
          entry.mountPoint = true;
          continue;
        }
        item.dir = {};
        items.push({ key: Buffer.concat([name, SLASH]), contents: item.dir });
      }
    }
    items.sort((a, b) => Buffer.compare(a.key, b.key));
    return { items };
  }
}

/** A listing item: an entry (sorts at `name`), or a directory's contents (sort at `name/`). */
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

const ZERO_STAT: EntryStat = { mode: 0, uid: 0, gid: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, dev: 0, ino: 0, nlink: 1, rdev: 0 };

export function toEntryStat(st: BigIntStats): EntryStat {
  return {
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    atimeNs: st.atimeNs,
    ctimeNs: st.ctimeNs,
    dev: Number(st.dev),
    ino: Number(st.ino),
    nlink: Number(st.nlink),
    rdev: Number(st.rdev),
  };
}

function typeOf(st: BigIntStats): WalkEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  return 'blockdev';
}

export function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code} (${e.message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/s, '')})` : String(e.message ?? err);
}
