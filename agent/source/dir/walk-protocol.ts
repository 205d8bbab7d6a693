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
const NUMS = 8;

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

/** The entries of a batch; `abs` is made from `root` (absolute, raw bytes) when first asked for. */
export function decodeWalkBatch(batch: WalkBatch, root: Buffer): WalkEntry[] {
  const paths = Buffer.from(batch.paths);
  const out: WalkEntry[] = [];
  let start = 0;
  for (let i = 0; i < batch.ends.length; i++) {
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
    out.push(new DecodedEntry(paths.subarray(start, batch.ends[i]), TYPES[batch.nums[k]], stat, root));
    start = batch.ends[i];
  }
  for (const [i, x] of batch.extras) {
    const e = out[i];
    if (x.target) e.target = Buffer.from(x.target.buffer, x.target.byteOffset, x.target.byteLength);
    if (x.error !== undefined) e.error = x.error;
    if (x.mountPoint) e.mountPoint = true;
  }
  return out;
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
