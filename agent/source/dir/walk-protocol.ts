import type { EntryStat, WalkEntry } from './walker.js';

/**
 * What the walk worker (walk-worker.ts) and its reader (walk-stream.ts) exchange: entries in
 * batches of typed arrays, transferred rather than cloned, so a batch of 512 entries costs a few
 * allocations instead of several per entry.
 */

export interface WalkWorkerInit {
  root: string;
  excludes: string[];
  crossFileSystems: boolean;
  batchEntries: number;
  /** Int32Array over it: [0] batches the worker may still post, [1] set to 1 to make it stop. */
  credits: SharedArrayBuffer;
}

export interface WalkBatch {
  /** Relative paths end to end; entry i is paths[ends[i-1] (or 0) .. ends[i]). */
  paths: ArrayBuffer;
  ends: Uint32Array;
  /** Per entry: type code, mode, uid, gid, size, dev, nlink, rdev. */
  nums: Float64Array;
  /** Per entry: mtime, atime, ctime in ns. */
  times: BigInt64Array;
  inos: BigUint64Array;
  /** The rare fields, by entry index. */
  extras: [number, { target?: Uint8Array; error?: string; mountPoint?: boolean }][];
}

const TYPES: readonly WalkEntry['type'][] = ['dir', 'file', 'symlink', 'fifo', 'socket', 'chardev', 'blockdev'];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i] as const));
export const NUMS = 8;

export function encodeWalkBatch(entries: WalkEntry[]): { batch: WalkBatch; transfer: ArrayBuffer[] } {
  const n = entries.length;
  let total = 0;
  for (const e of entries) total += e.path.length;
  const paths = new Uint8Array(total);
  const ends = new Uint32Array(n);
  const nums = new Float64Array(n * NUMS);
  const times = new BigInt64Array(n * 3);
  const inos = new BigUint64Array(n);
  const extras: WalkBatch['extras'] = [];
  let at = 0;
  entries.forEach((e, i) => {
    paths.set(e.path, at);
    at += e.path.length;
    ends[i] = at;
    const s = e.stat;
    const k = i * NUMS;
    nums[k] = TYPE_CODE.get(e.type)!;
    nums[k + 1] = s.mode;
    nums[k + 2] = s.uid;
    nums[k + 3] = s.gid;
    nums[k + 4] = s.size;
    nums[k + 5] = s.dev;
    nums[k + 6] = s.nlink;
    nums[k + 7] = s.rdev;
    times[i * 3] = s.mtimeNs;
    times[i * 3 + 1] = s.atimeNs;
    times[i * 3 + 2] = s.ctimeNs;
    inos[i] = s.ino;
    if (e.target || e.error !== undefined || e.mountPoint) {
      extras.push([i, { ...(e.target ? { target: e.target } : {}), ...(e.error !== undefined ? { error: e.error } : {}), ...(e.mountPoint ? { mountPoint: true } : {}) }]);
    }
  });
  return {
    batch: { paths: paths.buffer, ends, nums, times, inos, extras },
    transfer: [paths.buffer, ends.buffer, nums.buffer, times.buffer, inos.buffer] as ArrayBuffer[],
  };
}

/** Type codes of a batch's `nums` (walk types: no 'hardlink'), by code. */
export const WALK_TYPES = TYPES;

/**
 * A batch as it came, read in place: an entry's fields by its number, without an object per entry
 * (an incremental's merge compares most entries with its parent's and keeps none); entry(i) makes
 * the WalkEntry of one when it is needed.
 */
export class WalkBatchView {
  readonly length: number;
  /** Entry i's path is paths[start(i), ends[i]). */
  readonly paths: Buffer;
  readonly ends: Uint32Array;
  /** Per entry NUMS numbers: type code (WALK_TYPES), mode, uid, gid, size, dev, nlink, rdev. */
  readonly nums: Float64Array;
  /** Per entry 6 words: mtime, atime, ctime (ns, little-endian int64 as two int32). */
  readonly timeWords: Int32Array;
  /** Per entry 2 words: the inode number's low and high 32 bits. */
  readonly inoWords: Uint32Array;
  private readonly extras = new Map<number, WalkBatch['extras'][number][1]>();

  constructor(
    private readonly batch: WalkBatch,
    private readonly root: Buffer,
  ) {
    this.length = batch.ends.length;
    this.paths = Buffer.from(batch.paths);
    this.ends = batch.ends;
    this.nums = batch.nums;
    this.timeWords = new Int32Array(batch.times.buffer, batch.times.byteOffset, batch.times.length * 2);
    this.inoWords = new Uint32Array(batch.inos.buffer, batch.inos.byteOffset, batch.inos.length * 2);
    for (const [i, x] of batch.extras) this.extras.set(i, x);
  }

  start(i: number): number {
    return i === 0 ? 0 : this.ends[i - 1];
  }

  /** Entry i's symlink target, error or mount point flag, when it has any. */
  extra(i: number): { target?: Uint8Array; error?: string; mountPoint?: boolean } | undefined {
    return this.extras.get(i);
  }

  /** Every entry, as entry() makes them. */
  entries(): WalkEntry[] {
    const out: WalkEntry[] = [];
    for (let i = 0; i < this.length; i++) out.push(this.entry(i));
    return out;
  }

  /** Entry i; its `abs` is made from the root (absolute, raw bytes) when first asked for. */
  entry(i: number): WalkEntry {
    const batch = this.batch;
    const k = i * NUMS;
    const stat: EntryStat = {
      mode: batch.nums[k + 1],
      uid: batch.nums[k + 2],
      gid: batch.nums[k + 3],
      size: batch.nums[k + 4],
      dev: batch.nums[k + 5],
      nlink: batch.nums[k + 6],
      rdev: batch.nums[k + 7],
      mtimeNs: batch.times[i * 3],
      atimeNs: batch.times[i * 3 + 1],
      ctimeNs: batch.times[i * 3 + 2],
      ino: batch.inos[i],
    };
    const e = new DecodedEntry(this.paths.subarray(this.start(i), this.ends[i]), TYPES[batch.nums[k]], stat, this.root);
    const x = this.extras.get(i);
    if (x) {
      if (x.target) e.target = Buffer.from(x.target.buffer, x.target.byteOffset, x.target.byteLength);
      if (x.error !== undefined) e.error = x.error;
      if (x.mountPoint) e.mountPoint = true;
    }
    return e;
  }
}

class DecodedEntry implements WalkEntry {
  target?: Buffer;
  error?: string;
  mountPoint?: boolean;
  private absPath: Buffer | undefined;

  constructor(
    readonly path: Buffer,
    readonly type: WalkEntry['type'],
    readonly stat: EntryStat,
    private readonly root: Buffer,
  ) {}

  get abs(): Buffer {
    if (!this.absPath) {
      this.absPath = this.path.length === 0 ? this.root : Buffer.concat([this.root, this.root[this.root.length - 1] === 0x2f ? EMPTY : SLASH, this.path]);
    }
    return this.absPath;
  }
}

const SLASH = Buffer.from('/');
const EMPTY = Buffer.alloc(0);
