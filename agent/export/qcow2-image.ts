import { allZero, zeroBytes, type ImageSource } from './image-source.js';

/**
 * A qcow2 image (version 3, qemu's docs/interop/qcow2.txt) written front to back in one pass:
 *
 *   cluster 0          header (104 bytes, then the end-of-extensions marker: zeros)
 *   L1 table           one entry per 512 MiB of the disk
 *   refcount table     one entry per refcount block
 *   refcount blocks    16-bit refcounts (refcount_order 4), one per host cluster: all 1
 *   L2 tables          only for L1 entries that cover data
 *   data clusters      only clusters that overlap a non-zero chunk, in guest order
 *
 * Which clusters hold data is known from the block map before anything is written, so every
 * offset is computed up front and nothing is ever rewritten (an object upload cannot seek back).
 * Clusters never stored read as zeros (no backing file), so the image is sparse. Every cluster has
 * refcount 1 and every L1/L2 entry has the COPIED flag, so `qemu-img check` finds no leaks or errors.
 */

export const QCOW2_CLUSTER_BITS = 16;
const C = 1 << QCOW2_CLUSTER_BITS;
const L2_ENTRIES = C / 8;
const REFCOUNTS_PER_BLOCK = C / 2;
const HEADER_LENGTH = 104;
const COPIED = 1n << 63n;
const READ_BYTES = 4 * 1024 * 1024;

export interface Qcow2Layout {
  size: number;
  /** Guest clusters. */
  clusters: number;
  /** Per guest cluster: 1 when it is stored. */
  allocated: Uint8Array;
  dataClusters: number;
  l1Entries: number;
  /** Per L1 entry: the host offset of its L2 table, or 0. */
  l2Offsets: number[];
  l1Offset: number;
  l1Clusters: number;
  refTableOffset: number;
  refTableClusters: number;
  refBlocksOffset: number;
  refBlocks: number;
  l2Offset: number;
  l2Tables: number;
  dataOffset: number;
  /** Host clusters, i.e. the file is hostClusters * 64 KiB long. */
  hostClusters: number;
}

export function qcow2Layout(src: ImageSource): Qcow2Layout {
  const clusters = Math.ceil(src.size / C);
  const allocated = new Uint8Array(clusters);
  let dataClusters = 0;
  for (let k = 0; k < clusters; k++) {
    if (!allZero(src, k * C, (k + 1) * C)) {
      allocated[k] = 1;
      dataClusters++;
    }
  }
  const l1Entries = Math.max(1, Math.ceil(clusters / L2_ENTRIES));
  const l1Clusters = Math.ceil((l1Entries * 8) / C);
  const withL2: boolean[] = [];
  let l2Tables = 0;
  for (let i = 0; i < l1Entries; i++) {
    const any = allocated.subarray(i * L2_ENTRIES, (i + 1) * L2_ENTRIES).includes(1);
    withL2.push(any);
    if (any) l2Tables++;
  }
  // Refcount blocks cover every host cluster, themselves and the refcount table included: iterate
  // to the fixed point (it moves at most once or twice).
  let refBlocks = 1;
  let refTableClusters = 1;
  for (;;) {
    const total = 1 + l1Clusters + refTableClusters + refBlocks + l2Tables + dataClusters;
    const blocks = Math.ceil(total / REFCOUNTS_PER_BLOCK);
    const tableClusters = Math.ceil((blocks * 8) / C);
    if (blocks <= refBlocks && tableClusters <= refTableClusters) break;
    refBlocks = Math.max(refBlocks, blocks);
    refTableClusters = Math.max(refTableClusters, tableClusters);
  }
  const l1Offset = C;
  const refTableOffset = l1Offset + l1Clusters * C;
  const refBlocksOffset = refTableOffset + refTableClusters * C;
  const l2Offset = refBlocksOffset + refBlocks * C;
  const dataOffset = l2Offset + l2Tables * C;
  const l2Offsets: number[] = [];
  let nextL2 = l2Offset;
  for (const any of withL2) {
    l2Offsets.push(any ? nextL2 : 0);
    if (any) nextL2 += C;
  }
  return {
    size: src.size,
    clusters,
    allocated,
    dataClusters,
    l1Entries,
    l2Offsets,
    l1Offset,
    l1Clusters,
    refTableOffset,
    refTableClusters,
    refBlocksOffset,
    refBlocks,
    l2Offset,
    l2Tables,
    dataOffset,
    hostClusters: dataOffset / C + dataClusters,
  };
}

/** The qcow2 image's length in bytes. */
export function qcow2ImageSize(src: ImageSource): number {
  return qcow2Layout(src).hostClusters * C;
}

export async function* qcow2Image(src: ImageSource): AsyncGenerator<Buffer> {
  const L = qcow2Layout(src);
  yield header(L);
  yield table(L.l1Clusters, L.l1Entries, (i) => (L.l2Offsets[i] ? BigInt(L.l2Offsets[i]) | COPIED : 0n));
  yield table(L.refTableClusters, L.refBlocks, (i) => BigInt(L.refBlocksOffset + i * C));
  for (let b = 0; b < L.refBlocks; b++) {
    const block = Buffer.alloc(C);
    const first = b * REFCOUNTS_PER_BLOCK;
    const n = Math.min(REFCOUNTS_PER_BLOCK, L.hostClusters - first);
    for (let j = 0; j < n; j++) block.writeUInt16BE(1, j * 2);
    yield block;
  }
  // L2 tables: the data clusters follow in guest order, so the host offset of guest cluster k is
  // dataOffset + (number of stored clusters before k) * C.
  let host = L.dataOffset;
  for (let i = 0; i < L.l1Entries; i++) {
    if (!L.l2Offsets[i]) continue;
    const l2 = Buffer.alloc(C);
    for (let j = 0; j < L2_ENTRIES; j++) {
      const k = i * L2_ENTRIES + j;
      if (k >= L.clusters) break;
      if (!L.allocated[k]) continue;
      l2.writeBigUInt64BE(BigInt(host) | COPIED, j * 8);
      host += C;
    }
    yield l2;
  }
  // Data: runs of stored clusters, read at most READ_BYTES at a time; the last cluster is padded.
  for (let k = 0; k < L.clusters; ) {
    if (!L.allocated[k]) {
      k++;
      continue;
    }
    let end = k + 1;
    while (end < L.clusters && L.allocated[end] && (end - k) * C < READ_BYTES) end++;
    const start = k * C;
    const length = Math.min(end * C, L.size) - start;
    yield await src.read(start, length);
    if (length < (end - k) * C) yield* zeroBytes((end - k) * C - length);
    k = end;
  }
}

function header(L: Qcow2Layout): Buffer {
  const h = Buffer.alloc(C);
  h.write('QFI\xfb', 0, 'latin1');
  h.writeUInt32BE(3, 4); // version
  h.writeBigUInt64BE(0n, 8); // backing_file_offset
  h.writeUInt32BE(0, 16); // backing_file_size
  h.writeUInt32BE(QCOW2_CLUSTER_BITS, 20);
  h.writeBigUInt64BE(BigInt(L.size), 24);
  h.writeUInt32BE(0, 32); // crypt_method
  h.writeUInt32BE(L.l1Entries, 36);
  h.writeBigUInt64BE(BigInt(L.l1Offset), 40);
  h.writeBigUInt64BE(BigInt(L.refTableOffset), 48);
  h.writeUInt32BE(L.refTableClusters, 56);
  h.writeUInt32BE(0, 60); // nb_snapshots
  h.writeBigUInt64BE(0n, 64); // snapshots_offset
  h.writeBigUInt64BE(0n, 72); // incompatible_features
  h.writeBigUInt64BE(0n, 80); // compatible_features
  h.writeBigUInt64BE(0n, 88); // autoclear_features
  h.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  h.writeUInt32BE(HEADER_LENGTH, 100);
  // Bytes 104..111 are zero: the end-of-header-extensions marker (type 0, length 0).
  return h;
}

/** `clusters` clusters holding `count` big-endian u64 entries. */
function table(clusters: number, count: number, entry: (i: number) => bigint): Buffer {
  const t = Buffer.alloc(clusters * C);
  for (let i = 0; i < count; i++) t.writeBigUInt64BE(entry(i), i * 8);
  return t;
}
