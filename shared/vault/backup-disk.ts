import { CairnError, isCairnError } from '../errors.js';
import type { BlockMap } from './block-map.js';
import type { ChunkIndex, ChunkLocation } from './chunk-index.js';
import { ChunkDecoder, Codec } from './chunk-codec.js';
import type { DiskRecord } from './manifest.js';
import { packKey } from './pack.js';
import type { Vault } from './vault.js';

/** Neighbouring blobs of one pack further apart than this are fetched with separate gets. */
const MAX_GAP = 64 * 1024;
/** Largest single ranged get. */
const MAX_FETCH = 4 * 1024 * 1024;

export interface BackupDiskOptions {
  /** Decoded chunks kept in memory, in bytes (default 64 MiB; 0 keeps none). */
  cacheBytes?: number;
  /**
   * Read-ahead for sequential readers, in bytes (default 0: off). When a read starts where the
   * previous one ended, the chunks of the next `readAhead` bytes are fetched in the background.
   */
  readAhead?: number;
}

/** A run of positions that are all data or all zero. */
export interface DiskExtent {
  offset: number;
  length: number;
  /** True when every chunk of the run is the zero chunk (never stored; reads as zeros). */
  zero: boolean;
}

export interface BackupDiskStats {
  /** Ranged gets made on the store. */
  gets: number;
  /** Stored (sealed) bytes fetched. */
  bytesFetched: number;
  /** Chunks decoded (each fetched chunk once). */
  chunksDecoded: number;
  /** Chunk lookups answered by the cache or by a fetch already in flight. */
  cacheHits: number;
}

interface Wanted {
  key: string;
  id: Buffer;
  loc: ChunkLocation;
  /** Disk offset that asked for it, for error messages. */
  diskOffset: number;
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

/**
 * Random access to one disk of a backup, straight from the vault: the reader of instant recovery
 * (NBD) and of streaming exports.
 *
 * Contracts:
 * - `read` returns exactly the bytes of the disk as it was at the backup, for any range inside it.
 *   Zero chunks cost no I/O. Every chunk is authenticated, decompressed and checked against its id
 *   before any byte of it is returned; a chunk that is missing or damaged fails the read with
 *   VAULT_CORRUPT naming the chunk and the disk offset, and nothing is cached for it (a later read
 *   tries again).
 * - A chunk is fetched once however many positions or concurrent reads want it: reads of a chunk in
 *   flight wait for that fetch. Chunks of one pack that one read needs are fetched with one ranged
 *   get when they lie close together.
 * - Memory: the cache holds at most `cacheBytes` of decoded chunks (least recently used go first);
 *   beyond it, only the chunks of reads in progress are held.
 * - Safe for any number of concurrent reads. The vault is only read.
 *
 * Decoding runs on the calling thread (one 64 KiB chunk takes about 0.1 ms): the worker pool's
 * protocol can only write plaintext to files, not hand it back.
 */
export class BackupDisk {
  readonly size: number;
  readonly chunkSize: number;
  readonly stats: BackupDiskStats = { gets: 0, bytesFetched: 0, chunksDecoded: 0, cacheHits: 0 };
  private readonly decoder: ChunkDecoder;
  private readonly cache = new Map<string, Buffer>();
  private cachedBytes = 0;
  private readonly cacheLimit: number;
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private readonly readAheadBytes: number;
  private lastEnd = -1;
  private aheadUntil = 0;

  private constructor(
    private readonly vault: Vault,
    private readonly index: ChunkIndex,
    private readonly map: BlockMap,
    readonly record: DiskRecord,
    opts: BackupDiskOptions,
  ) {
    this.size = map.diskSize;
    this.chunkSize = map.chunkSize;
    this.cacheLimit = Math.max(0, opts.cacheBytes ?? 64 * 1024 * 1024);
    this.readAheadBytes = Math.max(0, opts.readAhead ?? 0);
    this.decoder = new ChunkDecoder(vault.key.encryption, vault.key.chunkId);
  }

  /**
   * Opens a disk of a backup: reads its block map. `index` must come from
   * `vault.loadIndex({ includeCondemned: true })`, as for a restore.
   */
  static async open(vault: Vault, index: ChunkIndex, disk: DiskRecord, opts: BackupDiskOptions = {}): Promise<BackupDisk> {
    const map = await vault.readBlockMap(disk.blockMap);
    if (map.diskSize !== disk.size || map.chunkSize !== disk.chunkSize) {
      throw new CairnError(
        'VAULT_CORRUPT',
        `block map ${disk.blockMap} describes ${map.diskSize} bytes in ${map.chunkSize}-byte chunks, but its manifest says ${disk.size} in ${disk.chunkSize}; run 'cairn vault verify'`,
      );
    }
    return new BackupDisk(vault, index, map, disk, opts);
  }

  /** True when the chunk holding byte `offset` is the zero chunk. */
  isZeroAt(offset: number): boolean {
    return this.map.isZero(Math.floor(offset / this.chunkSize));
  }

  /**
   * The runs of data and zero chunks covering [offset, offset + length) (default: the whole disk),
   * in order, clipped to the range; neighbouring runs always differ in `zero`.
   */
  extents(offset = 0, length = this.size - offset): DiskExtent[] {
    const end = Math.min(this.size, offset + length);
    const out: DiskExtent[] = [];
    let at = offset;
    while (at < end) {
      const p = Math.floor(at / this.chunkSize);
      const zero = this.map.isZero(p);
      const next = Math.min(end, (p + 1) * this.chunkSize);
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.length += next - at;
      else out.push({ offset: at, length: next - at, zero });
      at = next;
    }
    return out;
  }

  /** Reads [offset, offset + length); the range must lie inside the disk. */
  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new CairnError('USAGE', `read of ${length} bytes at ${offset} is outside the disk of ${this.size} bytes`);
    }
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const end = offset + length;
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((end - 1) / this.chunkSize);
    const sequential = offset === this.lastEnd;
    this.lastEnd = end;
    const parts = this.chunks(first, last);
    if (sequential && this.readAheadBytes > 0) this.readAhead(end);
    const chunks = await Promise.all(parts);
    for (let p = first; p <= last; p++) {
      const chunk = chunks[p - first];
      if (!chunk) continue;
      const start = p * this.chunkSize;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + chunk.length);
      chunk.copy(out, from - offset, from - start, to - start);
    }
    return out;
  }

  /**
   * Starts fetching the chunks of [offset, offset + length) into the cache without waiting; errors
   * are left for the read that needs the chunk. Only useful with a cache large enough to hold them.
   */
  prefetch(offset: number, length: number): void {
    const end = Math.min(this.size, offset + length);
    if (offset >= end || this.cacheLimit === 0) return;
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((end - 1) / this.chunkSize);
    for (const p of this.chunks(first, last)) p?.catch(() => undefined);
  }

  /** Drops every cached chunk. */
  clearCache(): void {
    this.cache.clear();
    this.cachedBytes = 0;
  }

  private readAhead(from: number): void {
    const start = Math.max(from, this.aheadUntil);
    // Fetch the next window once the reader has consumed half of the last one.
    if (start - from > this.readAheadBytes / 2) return;
    const until = Math.min(this.size, from + this.readAheadBytes);
    if (until <= start) return;
    this.aheadUntil = until;
    this.prefetch(start, until - start);
  }

  /**
   * One promise per position first..last: the decoded chunk, or undefined for a zero chunk. Cached
   * and in-flight chunks are shared; the rest are grouped by pack into ranged gets.
   */
  private chunks(first: number, last: number): (Promise<Buffer> | undefined)[] {
    const result: (Promise<Buffer> | undefined)[] = [];
    const wanted = new Map<string, Wanted>();
    for (let p = first; p <= last; p++) {
      if (this.map.isZero(p)) {
        result.push(undefined);
        continue;
      }
      const id = this.map.id(p);
      const key = id.toString('latin1');
      const cached = this.cache.get(key);
      if (cached) {
        // Refresh its place in the LRU order.
        this.cache.delete(key);
        this.cache.set(key, cached);
        this.stats.cacheHits++;
        result.push(Promise.resolve(cached));
        continue;
      }
      const pending = this.inFlight.get(key);
      if (pending) {
        this.stats.cacheHits++;
        result.push(pending);
        continue;
      }
      const loc = this.index.get(id);
      if (!loc) {
        result.push(
          Promise.reject(
            new CairnError(
              'VAULT_CORRUPT',
              `chunk ${id.toString('hex')} (disk offset ${p * this.chunkSize}) is in no index of the vault at ${this.vault.store.location}; run 'cairn vault verify'`,
            ),
          ),
        );
        continue;
      }
      let w!: Wanted;
      const promise = new Promise<Buffer>((resolve, reject) => {
        w = { key, id: Buffer.from(id), loc, diskOffset: p * this.chunkSize, resolve, reject };
      });
      // A read may fail before awaiting every part; the rejection is still handled by its waiter.
      promise.catch(() => undefined);
      wanted.set(key, w);
      this.inFlight.set(key, promise);
      result.push(promise);
    }
    for (const group of groupFetches([...wanted.values()])) void this.fetch(group);
    return result;
  }

  /** Fetches one group (chunks of one pack, in offset order) with one ranged get and decodes each. */
  private async fetch(group: Wanted[]): Promise<void> {
    const packId = group[0].loc.packId;
    const start = group[0].loc.offset;
    const end = group[group.length - 1].loc.offset + group[group.length - 1].loc.length;
    let data: Buffer;
    try {
      this.stats.gets++;
      data = await this.vault.store.get(packKey(packId), { offset: start, length: end - start });
      this.stats.bytesFetched += data.length;
      if (data.length !== end - start) {
        throw new CairnError('VAULT_CORRUPT', `pack ${packId} is shorter than its index says`);
      }
    } catch (err) {
      for (const w of group) this.settle(w, undefined, this.fetchError(err, packId, w));
      return;
    }
    for (const w of group) {
      let plain: Buffer | undefined;
      let error: unknown;
      try {
        // A raw chunk's plaintext is the decryption output, a buffer of its own; a compressed one
        // is decompressed into its own buffer (without one, the decoder returns its scratch space).
        const into = w.loc.codec === Codec.Raw ? undefined : Buffer.allocUnsafeSlow(w.loc.rawLength + 1);
        const blob = data.subarray(w.loc.offset - start, w.loc.offset - start + w.loc.length);
        plain = this.decoder.decode(w.id, blob, w.loc.codec, w.loc.rawLength, `pack ${packId}`, into);
        this.stats.chunksDecoded++;
      } catch (err) {
        error = isCairnError(err)
          ? new CairnError(err.code, `${err.message} (disk offset ${w.diskOffset}); run 'cairn vault verify --read-data'`, { cause: err })
          : err;
      }
      this.settle(w, plain, error);
    }
  }

  private fetchError(err: unknown, packId: string, w: Wanted): CairnError {
    const what = `chunk ${w.id.toString('hex')} (disk offset ${w.diskOffset}) cannot be read from pack ${packId} of the vault at ${this.vault.store.location}`;
    if (isCairnError(err, 'STORE_UNAVAILABLE')) return new CairnError('STORE_UNAVAILABLE', `${what}: ${err.message}`, { cause: err, retryable: true });
    return new CairnError('VAULT_CORRUPT', `${what}: ${(err as Error).message}; run 'cairn vault verify'`, { cause: err });
  }

  private settle(w: Wanted, plain: Buffer | undefined, error: unknown): void {
    this.inFlight.delete(w.key);
    if (plain) {
      this.remember(w.key, plain);
      w.resolve(plain);
    } else w.reject(error);
  }

  private remember(key: string, plain: Buffer): void {
    if (plain.length > this.cacheLimit) return;
    const old = this.cache.get(key);
    if (old) this.cachedBytes -= old.length;
    this.cache.delete(key);
    this.cache.set(key, plain);
    this.cachedBytes += plain.length;
    for (const [k, v] of this.cache) {
      if (this.cachedBytes <= this.cacheLimit) break;
      this.cache.delete(k);
      this.cachedBytes -= v.length;
    }
  }
}

/** Groups chunks by pack, in pack order, merging neighbours into gets of at most MAX_FETCH bytes. */
function groupFetches(items: Wanted[]): Wanted[][] {
  const byPack = new Map<string, Wanted[]>();
  for (const w of items) {
    const list = byPack.get(w.loc.packId);
    if (list) list.push(w);
    else byPack.set(w.loc.packId, [w]);
  }
  const groups: Wanted[][] = [];
  for (const list of byPack.values()) {
    list.sort((a, b) => a.loc.offset - b.loc.offset);
    let group: Wanted[] = [];
    for (const w of list) {
      const head = group[0];
      const tail = group[group.length - 1];
      if (head && (w.loc.offset - (tail.loc.offset + tail.loc.length) > MAX_GAP || w.loc.offset + w.loc.length - head.loc.offset > MAX_FETCH)) {
        groups.push(group);
        group = [];
      }
      group.push(w);
    }
    if (group.length) groups.push(group);
  }
  return groups;
}
