import { CairnError, isCairnError } from '../errors.js';
import type { ChunkIndex, ChunkLocation } from './chunk-index.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import { fileCompressionLevel } from './config.js';
import { compareBytes } from './bytes.js';
import { ChunkHasher, ID_BYTES } from './crypto.js';
import { packKey } from './pack.js';
import type { PackWriter } from './pack-writer.js';
import type { Vault } from './vault.js';

/**
 * File-system backups (FORMAT.md, "Trees"): the tree of a `dir` backup, its entries sorted by path,
 * cut into parts at content-defined boundaries (chosen by path), each part stored as an ordinary
 * chunk (keyed BLAKE3 id, packs, index). A part whose bytes an earlier backup stored already is
 * reused, so an incremental stores only the parts around what changed. File data is cut by
 * content-defined chunking (cdc.ts) into chunks stored like disk chunks (same ids, packs, index), so
 * equal data dedups across file and disk backups of one vault.
 */

export type EntryType = 'dir' | 'file' | 'symlink' | 'hardlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev';

/** One chunk of a file's data, in file order; the zero id (ZERO_ID) is an all-zero run, never stored (a hole on restore). */
export interface FileChunk {
  id: Buffer;
  length: number;
}

export interface TreeEntry {
  /**
   * Path relative to the backup's root, '/'-separated, no leading or trailing slash; the root itself
   * is the empty path. Raw bytes: names need not be UTF-8.
   */
  path: Buffer;
  type: EntryType;
  /** Permission bits with setuid, setgid and sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of a file (and of a hard link's data); 0 for other types. */
  size: number;
  /** Nanoseconds since the epoch. */
  mtimeNs: bigint;
  atimeNs: bigint;
  ctimeNs: bigint;
  /** Identity at backup time, for the next backup's change detection (size, mtime, ctime, inode). */
  dev: number;
  /** Inode number: up to 64 bits (XFS, btrfs, NFS), so a bigint. */
  ino: bigint;
  /** Symlink: the link's target, raw bytes. */
  target?: Buffer;
  /** Hard link: the path of the entry (an earlier 'file' in this tree) that holds the data. */
  link?: Buffer;
  /** chardev / blockdev: st_rdev. */
  rdev?: number;
  /** Extended attributes, name -> raw value, in name order. */
  xattrs?: [string, Buffer][];
  /** file: chunks covering exactly [0, size). */
  chunks?: FileChunk[];
  /** Something went wrong with this entry but not the backup: 'changed while read', 'unreadable: EACCES ...'. */
  warning?: string;
}

/**
 * A part of a stored tree as its checked plaintext (TreeReader.nextRawPart): a PartCursor reads it
 * entry by entry without an object per entry, and entries() decodes them all when they are needed.
 */
export class RawTreePart {
  /** Totals of the first `counted` entries, which cursors have read (the whole part's once one read it all). */
  files = 0;
  dirs = 0;
  bytes = 0;
  partial = 0;
  counted = 0;
  /** Its last entry's path, once a cursor has read it. */
  lastPath: Buffer | undefined;
  private decoded: TreeEntry[] | undefined;

  constructor(
    readonly id: Buffer,
    readonly plain: Buffer,
    /** Its entry count, as its header says (a cursor checks it). */
    readonly count: number,
    /** Names it in errors ('tree part <hex>'). */
    readonly what: string,
  ) {}

  /** Every entry, decoded once (views of `plain`, as decodeTreeEntries gives). */
  entries(): TreeEntry[] {
    return (this.decoded ??= decodeTreeEntries(this.plain, this.what));
  }
}

/** What a manifest records of its tree (Manifest.tree). */
export interface TreeRecord {
  /**
   * The chunk ids (hex) of the part lists, in order: the ids of the tree's parts, in tree order, are
   * their contents end to end (FORMAT.md, "Trees"). Absent in trees written before part lists.
   */
  partLists?: string[];
  /** How many parts the lists hold (with partLists). */
  partCount?: number;
  /** Trees written before part lists: the chunk ids (hex) of the parts, in tree order. */
  parts?: string[];
  entries: number;
  files: number;
  dirs: number;
  /** Sum of file sizes. */
  bytes: number;
  /** Entries with a warning (unreadable, changed while read): the backup is partial when > 0. */
  partial: number;
}

/** A part closes at a path boundary only once its plaintext holds at least this many bytes. */
export const TREE_PART_MIN = 4 * 1024;
/** A part closes once its plaintext holds this many bytes, boundary or not. */
export const TREE_PART_MAX = 1024 * 1024;
/** Low bits of an entry's path hash that must be zero for a boundary: about one entry in 64. */
export const TREE_BOUNDARY_MASK = 0x3f;

export const TREE_MAGIC = Buffer.from('CRNTREE1', 'ascii');

/** Part lists: a list closes after a part id whose first 4 bytes (LE) have these bits zero (about one in 32)... */
export const TREE_LIST_MASK = 0x1f;
/** ... or once it holds this many ids. */
export const TREE_LIST_MAX = 4096;
export const TREE_LIST_MAGIC = Buffer.from('CRNPLST1', 'ascii');

/** Parts a TreeReader fetches ahead of the one it parses. */
const TREE_READ_AHEAD = 16;
/** Parts of one pack fetched in one get may lie this far apart (bytes of other chunks read for nothing)... */
const RUN_GAP = 64 * 1024;
/** ... and span at most this much. */
const RUN_BYTES = 4 * 1024 * 1024;

const TYPES: readonly EntryType[] = ['dir', 'file', 'symlink', 'hardlink', 'fifo', 'socket', 'chardev', 'blockdev'];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i] as const));

const F_TARGET = 1;
const F_LINK = 2;
const F_RDEV = 4;
const F_XATTRS = 8;
const F_CHUNKS = 16;
const F_WARNING = 32;
const F_KNOWN = 63;

/** An entry's type byte, by type (FORMAT.md, "Trees"), for readers of PartCursor. */
export const TREE_TYPE_CODES = { dir: 0, file: 1, symlink: 2, hardlink: 3, fifo: 4, socket: 5, chardev: 6, blockdev: 7 } as const;
/** An entry's flag bits: which optional fields it has. */
export const TREE_FLAGS = { TARGET: F_TARGET, LINK: F_LINK, RDEV: F_RDEV, XATTRS: F_XATTRS, CHUNKS: F_CHUNKS, WARNING: F_WARNING } as const;

/** The per-vault seed of boundary hashes: the first 4 bytes of the keyed id of a fixed label. */
export function treeBoundarySeed(chunkIdKey: Buffer): number {
  return new ChunkHasher(chunkIdKey).id(Buffer.from('cairn/tree-boundary/v1')).readUInt32LE(0);
}

/**
 * The boundary hash of a path: FNV-1a (32 bit) from an offset basis xored with `seed`, then
 * MurMur3's fmix32 (FNV-1a's low bits depend only on the low bits of each step).
 */
export function treeBoundaryHash(seed: number, path: Uint8Array): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < path.length; i++) h = Math.imul(h ^ path[i], 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export interface TreeWriterOptions {
  /** TREE_PART_MIN unless set (tests). */
  minBytes?: number;
  /** TREE_PART_MAX unless set (tests). */
  maxBytes?: number;
  /** TREE_BOUNDARY_MASK unless set (tests: 0 makes every entry past minBytes a boundary). */
  boundaryMask?: number;
}

/**
 * Writes a tree in parts, entries in strictly increasing path order (byte order of `path`), and
 * returns its record. A part closes after an entry when its plaintext holds at least minBytes and
 * the entry's path hash has the TREE_BOUNDARY_MASK bits zero, or once it holds maxBytes: since
 * boundaries depend on paths (and the vault's seed) only, a change leaves the other parts
 * byte-identical. The part ids go into part lists, cut the same way by id (TREE_LIST_MASK), so the
 * manifest names a few lists rather than every part. Parts and lists are chunks: reused when `index`
 * has their id, else encoded and added to `writer` (the caller flushes the writer, before writing
 * the manifest). `add` returns a promise only when it closed a part that must wait for room in the
 * writer (it resolves once the part is handed over): await it, when there is one, before the next
 * call. A file entry's chunk lengths must sum to its size. The writer keeps no reference to the
 * entries it was given.
 */
export class TreeWriter {
  private readonly out = new ByteWriter();
  private count = 0;
  private previous: Buffer | undefined;
  /**
   * A stored part (the parent's) whose entries come again unchanged, from its first (addStored):
   * they are only counted, and when its last comes too the part is reused by id without being
   * decoded or encoded again. Anything else first encodes the `copied` entries into the open part
   * (materialize).
   */
  private copy: RawTreePart | undefined;
  private copied = 0;
  /** The open part list: TREE_LIST_MAGIC, a count, ids. */
  private readonly list = new ByteWriter();
  private listCount = 0;
  private readonly lists: string[] = [];
  private partCount = 0;
  private finished = false;
  private readonly record: TreeRecord;
  private readonly minBytes: number;
  private readonly maxBytes: number;
  private readonly boundaryMask: number;
  private readonly seed: number;
  private readonly hasher: ChunkHasher;
  private readonly encoder: ChunkEncoder;
  /** Packs holding the parts and lists that were reused (an immutable vault extends their retention). */
  readonly packsReused = new Set<string>();
  /** Parts handed to the writer, and parts found in the index. */
  partsStored = 0;
  partsReused = 0;
  /** Part lists handed to the writer. */
  listsStored = 0;

  constructor(
    vault: Vault,
    private readonly writer: PackWriter,
    private readonly index: ChunkIndex,
    opts: TreeWriterOptions = {},
  ) {
    this.minBytes = opts.minBytes ?? TREE_PART_MIN;
    this.maxBytes = opts.maxBytes ?? TREE_PART_MAX;
    this.boundaryMask = opts.boundaryMask ?? TREE_BOUNDARY_MASK;
    this.seed = treeBoundarySeed(vault.key.chunkId);
    this.hasher = new ChunkHasher(vault.key.chunkId);
    this.encoder = new ChunkEncoder(vault.key.encryption, fileCompressionLevel(vault.config));
    this.record = { partLists: this.lists, partCount: 0, entries: 0, files: 0, dirs: 0, bytes: 0, partial: 0 };
  }

  add(entry: TreeEntry): Promise<void> | undefined {
    if (this.finished) throw new CairnError('INTERNAL', 'TreeWriter.add after finish');
    if (this.previous && compareBytes(this.previous, entry.path) >= 0) {
      throw new CairnError(
        'INTERNAL',
        `tree entries out of order: '${entry.path.toString('latin1')}' after '${this.previous.toString('latin1')}'`,
      );
    }
    if (entry.type === 'file' && entry.chunks) {
      let sum = 0;
      for (const c of entry.chunks) sum += c.length;
      if (sum !== entry.size) {
        throw new CairnError('INTERNAL', `tree entry '${entry.path.toString('latin1')}': chunks cover ${sum} bytes, its size is ${entry.size}`);
      }
    }
    if (this.copy !== undefined) this.materialize();
    this.tally(entry);
    return this.encode(entry);
  }

  /**
   * Entries at, at + 1, ..., at + n - 1 of the stored part `part`, unchanged (each as its cursor
   * read it: the caller found them equal to what it would write). From a part's first entry to its
   * last they reuse that part as it is; otherwise they are decoded and added as any entry. Returns
   * a promise as add does.
   */
  addStored(part: RawTreePart, at: number, n: number): Promise<void> | undefined {
    if (this.finished) throw new CairnError('INTERNAL', 'TreeWriter.addStored after finish');
    if (this.copy === undefined && this.count === 0 && at === 0) {
      // (No order check against the entry before: the reader checked the stored order and the
      // caller merges in order. The next part starts afresh.)
      this.copy = part;
      this.copied = 0;
      this.previous = undefined;
    }
    if (this.copy === part && at === this.copied) {
      this.copied += n;
      return this.copied === part.count ? this.closeCopy() : undefined;
    }
    const entries = part.entries();
    return this.addEach(entries, at, at + n);
  }

  /** add() of entries[from, to), waiting where add must. */
  private addEach(entries: TreeEntry[], from: number, to: number): Promise<void> | undefined {
    for (let k = from; k < to; k++) {
      const wait = this.add(entries[k]);
      if (wait) return wait.then(() => this.addEach(entries, k + 1, to));
    }
    return undefined;
  }

  private encode(entry: TreeEntry): Promise<void> | undefined {
    if (this.count === 0) {
      this.out.bytes(TREE_MAGIC);
      this.out.u32(0); // the count, filled in when the part closes
    }
    encodeEntry(this.out, entry, this.count === 0 ? undefined : this.previous);
    this.previous = Buffer.from(entry.path);
    this.count++;
    const size = this.out.length;
    if (size >= this.maxBytes || (size >= this.minBytes && (treeBoundaryHash(this.seed, entry.path) & this.boundaryMask) === 0)) {
      return this.closePart();
    }
    return undefined;
  }

  private tally(entry: TreeEntry): void {
    const r = this.record;
    r.entries++;
    if (entry.type === 'file') {
      r.files++;
      r.bytes += entry.size;
    } else if (entry.type === 'dir') r.dirs++;
    if (entry.warning !== undefined) r.partial++;
  }

  /** Hands the last part and list to the writer; the record is what the manifest's `tree` holds. */
  async finish(): Promise<TreeRecord> {
    if (this.finished) throw new CairnError('INTERNAL', 'TreeWriter.finish called twice');
    this.finished = true;
    if (this.copy !== undefined) this.materialize();
    if (this.count > 0) await this.closePart();
    if (this.listCount > 0) await this.closeList();
    return { ...this.record, partLists: [...this.lists], partCount: this.partCount };
  }

  /** Synchronous when the part (and the list it closed, if any) is in the index already: the common case in an incremental. */
  private closePart(): Promise<void> | undefined {
    const plain = this.out.take();
    plain.writeUInt32LE(this.count, TREE_MAGIC.length);
    this.count = 0;
    const id = this.hasher.id(plain);
    return this.listPart(id, this.store(id, plain, true));
  }

  /**
   * The copied part, whole: reused by id where this writer would close it too (its end is a
   * boundary: not so for a tree's last part, or a part cut by other rules), else its entries stay
   * in the open part (encoded) and the next ones follow them. Stored again, from its entries, if
   * the index lacks it.
   */
  private closeCopy(): Promise<void> | undefined {
    const part = this.copy!;
    const size = part.plain.length;
    const last = part.lastPath;
    const boundary = size >= this.maxBytes || (size >= this.minBytes && last !== undefined && (treeBoundaryHash(this.seed, last) & this.boundaryMask) === 0);
    if (!boundary) {
      this.materialize();
      return undefined;
    }
    const loc = this.index.get(part.id);
    if (!loc || part.counted !== part.count) {
      // In a pack a pending gc condemned: this backup stores it again, as any new part. (Or, never
      // so far, copied without a cursor having read it all: its totals come from its entries.)
      this.materialize();
      return this.closePart();
    }
    this.copy = undefined;
    this.copied = 0;
    const r = this.record;
    r.entries += part.count;
    r.files += part.files;
    r.dirs += part.dirs;
    r.bytes += part.bytes;
    r.partial += part.partial;
    this.packsReused.add(loc.packId);
    this.partsReused++;
    return this.listPart(part.id, undefined);
  }

  /** Encodes the entries copied so far into the open part (empty until now): the copy ends. */
  private materialize(): void {
    const part = this.copy!;
    this.copy = undefined;
    if (this.copied === 0) return;
    const entries = part.entries();
    this.out.bytes(TREE_MAGIC);
    this.out.u32(0);
    let previous: Buffer | undefined;
    for (let i = 0; i < this.copied; i++) {
      this.tally(entries[i]);
      encodeEntry(this.out, entries[i], previous);
      previous = entries[i].path;
    }
    this.previous = previous;
    this.count = this.copied;
    this.copied = 0;
  }

  /** Appends a closed part's id to the open list, closing the list at its boundary; `stored`: the part's own wait. */
  private listPart(id: Buffer, stored: Promise<void> | undefined): Promise<void> | undefined {
    this.partCount++;
    if (this.listCount === 0) {
      this.list.bytes(TREE_LIST_MAGIC);
      this.list.u32(0);
    }
    this.list.bytes(id);
    this.listCount++;
    if ((id.readUInt32LE(0) & TREE_LIST_MASK) !== 0 && this.listCount < TREE_LIST_MAX) return stored;
    return stored ? stored.then(() => this.closeList()) : this.closeList();
  }

  private closeList(): Promise<void> | undefined {
    const plain = this.list.take();
    plain.writeUInt32LE(this.listCount, TREE_LIST_MAGIC.length);
    this.listCount = 0;
    const id = this.hasher.id(plain);
    this.lists.push(id.toString('hex'));
    return this.store(id, plain, false);
  }

  /** Stores a part or list chunk unless the index has it; a promise when it waits for room in the writer. */
  private store(id: Buffer, plain: Buffer, part: boolean): Promise<void> | undefined {
    const loc = this.index.get(id);
    if (loc) {
      this.packsReused.add(loc.packId);
      if (part) this.partsReused++;
      return undefined;
    }
    const { codec, blob } = this.encoder.encode(id, plain);
    if (part) this.partsStored++;
    else this.listsStored++;
    return this.writer.waitForCapacity().then(() => {
      this.writer.add(id, blob, codec, plain.length);
    });
  }
}

/**
 * The chunk ids (hex) of a tree's part lists: none for a tree written before part lists.
 * VAULT_VERSION for a record of another layout (trees written by development builds held a part count).
 */
export function treeListIds(record: TreeRecord): string[] {
  const lists: unknown = record.partLists;
  if (lists === undefined && isHexList(record.parts)) return [];
  if (!isHexList(lists) || !Number.isSafeInteger(record.partCount)) {
    throw new CairnError('VAULT_VERSION', 'a backup tree is recorded in a layout this Cairn does not read (its part lists are not a list of chunk ids)');
  }
  return lists;
}

function isHexList(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((p) => typeof p === 'string');
}

/** Part lists fetched at once while the part ids of a tree are read. */
const LIST_READ_AHEAD = 8;

/**
 * The chunk ids (hex) of a tree's parts, in tree order: read from its part lists (or, for a tree
 * written before part lists, the record's own). A list missing or damaged is VAULT_CORRUPT naming
 * it, and so is a part count other than the record's; a record of another layout is VAULT_VERSION.
 */
export async function treePartIds(vault: Vault, index: ChunkIndex, record: TreeRecord): Promise<string[]> {
  const lists = treeListIds(record);
  if (lists.length === 0 && record.partLists === undefined) return record.parts!;
  const reader = new TreePartReader(vault, index);
  const ids: string[] = [];
  for (let at = 0; at < lists.length; at += LIST_READ_AHEAD) {
    const batch = await Promise.all(lists.slice(at, at + LIST_READ_AHEAD).map((hex) => reader.readList(hex)));
    for (const b of batch) for (const id of b) ids.push(id);
  }
  if (ids.length !== record.partCount) {
    throw new CairnError('VAULT_CORRUPT', `the part lists of a backup tree name ${ids.length} parts, its manifest says ${record.partCount}; run 'cairn vault verify'`);
  }
  return ids;
}

/** The part ids (hex) one part list holds; VAULT_CORRUPT naming the list when it is missing or damaged. */
export async function readPartList(vault: Vault, index: ChunkIndex, hex: string): Promise<string[]> {
  return new TreePartReader(vault, index).readList(hex);
}

/**
 * The entries of a stored tree, in path order. `index` locates the parts (Vault.loadIndex); a part
 * missing from it or damaged is VAULT_CORRUPT naming the part.
 */
export async function* readTree(vault: Vault, index: ChunkIndex, record: TreeRecord): AsyncIterable<TreeEntry> {
  const reader = new TreeReader(vault, index, record);
  for (let part = await reader.nextPart(); part; part = await reader.nextPart()) yield* part;
}

/**
 * Reads a stored tree a part at a time, in path order, each entry checked (a clean relative path
 * below a folder entry that came before it, links too), with a few parts fetched ahead: what
 * readTree yields entry by entry, for callers that go through a whole tree (one await per part,
 * not per entry). A part missing from `index` or damaged is VAULT_CORRUPT naming the part, and so
 * is an entry count other than the record's.
 */
export class TreeReader {
  private readonly parts: TreePartReader;
  /** The part ids, once the part lists are read. */
  private ids: string[] | undefined;
  private readonly ahead: Promise<{ hex: string; blob: Buffer }>[] = [];
  private fetched = 0;
  private done = 0;
  private total = 0;
  // Every entry's parent must be a folder entry that came before it: a restore then never writes
  // below a symlink or outside its target, whatever a tree holds.
  private readonly dirs = new Set<string>();
  /** The folder (a key of `dirs`) of the entry checked last. */
  private lastParent: Buffer | undefined;
  /** The path of the previous part's last entry. */
  private lastPath: Buffer | undefined;

  constructor(
    private readonly vault: Vault,
    private readonly index: ChunkIndex,
    private readonly record: TreeRecord,
  ) {
    this.parts = new TreePartReader(vault, index);
    treeListIds(record); // another layout: VAULT_VERSION now, not at the first part
  }

  /** The next part's entries (never empty), or undefined after the last. */
  async nextPart(): Promise<TreeEntry[] | undefined> {
    const fetched = await this.nextFetched();
    if (!fetched) return undefined;
    const entries = this.parts.decode(fetched);
    this.check(entries, fetched.n, fetched.hex);
    this.total += entries.length;
    return entries.length ? entries : this.nextPart();
  }

  /**
   * The next part as its checked plaintext (authenticated, its magic known), for a PartCursor:
   * the cursor checks its entries' order and count, not their paths (a caller that writes or opens
   * nothing by them, as an incremental's merge). Not to be mixed with nextPart on one reader.
   */
  async nextRawPart(): Promise<RawTreePart | undefined> {
    const fetched = await this.nextFetched();
    if (!fetched) return undefined;
    const what = `tree part ${fetched.hex}`;
    const plain = this.parts.open(fetched, what);
    if (plain.length < 12 || !plain.subarray(0, 8).equals(TREE_MAGIC)) {
      throw new CairnError('VAULT_VERSION', `${what} has an unknown format; upgrade Cairn`);
    }
    const count = plain.readUInt32LE(8);
    this.total += count;
    return new RawTreePart(Buffer.from(fetched.hex, 'hex'), plain, count, what);
  }

  /** The next part's blob, fetched (a few ahead); undefined after the last, once the entry total is checked. */
  private async nextFetched(): Promise<{ n: number; hex: string; blob: Buffer } | undefined> {
    const ids = (this.ids ??= await treePartIds(this.vault, this.index, this.record));
    if (this.done === ids.length) {
      if (this.total !== this.record.entries) {
        throw new CairnError('VAULT_CORRUPT', `a backup tree of ${ids.length} parts holds ${this.total} entries, its manifest says ${this.record.entries}`);
      }
      return undefined;
    }
    // Parts are fetched ahead (each ranged get is a round trip on S3), parts that follow each
    // other in one pack in a single get (a backup writes its new parts in tree order).
    while (this.fetched < ids.length && this.ahead.length < TREE_READ_AHEAD) {
      const run = this.parts.fetchRun(ids, this.fetched);
      this.fetched += run.length;
      for (const p of run) {
        p.catch(() => undefined); // awaited in turn; a failure of a part not reached yet must not go unhandled
        this.ahead.push(p);
      }
    }
    const n = this.done++;
    return { n, ...(await this.ahead.shift()!) };
  }

  private check(entries: TreeEntry[], n: number, id: string): void {
    const dirs = this.dirs;
    // In order within a part (decodeTreeEntries) and across parts: a folder's path cannot come
    // again later as another kind of entry, under which its children were checked.
    if (entries.length) {
      if (this.lastPath && Buffer.compare(this.lastPath, entries[0].path) >= 0) {
        throw badEntry(n, id, entries[0], 'does not come after the last entry of the previous part');
      }
      this.lastPath = entries[entries.length - 1].path;
    }
    for (const e of entries) {
      const path = e.path;
      if (!safeTreePath(path, path.length === 0)) throw badEntry(n, id, e, 'is not a clean relative path');
      if (e.link !== undefined && !safeTreePath(e.link, false)) throw badEntry(n, id, e, 'links to a path that is not a clean relative path');
      if (path.length > 0) {
        const slash = path.lastIndexOf(0x2f);
        // Entries of one folder mostly come in a row: the folder checked last needs no lookup.
        const end = slash < 0 ? 0 : slash;
        const known = this.lastParent;
        if (!(known && known.length === end && startsWith(path, known))) {
          if (!dirs.has(path.toString('latin1', 0, end))) throw badEntry(n, id, e, 'is not inside a folder of the tree');
          this.lastParent = path.subarray(0, end);
        }
      }
      if (e.type === 'dir') dirs.add(path.toString('latin1'));
    }
  }
}

/** Whether `path` starts with the bytes of `prefix`. */
function startsWith(path: Buffer, prefix: Buffer): boolean {
  for (let i = 0; i < prefix.length; i++) if (path[i] !== prefix[i]) return false;
  return true;
}

function badEntry(n: number, id: string, e: TreeEntry, why: string): CairnError {
  return new CairnError(
    'VAULT_CORRUPT',
    `part ${n} (${id}) of a backup tree has an entry '${e.path.toString('latin1')}' that ${why}; the backup cannot be restored safely`,
  );
}

/** A relative path of non-empty components, none of them '.' or '..' (the root: empty, when allowed). */
export function safeTreePath(path: Uint8Array, emptyAllowed: boolean): boolean {
  const n = path.length;
  if (n === 0) return emptyAllowed;
  // Byte by byte (a path is raw bytes): components run between slashes; none empty, '.', '..' or holding NUL.
  let start = 0;
  for (let i = 0; i <= n; i++) {
    const b = i < n ? path[i] : 0x2f;
    if (b === 0) return false;
    if (b !== 0x2f) continue;
    const len = i - start;
    if (len === 0) return false;
    if (path[start] === 0x2e && (len === 1 || (len === 2 && path[start + 1] === 0x2e))) return false;
    start = i + 1;
  }
  return true;
}

/** The entries of one part, by its id (hex), for callers that report a bad part and go on, like gc and verify. */
export async function readTreePart(vault: Vault, index: ChunkIndex, id: string): Promise<TreeEntry[]> {
  return new TreePartReader(vault, index).read(id);
}

/** Reads parts and part lists one at a time through one decoder. */
class TreePartReader {
  private readonly decoder: ChunkDecoder;

  constructor(
    private readonly vault: Vault,
    private readonly index: ChunkIndex,
  ) {
    this.decoder = new ChunkDecoder(vault.key.encryption, vault.key.chunkId);
  }

  async read(hex: string): Promise<TreeEntry[]> {
    return this.decode(await this.fetch(hex));
  }

  async readList(hex: string): Promise<string[]> {
    const what = `tree part list ${hex}`;
    return decodePartList(this.open(await this.fetch(hex, what), what), what);
  }

  /** The chunk's stored blob (a ranged get of its pack); `decode` checks and parses it. */
  async fetch(hex: string, what = `tree part ${hex}`): Promise<{ hex: string; blob: Buffer }> {
    const loc = this.locate(hex, what);
    return { hex, blob: await this.getRange(loc, loc.offset, loc.length, what) };
  }

  /**
   * Fetches parts ids[from], ids[from + 1], ... that lie one after the other in one pack (gaps up
   * to RUN_GAP, at most RUN_BYTES in all) with one ranged get: a promise per part, at least one.
   */
  fetchRun(ids: string[], from: number): Promise<{ hex: string; blob: Buffer }>[] {
    const what = (hex: string) => `tree part ${hex}`;
    let first: ChunkLocation;
    try {
      first = this.locate(ids[from], what(ids[from]));
    } catch (err) {
      return [Promise.reject(err)];
    }
    const locs = [first];
    let end = first.offset + first.length;
    for (let i = from + 1; i < ids.length; i++) {
      const id = Buffer.from(ids[i], 'hex');
      const loc = id.length === ID_BYTES ? this.index.get(id) : undefined;
      if (!loc || loc.packId !== first.packId || loc.offset < end || loc.offset - end > RUN_GAP) break;
      if (loc.offset + loc.length - first.offset > RUN_BYTES) break;
      locs.push(loc);
      end = loc.offset + loc.length;
    }
    const range = this.getRange(first, first.offset, end - first.offset, what(ids[from]));
    return locs.map((loc, k) => range.then((b) => ({ hex: ids[from + k], blob: b.subarray(loc.offset - first.offset, loc.offset - first.offset + loc.length) })));
  }

  private locate(hex: string, what: string): ChunkLocation {
    const id = Buffer.from(hex, 'hex');
    const loc = id.length === ID_BYTES && id.toString('hex') === hex ? this.index.get(id) : undefined;
    if (!loc) throw new CairnError('VAULT_CORRUPT', `${what} is in no index of the vault at ${this.vault.store.location}; run 'cairn vault verify'`);
    return loc;
  }

  /** Bytes [offset, offset + length) of the pack holding `loc`; `what` (the first chunk in them) names errors. */
  private async getRange(loc: ChunkLocation, offset: number, length: number, what: string): Promise<Buffer> {
    const verify = `run 'cairn vault verify'`;
    let blob: Buffer;
    try {
      blob = await this.vault.store.get(packKey(loc.packId), { offset, length });
    } catch (err) {
      if (!isCairnError(err, 'NOT_FOUND')) throw err;
      throw new CairnError('VAULT_CORRUPT', `${what} is in pack ${loc.packId}, which is missing from ${this.vault.store.location}; ${verify}`, {
        cause: err,
      });
    }
    if (blob.length !== length) throw new CairnError('VAULT_CORRUPT', `${what}: pack ${loc.packId} is shorter than its index says; ${verify}`);
    return blob;
  }

  decode(fetched: { hex: string; blob: Buffer }): TreeEntry[] {
    const what = `tree part ${fetched.hex}`;
    return decodeTreeEntries(this.open(fetched, what), what);
  }

  /** The plaintext of a fetched chunk, checked (authenticated, its length and id). */
  open({ hex, blob }: { hex: string; blob: Buffer }, what: string): Buffer {
    const id = Buffer.from(hex, 'hex');
    const loc = this.index.get(id)!;
    try {
      // A buffer of the chunk's own: a part's entries keep views of it (chunk ids, link targets, values).
      return this.decoder.decode(id, blob, loc.codec, loc.rawLength, `pack ${loc.packId}`, Buffer.allocUnsafe(loc.rawLength + 1));
    } catch (err) {
      if (!isCairnError(err, 'VAULT_CORRUPT')) throw err;
      throw new CairnError('VAULT_CORRUPT', `${what} is damaged (${err.message}); run 'cairn vault verify'`, { cause: err });
    }
  }
}

/** The part ids (hex) in the plaintext of a part list; `what` names it in errors. */
function decodePartList(plain: Buffer, what: string): string[] {
  if (plain.length < 12 || !plain.subarray(0, 8).equals(TREE_LIST_MAGIC)) {
    throw new CairnError('VAULT_VERSION', `${what} has an unknown format; upgrade Cairn`);
  }
  const count = plain.readUInt32LE(8);
  if (count === 0 || plain.length !== 12 + count * ID_BYTES) {
    throw new CairnError('VAULT_CORRUPT', `${what} is damaged (${plain.length} bytes for ${count} part ids); run 'cairn vault verify'`);
  }
  const ids: string[] = [];
  for (let at = 12; at < plain.length; at += ID_BYTES) ids.push(plain.toString('hex', at, at + ID_BYTES));
  return ids;
}

/**
 * The plaintext of a part holding `entries` (in order; the caller checks it), before it is encoded
 * as a chunk: what TreeWriter stores, for tests that pin the layout.
 */
export function encodeTreeEntries(entries: TreeEntry[]): Buffer {
  const w = new ByteWriter();
  w.bytes(TREE_MAGIC);
  w.u32(entries.length);
  let previous: Buffer | undefined;
  for (const e of entries) {
    encodeEntry(w, e, previous);
    previous = e.path;
  }
  return w.take();
}

/**
 * Parses the plaintext of a part; `what` names it in errors. Entries hold views of `plain` (chunk
 * ids, symlink targets, hard-link paths, attribute values): it must not be reused while they live.
 */
export function decodeTreeEntries(plain: Buffer, what: string): TreeEntry[] {
  if (plain.length < 12 || !plain.subarray(0, 8).equals(TREE_MAGIC)) {
    throw new CairnError('VAULT_VERSION', `${what} has an unknown format; upgrade Cairn`);
  }
  const r = new ByteReader(plain, what);
  r.at = 8;
  const count = r.u32();
  const entries: TreeEntry[] = [];
  let previous: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const e = decodeEntry(r, previous);
    if (previous && Buffer.compare(previous, e.path) >= 0) throw new CairnError('VAULT_CORRUPT', `${what} has entries out of order`);
    entries.push(e);
    previous = e.path;
  }
  if (r.at !== plain.length) throw new CairnError('VAULT_CORRUPT', `${what} has ${plain.length - r.at} bytes after its last entry`);
  return entries;
}

/**
 * Reads the entries of a part one after the other without an object per entry (an incremental's
 * merge compares most of its parent's entries and keeps none): the current entry's path in a
 * buffer reused for each, its fixed fields, and where its variable ones lie. One cursor goes
 * through a whole tree, part after part (`start`), and checks what decodeTreeEntries and TreeReader
 * check of order: strictly increasing paths within a part and across parts, the entry count, no
 * bytes after the last entry. The layout is encodeEntry's (decodeEntry reads it into objects).
 */
export class PartCursor {
  part: RawTreePart | undefined;
  /** The current entry's number in its part (-1 before the first). */
  n = -1;
  /** The current entry's path: path[0, pathLength). */
  path = Buffer.allocUnsafe(256);
  pathLength = 0;
  type = 0;
  flags = 0;
  mode = 0;
  uid = 0;
  gid = 0;
  size = 0;
  /** Offset in the part of its mtimeNs, atimeNs, ctimeNs (8 bytes each, little-endian). */
  timesAt = 0;
  dev = 0;
  /** Its inode number, or -1 when 2^53 or more. */
  ino = 0;
  /** Symlink target: offset and length (flags & F_TARGET). */
  targetAt = 0;
  targetLength = 0;
  rdev = 0;
  /** Offset of the first chunk id (flags & F_CHUNKS), and how many: each is id[32] | varint length. */
  chunksAt = 0;
  chunkCount = 0;
  private r: ByteReader | undefined;
  /** Paths read in this tree so far (the order check across parts needs the last one). */
  private any = false;

  /** Goes on with the next part of the tree. */
  start(part: RawTreePart): void {
    this.part = part;
    this.n = -1;
    this.r = new ByteReader(part.plain, part.what);
    this.r.at = 12;
  }

  /** Reads the next entry of the part; false after its last (the part was read exactly). */
  next(): boolean {
    const part = this.part!;
    const r = this.r!;
    if (this.n + 1 >= part.count) {
      if (r.at !== part.plain.length) throw new CairnError('VAULT_CORRUPT', `${part.what} has ${part.plain.length - r.at} bytes after its last entry`);
      return false;
    }
    this.n++;
    const shared = r.varint();
    const suffix = r.varint();
    if (shared > (this.n === 0 ? 0 : this.pathLength)) throw r.damaged();
    const length = shared + suffix;
    if (suffix > part.plain.length - r.at) throw r.damaged();
    // In order: the new path against the last one (its first `shared` bytes are the same).
    const plain = part.plain;
    const from = r.at;
    if (this.any) {
      let c = 0;
      const old = this.path;
      const oldLength = this.pathLength;
      for (let i = shared; c === 0 && i < length && i < oldLength; i++) c = plain[from + i - shared] - old[i];
      if (c < 0 || (c === 0 && length <= oldLength)) {
        throw new CairnError('VAULT_CORRUPT', this.n === 0 ? `${part.what} does not come after the last entry of the previous part` : `${part.what} has entries out of order`);
      }
    }
    if (length > this.path.length) {
      const bigger = Buffer.allocUnsafe(Math.max(length, this.path.length * 2));
      this.path.copy(bigger, 0, 0, shared);
      this.path = bigger;
    }
    for (let i = 0; i < suffix; i++) this.path[shared + i] = plain[from + i];
    r.at = from + suffix;
    this.pathLength = length;
    this.any = true;
    this.type = r.u8();
    this.flags = r.u8();
    if (this.type >= TYPES.length || (this.flags & ~F_KNOWN) !== 0) {
      throw new CairnError('VAULT_VERSION', `${part.what} has an entry of a kind this Cairn does not know; upgrade Cairn`);
    }
    this.mode = r.varint();
    this.uid = r.varint();
    this.gid = r.varint();
    this.size = r.varint();
    this.timesAt = r.at;
    r.skip(24);
    this.dev = r.varint();
    this.ino = r.varint64Number();
    const flags = this.flags;
    if (flags & F_TARGET) {
      this.targetLength = r.varint();
      this.targetAt = r.at;
      r.skip(this.targetLength);
    }
    if (flags & F_LINK) r.skip(r.varint());
    if (flags & F_RDEV) this.rdev = r.varint();
    if (flags & F_XATTRS) {
      for (let n = r.varint(); n > 0; n--) {
        r.skip(r.varint());
        r.skip(r.varint());
      }
    }
    if (flags & F_CHUNKS) {
      this.chunkCount = r.varint();
      this.chunksAt = r.at;
      for (let n = this.chunkCount; n > 0; n--) {
        r.skip(ID_BYTES);
        r.varint();
      }
    }
    if (flags & F_WARNING) r.skip(r.varint());
    if (this.n === part.counted) {
      part.counted++;
      if (part.counted === part.count) part.lastPath = Buffer.from(this.path.subarray(0, length));
      if (flags & F_WARNING) part.partial++;
      if (this.type === TYPE_FILE) {
        part.files++;
        part.bytes += this.size;
      } else if (this.type === TYPE_DIR) part.dirs++;
    }
    return true;
  }

  /** The current entry as an object (decodeTreeEntries' own, with views of the part). */
  entry(): TreeEntry {
    return this.part!.entries()[this.n];
  }
}

const TYPE_DIR = TREE_TYPE_CODES.dir;
const TYPE_FILE = TREE_TYPE_CODES.file;

function sharedPrefix(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function encodeEntry(w: ByteWriter, e: TreeEntry, previous: Buffer | undefined): void {
  const type = TYPE_CODE.get(e.type);
  if (type === undefined) throw new CairnError('INTERNAL', `unknown tree entry type '${e.type}'`);
  const shared = previous ? sharedPrefix(previous, e.path) : 0;
  w.varint(shared);
  w.varint(e.path.length - shared);
  w.bytes(e.path, shared);
  let flags = 0;
  if (e.target !== undefined) flags |= F_TARGET;
  if (e.link !== undefined) flags |= F_LINK;
  if (e.rdev !== undefined) flags |= F_RDEV;
  if (e.xattrs !== undefined) flags |= F_XATTRS;
  if (e.chunks !== undefined) flags |= F_CHUNKS;
  if (e.warning !== undefined) flags |= F_WARNING;
  w.u8(type);
  w.u8(flags);
  w.varint(e.mode);
  w.varint(e.uid);
  w.varint(e.gid);
  w.varint(e.size);
  w.i64(e.mtimeNs);
  w.i64(e.atimeNs);
  w.i64(e.ctimeNs);
  w.varint(e.dev);
  w.varint64(e.ino);
  if (e.target !== undefined) w.blob(e.target);
  if (e.link !== undefined) w.blob(e.link);
  if (e.rdev !== undefined) w.varint(e.rdev);
  if (e.xattrs !== undefined) {
    w.varint(e.xattrs.length);
    for (const [name, value] of e.xattrs) {
      w.blob(Buffer.from(name, 'utf8'));
      w.blob(value);
    }
  }
  if (e.chunks !== undefined) {
    w.varint(e.chunks.length);
    for (const c of e.chunks) {
      if (c.id.length !== ID_BYTES) throw new CairnError('INTERNAL', `a chunk id of '${e.path.toString('latin1')}' has ${c.id.length} bytes`);
      w.bytes(c.id);
      w.varint(c.length);
    }
  }
  if (e.warning !== undefined) w.blob(Buffer.from(e.warning, 'utf8'));
}

function decodeEntry(r: ByteReader, previous: Buffer | undefined): TreeEntry {
  const shared = r.varint();
  const suffix = r.varint();
  if (shared > (previous?.length ?? 0)) throw r.damaged();
  const path = Buffer.allocUnsafe(shared + suffix);
  if (shared) previous!.copy(path, 0, 0, shared);
  r.copyInto(path, shared, suffix);
  const typeCode = r.u8();
  const flags = r.u8();
  const type = TYPES[typeCode];
  if (type === undefined || (flags & ~F_KNOWN) !== 0) {
    throw new CairnError('VAULT_VERSION', `${r.what} has an entry of a kind this Cairn does not know; upgrade Cairn`);
  }
  const e: TreeEntry = {
    path,
    type,
    mode: r.varint(),
    uid: r.varint(),
    gid: r.varint(),
    size: r.varint(),
    mtimeNs: r.i64(),
    atimeNs: r.i64(),
    ctimeNs: r.i64(),
    dev: r.varint(),
    ino: r.varint64(),
  };
  if (flags & F_TARGET) e.target = r.take(r.varint());
  if (flags & F_LINK) e.link = r.take(r.varint());
  if (flags & F_RDEV) e.rdev = r.varint();
  if (flags & F_XATTRS) {
    const n = r.varint();
    e.xattrs = [];
    for (let i = 0; i < n; i++) e.xattrs.push([r.blob().toString('utf8'), r.take(r.varint())]);
  }
  if (flags & F_CHUNKS) {
    const n = r.varint();
    e.chunks = [];
    for (let i = 0; i < n; i++) e.chunks.push({ id: r.take(ID_BYTES), length: r.varint() });
  }
  if (flags & F_WARNING) e.warning = r.blob().toString('utf8');
  return e;
}

// BigInt to bytes through a typed array: Buffer's and DataView's BigInt methods are much slower here.
// (Little-endian hosts: Node runs on none other that Cairn supports.)
const scratch64 = new BigInt64Array(1);
const scratch8 = new Uint8Array(scratch64.buffer);

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MAX_U64 = (1n << 64n) - 1n;

/** An append-only byte buffer that doubles as it fills. */
class ByteWriter {
  private buf = Buffer.allocUnsafe(64 * 1024);
  length = 0;

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(n: number): void {
    this.ensure(1);
    this.buf[this.length++] = n;
  }

  u32(n: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(n, this.length);
    this.length += 4;
  }

  i64(n: bigint): void {
    this.ensure(8);
    scratch64[0] = n;
    const buf = this.buf;
    const at = this.length;
    for (let i = 0; i < 8; i++) buf[at + i] = scratch8[i];
    this.length += 8;
  }

  /** Unsigned LEB128 of a whole number up to 2^53. */
  varint(n: number): void {
    this.ensure(8);
    if (n >= 0 && n < 0x80 && (n | 0) === n) {
      this.buf[this.length++] = n;
      return;
    }
    if (!Number.isSafeInteger(n) || n < 0) throw new CairnError('INTERNAL', `a tree field is ${n}, not a whole number >= 0`);
    while (n >= 0x80) {
      this.buf[this.length++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.length++] = n;
  }

  /**
   * Unsigned LEB128 of a whole number below 2^64: the same bytes as `varint` for the same value
   * (a value below 2^53 is written by it).
   */
  varint64(n: bigint): void {
    if (n >= 0n && n <= MAX_SAFE) return this.varint(Number(n));
    if (n < 0n || n > MAX_U64) throw new CairnError('INTERNAL', `a tree field is ${n}, not a whole number below 2^64`);
    this.ensure(10);
    while (n >= 0x80n) {
      this.buf[this.length++] = Number(n & 0x7fn) | 0x80;
      n >>= 7n;
    }
    this.buf[this.length++] = Number(n);
  }

  /** Appends b[from..]; short runs byte by byte (cheaper than a native copy call). */
  bytes(b: Uint8Array, from = 0): void {
    const n = b.length - from;
    this.ensure(n);
    if (n > 64) {
      this.buf.set(from ? b.subarray(from) : b, this.length);
      this.length += n;
      return;
    }
    const buf = this.buf;
    let at = this.length;
    for (let i = from; i < b.length; i++) buf[at++] = b[i];
    this.length = at;
  }

  blob(b: Uint8Array): void {
    this.varint(b.length);
    this.bytes(b);
  }

  /** The bytes written (a copy), and a reset. */
  take(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.length));
    this.length = 0;
    return out;
  }
}

class ByteReader {
  at = 0;
  constructor(
    private readonly buf: Buffer,
    readonly what: string,
  ) {}

  damaged(): CairnError {
    return new CairnError('VAULT_CORRUPT', `${this.what} is damaged (bad entry at byte ${this.at})`);
  }

  /** A view of the next n bytes (valid while the part's plaintext is). */
  take(n: number): Buffer {
    if (n > this.buf.length - this.at) throw this.damaged();
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  copyInto(into: Buffer, at: number, n: number): void {
    if (n > this.buf.length - this.at) throw this.damaged();
    const buf = this.buf;
    const from = this.at;
    if (n > 64) buf.copy(into, at, from, from + n);
    else for (let i = 0; i < n; i++) into[at + i] = buf[from + i];
    this.at = from + n;
  }

  u8(): number {
    if (this.at >= this.buf.length) throw this.damaged();
    return this.buf[this.at++];
  }

  u32(): number {
    if (this.at + 4 > this.buf.length) throw this.damaged();
    const v = this.buf.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }

  i64(): bigint {
    if (this.at + 8 > this.buf.length) throw this.damaged();
    for (let i = 0; i < 8; i++) scratch8[i] = this.buf[this.at + i];
    this.at += 8;
    return scratch64[0];
  }

  varint(): number {
    if (this.at < this.buf.length && this.buf[this.at] < 0x80) return this.buf[this.at++];
    let n = 0;
    let scale = 1;
    for (;;) {
      const b = this.u8();
      n += (b & 0x7f) * scale;
      if (b < 0x80) break;
      scale *= 0x80;
      if (scale > 2 ** 56) throw this.damaged();
    }
    if (!Number.isSafeInteger(n)) throw this.damaged();
    return n;
  }

  /** A varint64 value (below 2^64); Number arithmetic for the first 7 bytes (49 bits). */
  varint64(): bigint {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 7; i++) {
      const b = this.u8();
      n += (b & 0x7f) * scale;
      if (b < 0x80) return BigInt(n);
      scale *= 0x80;
    }
    let big = BigInt(n);
    for (let shift = 49n; ; shift += 7n) {
      const b = this.u8();
      big += BigInt(b & 0x7f) << shift;
      if (b < 0x80) break;
      if (shift >= 63n) throw this.damaged();
    }
    if (big > MAX_U64) throw this.damaged();
    return big;
  }

  blob(): Buffer {
    return this.take(this.varint());
  }

  skip(n: number): void {
    if (n > this.buf.length - this.at) throw this.damaged();
    this.at += n;
  }

  /** A varint64 as a number, or -1 when it is 2^53 or more (its bytes are read either way). */
  varint64Number(): number {
    const start = this.at;
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      n += (b & 0x7f) * scale;
      // (Rounding keeps a value of 2^53 or more at 2^53 or more.)
      if (b < 0x80) return n <= Number.MAX_SAFE_INTEGER ? n : -1;
      scale *= 0x80;
    }
    this.at = start;
    this.varint64();
    return -1;
  }
}
