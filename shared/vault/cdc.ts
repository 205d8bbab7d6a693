import { Blake3Hasher } from '@napi-rs/blake-hash';
import { CairnError } from '../errors.js';

/**
 * Content-defined chunking for file data (FORMAT.md, "Content-defined chunks"): FastCDC with
 * normalized chunking (Xia et al., USENIX ATC 2016), a gear table derived from the vault's chunk-id
 * key (so chunk boundaries say nothing across vaults), sizes from the vault config.
 *
 * A boundary depends only on the bytes since the previous boundary, so an insertion or deletion
 * moves the boundaries of the chunk it falls in (and rarely the next one); every later chunk is
 * found again and deduplicates.
 */
export interface CdcParams {
  /** No cut before this many bytes of a chunk. */
  min: number;
  /** Target average chunk size (a power of two). */
  avg: number;
  /** A cut is forced here. */
  max: number;
}

export const DEFAULT_CDC: CdcParams = { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 };

/** Limits a vault config's `cdc` must keep (config.ts validates with `validCdcParams`). */
export const CDC_MIN_BYTES = 1024;
export const CDC_MAX_BYTES = 64 * 1024 * 1024;

/** Normalization level: the strict mask has NORMALIZATION more bits than log2(avg), the loose one as many fewer. */
const NORMALIZATION = 2;

/** 256 gear values, one per byte value, as 32-bit integers. */
export type GearTable = Int32Array;

const GEAR_CONTEXT = 'cairn/cdc-gear/v1';

/**
 * The vault's gear table: 1024 bytes of keyed BLAKE3 (the chunk-id key) in counter mode, block i
 * (0..31) = BLAKE3_keyed(chunkIdKey, "cairn/cdc-gear/v1" | u8 i), read as 256 little-endian u32.
 * Deterministic per vault and secret without the key, like restic's per-repository polynomial.
 */
export function gearTable(chunkIdKey: Uint8Array): GearTable {
  if (chunkIdKey.length !== 32) throw new CairnError('INTERNAL', `the chunk-id key has ${chunkIdKey.length} bytes, not 32`);
  const hasher = Blake3Hasher.newKeyed(Buffer.from(chunkIdKey));
  const bytes = Buffer.alloc(1024);
  for (let i = 0; i < 32; i++) {
    hasher.reset();
    hasher.update(Buffer.concat([Buffer.from(GEAR_CONTEXT, 'ascii'), Buffer.from([i])]));
    hasher.digestBuffer().copy(bytes, i * 32);
  }
  const gear = new Int32Array(256);
  for (let i = 0; i < 256; i++) gear[i] = bytes.readInt32LE(i * 4);
  return gear;
}

/** Whether params are usable: whole numbers, CDC_MIN_BYTES <= min < avg < max <= CDC_MAX_BYTES, avg a power of two. */
export function validCdcParams(p: CdcParams | undefined): p is CdcParams {
  if (!p || typeof p !== 'object') return false;
  const { min, avg, max } = p;
  return (
    [min, avg, max].every((n) => Number.isInteger(n)) &&
    min >= CDC_MIN_BYTES &&
    min < avg &&
    avg < max &&
    max <= CDC_MAX_BYTES &&
    (avg & (avg - 1)) === 0
  );
}

/** INTERNAL unless validCdcParams: a max of 0 would never end, callers validate configs before this. */
export function checkParams(p: CdcParams): void {
  if (!validCdcParams(p)) throw new CairnError('INTERNAL', `invalid chunking parameters ${JSON.stringify(p)}`);
}

/**
 * The two masks of normalized chunking: before `avg` bytes a cut needs log2(avg) + 2 zero bits (the
 * strict mask), after it log2(avg) - 2 (the loose mask), which pulls chunk sizes towards avg. The
 * bits are the high ones of the 32-bit fingerprint, from bit 30 down: bit k depends on the last
 * k + 1 bytes, so the masks see a window of up to 31 bytes. Bit 31 is left out so that a loop may
 * add two bytes per step (FastCDC's "rolling two bytes") with the masks shifted left by one.
 */
export function cdcMasks(p: CdcParams): { strict: number; loose: number } {
  const bits = Math.round(Math.log2(p.avg));
  const mask = (n: number) => ((2 ** Math.min(n, 31) - 1) * 2 ** (31 - Math.min(n, 31))) | 0;
  return { strict: mask(bits + NORMALIZATION), loose: mask(Math.max(1, bits - NORMALIZATION)) };
}

/**
 * Cuts `data`, which starts at a chunk boundary, into chunks; returns their lengths in order.
 * With `final` (the data ends where the file does), the lengths sum to data.length: the tail after
 * the last boundary is the last chunk (a file shorter than `min` is one chunk; empty data gives none).
 * Without `final`, only chunks whose boundary is certain whatever follows are returned: the tail
 * after them (shorter than `max`, possibly all of `data`) is left for the caller, who passes it again
 * at the start of the next call, followed by more of the file. The same bytes always give the same
 * cuts, however the file is split into calls.
 *
 * Pure, and allocation-free per chunk (cutPoint keeps one word view per ArrayBuffer): a tight loop
 * over the bytes (the bytes of the first `min` of each chunk are skipped, as in FastCDC).
 */
export function cut(data: Uint8Array, params: CdcParams, gear: GearTable, final: boolean): number[] {
  checkParams(params);
  const { min, avg, max } = params;
  const { strict, loose } = cdcMasks(params);
  const lengths: number[] = [];
  let pos = 0;
  const end = data.length;
  while (pos < end) {
    const rest = end - pos;
    const n = cutPoint(data, pos, end, min, avg, max, strict, loose, gear);
    // Not final: a chunk that runs to the end of the data might grow with more of the file.
    if (!final && n === rest && rest < max) break;
    lengths.push(n);
    pos += n;
  }
  return lengths;
}

/**
 * Length of the chunk starting at `start` in data[start, end): FastCDC's normalized cut (the gear
 * fingerprint fp = (fp << 1) + gear[byte], from byte `min` of the chunk on; a cut after the byte
 * where fp & mask == 0, the strict mask before byte `avg` of the chunk and the loose one from it
 * on), or end - start when no cut comes first, or max.
 *
 * The result is exactly that of adding one byte at a time (it is the vault format). For speed,
 * the bytes in whole 32-byte blocks of the underlying buffer are read as eight 32-bit words
 * (one load instead of four, and one loop step per 32 bytes), with the bytes of each word taken in
 * little-endian order; the bytes before the first block and after the last are added one by one,
 * as are all of them on a big-endian host or in a buffer of 2 GiB or more. (Adding two bytes per
 * step as cdcMasks allows was no faster here: the loads and loop steps cost, not the shifts.)
 */
export function cutPoint(
  data: Uint8Array,
  start: number,
  end: number,
  min: number,
  avg: number,
  max: number,
  strict: number,
  loose: number,
  gear: GearTable,
): number {
  const n = end - start;
  if (n <= min) return n;
  const limit = n < max ? n : max;
  const normal = avg < limit ? avg : limit;
  const base = data.byteOffset;
  const origin = base + start;
  const words = wordView(data.buffer, origin + limit);
  let fp = 0;
  let i = start + min;
  for (let phase = 0; phase < 2; phase++) {
    const mask = phase === 0 ? strict : loose;
    const stop = start + (phase === 0 ? normal : limit);
    while (i < stop && ((base + i) & 31) !== 0) {
      fp = ((fp << 1) + gear[data[i++]]) | 0;
      if ((fp & mask) === 0) return i - start;
    }
    // The bytes from a 32-byte boundary of the buffer to the last one before `stop`, a block of
    // eight words per step, written out (a loop per word or per byte costs more than the bytes).
    const blocksEnd = ((base + stop) >>> 5) << 3;
    if (words !== undefined && (base + i) >>> 2 < blocksEnd) {
      for (let w = (base + i) >>> 2; w < blocksEnd; w += 8) {
        const w0 = words[w];
        const w1 = words[w + 1];
        const w2 = words[w + 2];
        const w3 = words[w + 3];
        const w4 = words[w + 4];
        const w5 = words[w + 5];
        const w6 = words[w + 6];
        const w7 = words[w + 7];
        fp = ((fp << 1) + gear[w0 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 1 - origin;
        fp = ((fp << 1) + gear[(w0 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 2 - origin;
        fp = ((fp << 1) + gear[(w0 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 3 - origin;
        fp = ((fp << 1) + gear[w0 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 4 - origin;
        fp = ((fp << 1) + gear[w1 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 5 - origin;
        fp = ((fp << 1) + gear[(w1 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 6 - origin;
        fp = ((fp << 1) + gear[(w1 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 7 - origin;
        fp = ((fp << 1) + gear[w1 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 8 - origin;
        fp = ((fp << 1) + gear[w2 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 9 - origin;
        fp = ((fp << 1) + gear[(w2 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 10 - origin;
        fp = ((fp << 1) + gear[(w2 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 11 - origin;
        fp = ((fp << 1) + gear[w2 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 12 - origin;
        fp = ((fp << 1) + gear[w3 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 13 - origin;
        fp = ((fp << 1) + gear[(w3 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 14 - origin;
        fp = ((fp << 1) + gear[(w3 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 15 - origin;
        fp = ((fp << 1) + gear[w3 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 16 - origin;
        fp = ((fp << 1) + gear[w4 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 17 - origin;
        fp = ((fp << 1) + gear[(w4 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 18 - origin;
        fp = ((fp << 1) + gear[(w4 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 19 - origin;
        fp = ((fp << 1) + gear[w4 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 20 - origin;
        fp = ((fp << 1) + gear[w5 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 21 - origin;
        fp = ((fp << 1) + gear[(w5 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 22 - origin;
        fp = ((fp << 1) + gear[(w5 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 23 - origin;
        fp = ((fp << 1) + gear[w5 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 24 - origin;
        fp = ((fp << 1) + gear[w6 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 25 - origin;
        fp = ((fp << 1) + gear[(w6 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 26 - origin;
        fp = ((fp << 1) + gear[(w6 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 27 - origin;
        fp = ((fp << 1) + gear[w6 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 28 - origin;
        fp = ((fp << 1) + gear[w7 & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 29 - origin;
        fp = ((fp << 1) + gear[(w7 >>> 8) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 30 - origin;
        fp = ((fp << 1) + gear[(w7 >>> 16) & 255]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 31 - origin;
        fp = ((fp << 1) + gear[w7 >>> 24]) | 0;
        if ((fp & mask) === 0) return (w << 2) + 32 - origin;
      }
      i = (blocksEnd << 2) - base;
    }
    while (i < stop) {
      fp = ((fp << 1) + gear[data[i++]]) | 0;
      if ((fp & mask) === 0) return i - start;
    }
  }
  return limit;
}

/** Whether a Uint32Array reads the bytes of a word in little-endian order on this host. */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** Word views for cutPoint, one per buffer (so a call per chunk allocates nothing). */
const wordViews = new WeakMap<ArrayBufferLike, Uint32Array>();

/**
 * A Uint32Array over all of `buffer`, covering at least its first `bytes` bytes; undefined when
 * words cannot stand in for bytes (a big-endian host) or offsets in the buffer may not fit the
 * 32-bit arithmetic of cutPoint (2 GiB and more).
 */
function wordView(buffer: ArrayBufferLike, bytes: number): Uint32Array | undefined {
  if (!LITTLE_ENDIAN || buffer.byteLength > 0x7fffffff) return undefined;
  let view = wordViews.get(buffer);
  // A resizable buffer may have grown since the view was made.
  if (view === undefined || view.length < bytes >>> 2) {
    view = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
    wordViews.set(buffer, view);
  }
  return view;
}
