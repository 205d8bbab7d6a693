import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { link, mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import { CairnError, fromSystemError } from '../errors.js';
import { DIRECT_ALIGN, directWrites, isDirectWritable } from '../fs/aligned-memory.js';
import { isValidKey, noRequests, type Body, type ByteRange, type ObjectInfo, type ObjectStore, type PutOptions } from './object-store.js';

/** Names of in-flight writes; list never yields them and keys may not use them. */
const tempPrefix = '.tmp-';

/**
 * An ObjectStore on a local or mounted POSIX folder: each object is a regular file at its key's path
 * under the root (key `packs/ab/abcd` is `<root>/packs/ab/abcd`). See README.md for the design.
 *
 * Beyond the ObjectStore contracts:
 * - put is durable once it resolves: the file, its directory entry and every folder it created are fsynced.
 * - A failed put leaves no temp file behind and the previous object, if any, untouched.
 * - put with ifAbsent needs hard links (POSIX file systems have them; some FUSE/SMB mounts do not).
 * - retainUntil is ignored: a plain folder has no object lock that would stop root or a careless gc.
 * - A key cannot be both an object and a folder of other keys ('a' and 'a/b'); such a put fails.
 * - Key segments starting with '.tmp-' are reserved for temp files and rejected.
 * - delete is not fsynced: after a crash a deleted object may come back, so deleters must be idempotent.
 */
export class LocalStore implements ObjectStore {
  readonly location: string;
  readonly requests = noRequests();

  constructor(root: string) {
    this.location = resolve(root);
  }

  async put(key: string, body: Body, options: PutOptions = {}): Promise<void> {
    this.requests.PUT++;
    const file = this.pathOf(key);
    const folder = dirname(file);
    await this.makeFolder(folder, key);
    const temp = join(folder, tempPrefix + randomBytes(8).toString('hex'));
    try {
      await writeDurably(temp, body);
      if (options.ifAbsent) {
        // link fails with EEXIST, atomically, when the key exists: an existing object is never replaced.
        await link(temp, file).catch((err: unknown) => {
          throw code(err) === 'EEXIST'
            ? new CairnError('ALREADY_EXISTS', `put ${key}: the object exists already in ${this.location}`, { cause: err })
            : err;
        });
        await unlink(temp);
      } else {
        await rename(temp, file);
      }
      await syncFolder(folder);
    } catch (err) {
      await rm(temp, { force: true }).catch(() => {});
      if (code(err) === 'EISDIR' || code(err) === 'ENOTDIR') throw this.keyConflict(key, err);
      throw fromSystemError(err, `put ${key}`, this.location);
    }
  }

  async get(key: string, range?: ByteRange, into?: Buffer): Promise<Buffer> {
    this.requests.GET++;
    const file = this.pathOf(key);
    if (range && !(isCount(range.offset) && isCount(range.length))) {
      throw new CairnError('INTERNAL', `get ${key}: invalid range ${JSON.stringify(range)} on ${this.location}`);
    }
    if (range && range.length <= SYNC_GET_MAX) return this.getSmall(key, file, range, into);
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw isMissing(err) ? this.notFound(key, err) : fromSystemError(err, `get ${key}`, this.location);
    }
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw this.notFound(key);
      const start = Math.min(range?.offset ?? 0, info.size);
      const end = Math.min(info.size, start + (range?.length ?? info.size));
      const out = into && into.length >= end - start ? into.subarray(0, end - start) : Buffer.allocUnsafe(end - start);
      for (let filled = 0; filled < out.length; ) {
        const { bytesRead } = await handle.read(out, filled, out.length - filled, start + filled);
        if (bytesRead === 0) throw new Error(`the file ended after ${start + filled} of ${info.size} bytes`);
        filled += bytesRead;
      }
      return out;
    } catch (err) {
      throw fromSystemError(err, `get ${key}`, this.location);
    } finally {
      await handle.close();
    }
  }

  /**
   * A small ranged get with synchronous calls: open, fstat, pread and close of a cached range take
   * microseconds, less than their four trips through libuv's thread pool (an incremental reads
   * its parent's tree this way, a few kilobytes a part, a thousand parts for 70k files).
   */
  private getSmall(key: string, file: string, range: ByteRange, into?: Buffer): Buffer {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (err) {
      throw isMissing(err) ? this.notFound(key, err) : fromSystemError(err, `get ${key}`, this.location);
    }
    try {
      const info = fstatSync(fd);
      if (!info.isFile()) throw this.notFound(key);
      const start = Math.min(range.offset, info.size);
      const end = Math.min(info.size, start + range.length);
      const out = into && into.length >= end - start ? into.subarray(0, end - start) : Buffer.allocUnsafe(end - start);
      for (let filled = 0; filled < out.length; ) {
        const n = readSync(fd, out, filled, out.length - filled, start + filled);
        if (n === 0) throw new Error(`the file ended after ${start + filled} of ${info.size} bytes`);
        filled += n;
      }
      return out;
    } catch (err) {
      throw fromSystemError(err, `get ${key}`, this.location);
    } finally {
      closeSync(fd);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    this.requests.HEAD++;
    const file = this.pathOf(key);
    try {
      const info = await statIfPresent(file);
      return info?.isFile() ? { key, size: info.size, modified: info.mtime } : undefined;
    } catch (err) {
      throw fromSystemError(err, `stat ${key}`, this.location);
    }
  }

  /** Walks only the folders that can hold keys with the prefix; a missing folder yields nothing. */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.requests.LIST++;
    const base = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    if (base !== '' && !isValidKey(base.slice(0, -1))) return; // no valid key starts with this prefix
    // Files are stat'ed LIST_STATS at a time (each stat is a trip through libuv's thread pool).
    let found: { key: string; path: string }[] = [];
    const stats = async function* (this: LocalStore): AsyncGenerator<ObjectInfo> {
      const infos = await Promise.all(
        found.map(({ path }) =>
          statIfPresent(path).catch((err: unknown) => {
            throw fromSystemError(err, `list ${prefix}`, this.location);
          }),
        ),
      );
      for (const [i, info] of infos.entries()) if (info) yield { key: found[i].key, size: info.size, modified: info.mtime }; // else deleted while listing
      found = [];
    };
    for await (const { key, name, path } of this.files(base, (folderKey) => folderKey.startsWith(prefix))) {
      if (name.startsWith(tempPrefix) || !key.startsWith(prefix)) continue;
      found.push({ key, path });
      if (found.length === LIST_STATS) yield* stats.call(this);
    }
    yield* stats.call(this);
  }

  /** Idempotent: a missing key succeeds. */
  async delete(key: string): Promise<void> {
    this.requests.DELETE++;
    const file = this.pathOf(key);
    try {
      await unlink(file);
    } catch (err) {
      if (!isMissing(err)) throw fromSystemError(err, `delete ${key}`, this.location);
    }
  }

  /**
   * Deletes temp files left by interrupted puts whose last write is more than `olderThanMs` before
   * `now`, and returns how many it deleted. A put in flight keeps its temp file's mtime fresh only while
   * writing, so pass an age far above the longest put (an hour, not seconds).
   */
  async removeStaleTempFiles(olderThanMs: number, now: Date = new Date()): Promise<number> {
    let removed = 0;
    try {
      for await (const { name, path } of this.files('', () => true)) {
        if (!name.startsWith(tempPrefix)) continue;
        const info = await statIfPresent(path);
        if (info && now.getTime() - info.mtimeMs > olderThanMs) {
          await rm(path, { force: true });
          removed++;
        }
      }
    } catch (err) {
      throw fromSystemError(err, 'remove stale temp files', this.location);
    }
    return removed;
  }

  /** The file of a key; rejects keys outside the rules of object-store.ts and reserved temp names. */
  private pathOf(key: string): string {
    const segments = key.split('/');
    if (!isValidKey(key) || segments.some((s) => s.startsWith(tempPrefix))) {
      throw new CairnError(
        'INTERNAL',
        `invalid object key "${key}" for ${this.location}: keys are '/'-separated segments of [A-Za-z0-9._-], ` +
          `not '.', '..' or starting with '${tempPrefix}'`,
      );
    }
    return join(this.location, ...segments);
  }

  /** Creates the folder and its missing parents, fsyncing each new folder's parent so the path survives a crash. */
  private async makeFolder(folder: string, key: string): Promise<void> {
    try {
      for (const created of await makeFolders(folder)) await syncFolder(dirname(created));
    } catch (err) {
      if (code(err) === 'ENOTDIR') throw this.keyConflict(key, err);
      throw fromSystemError(err, `put ${key}`, this.location);
    }
  }

  /**
   * Yields every regular file below the folder of `base` (a key prefix that is '' or ends in '/'),
   * entering a subfolder only when `enter` accepts its key prefix. Names that cannot be key segments
   * (lost+found, editor backups) are passed over. A missing folder yields nothing.
   */
  private async *files(
    base: string,
    enter: (folderKey: string) => boolean,
  ): AsyncGenerator<{ key: string; name: string; path: string }> {
    const folder = join(this.location, base);
    try {
      // One readdir per folder: opendir's iteration takes a trip through the thread pool per read
      // and one more to close (a vault has up to 256 pack folders).
      for (const entry of await readdir(folder, { withFileTypes: true })) {
        if (!isValidKey(entry.name)) continue;
        const key = base + entry.name;
        if (entry.isDirectory()) {
          if (enter(`${key}/`)) yield* this.files(`${key}/`, enter);
        } else if (entry.isFile()) {
          yield { key, name: entry.name, path: join(folder, entry.name) };
        }
      }
    } catch (err) {
      if (isMissing(err)) return;
      throw fromSystemError(err, `list ${base || '(all)'}`, this.location);
    }
  }

  private notFound(key: string, cause?: unknown): CairnError {
    return new CairnError('NOT_FOUND', `get ${key}: no such object in ${this.location}`, { cause });
  }

  private keyConflict(key: string, cause: unknown): CairnError {
    return new CairnError(
      'INTERNAL',
      `put ${key}: ${this.location} has a file where a folder of this key must be, or a folder where its ` +
        `file must be; a local store cannot hold both a key and keys below it (like 'a' and 'a/b')`,
      { cause },
    );
  }
}

/**
 * Like mkdir -p, returning the folders it created. An existing file in the way surfaces later as
 * ENOTDIR. Not mkdir({ recursive: true }): on Node 20 that reports EROFS and ENOSPC as ENOENT.
 */
async function makeFolders(folder: string): Promise<string[]> {
  try {
    await mkdir(folder);
    return [folder];
  } catch (err) {
    if (code(err) === 'EEXIST') return [];
    if (code(err) !== 'ENOENT' || folder === dirname(folder)) throw err;
  }
  const created = await makeFolders(dirname(folder));
  try {
    await mkdir(folder);
    return [...created, folder];
  } catch (err) {
    if (code(err) === 'EEXIST') return created; // made meanwhile by a concurrent put
    throw err;
  }
}

/** Objects whose first part is at least this long, in aligned memory, are written directly (shared/fs/aligned-memory.ts). */
const DIRECT_MIN = 1024 * 1024;

/** Files list() stats at once. */
const LIST_STATS = 64;

/** Ranged gets up to this many bytes are read synchronously (LocalStore.getSmall). */
const SYNC_GET_MAX = 256 * 1024;

/**
 * Creates `path` (which must not exist), writes the body's parts in order and fsyncs it. A large
 * first part in aligned memory (a pack) goes to the device with O_DIRECT, all but its last partial
 * block; the rest is written as usual. Where the file system refuses O_DIRECT (tmpfs, some FUSE
 * mounts) everything is written as usual.
 */
async function writeDurably(path: string, body: Body): Promise<void> {
  const handle = await open(path, 'wx');
  try {
    const data = body();
    const parts = Array.isArray(data) ? data : [data];
    const first = parts[0];
    let done = 0;
    if (first !== undefined && first.length >= DIRECT_MIN && isDirectWritable(first)) {
      done = await writeDirect(path, first.subarray(0, first.length - (first.length % DIRECT_ALIGN)));
    }
    await writeAll(handle, skipBytes(parts, done), done);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Writes `data` (aligned memory, a whole number of blocks) at offset 0 of the existing file `path`
 * with O_DIRECT; returns the bytes written, or 0 when the file system refuses direct I/O (the
 * caller then writes everything itself, over whatever this wrote).
 */
async function writeDirect(path: string, data: Buffer): Promise<number> {
  // O_DIRECT is Linux's (undefined elsewhere).
  if (constants.O_DIRECT === undefined) return 0;
  let direct: FileHandle;
  try {
    direct = await open(path, constants.O_WRONLY | constants.O_DIRECT);
  } catch {
    // The caller's descriptor writes this file already: whatever refuses this one (EINVAL where
    // O_DIRECT is not supported, EACCES for a file created read-only): the file is written the usual way.
    return 0;
  }
  try {
    for (let at = 0; at < data.length; ) {
      const { bytesWritten } = await direct.write(data, at, data.length - at, at);
      // A short write that ends off a block boundary cannot go on directly.
      if (bytesWritten === 0 || bytesWritten % DIRECT_ALIGN !== 0) return 0;
      at += bytesWritten;
    }
    directWrites.bytes += data.length;
    return data.length;
  } catch (err) {
    if (code(err) === 'EINVAL' || code(err) === 'EOPNOTSUPP' || code(err) === 'ENOTSUP') return 0;
    throw err;
  } finally {
    await direct.close();
  }
}

/** Writes every byte of `parts` from file offset `position` without joining them; loops because writev may write less than asked. */
async function writeAll(handle: FileHandle, parts: Buffer[], position: number): Promise<void> {
  let pending = parts.filter((part) => part.length > 0);
  while (pending.length > 0) {
    const { bytesWritten } = await handle.writev(pending, position);
    if (bytesWritten === 0) throw new Error('the file system accepted no bytes');
    position += bytesWritten;
    pending = skipBytes(pending, bytesWritten);
  }
}

function skipBytes(parts: Buffer[], count: number): Buffer[] {
  let i = 0;
  for (; i < parts.length && count >= parts[i].length; i++) count -= parts[i].length;
  const rest = parts.slice(i);
  if (count > 0) rest[0] = rest[0].subarray(count);
  return rest;
}

/** Makes a folder's entries (new names, renames) durable. POSIX only. */
async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function statIfPresent(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** The path, or one of its parents, does not exist or is a file: no object there. */
function isMissing(err: unknown): boolean {
  return code(err) === 'ENOENT' || code(err) === 'ENOTDIR';
}

function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}
