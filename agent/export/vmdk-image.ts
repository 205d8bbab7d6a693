import { randomBytes } from 'node:crypto';
import { deflate, constants as zlibConstants } from 'node:zlib';
import { promisify } from 'node:util';
import { allZero, ZEROS, type ImageSource } from './image-source.js';

const deflateAsync = promisify(deflate);

/**
 * A monolithic streamOptimized VMDK (VMware "Virtual Disk Format 1.1", "Stream-Optimized
 * Compressed Sparse Extents"; qemu's block/vmdk.c reads it the same way), written front to back:
 *
 *   sector 0              SparseExtentHeader, gdOffset = GD_AT_END (the footer has the real one)
 *   sectors 1..           the text descriptor, then zeros up to overHead (128 sectors = 64 KiB)
 *   per grain table       for each stored grain: grain marker (u64 lba, u32 size) + zlib-deflated
 *   (512 grains, 32 MiB)  grain, padded to a sector; then a grain-table marker and the table
 *   grain directory       a grain-directory marker and the directory
 *   footer                a footer marker and the header again, with the real gdOffset
 *   end of stream         a marker of all zeros
 *
 * Grains are 64 KiB (grainSize 128 sectors). Grains that are all zeros — every one in a zero chunk,
 * and any all-zero grain inside a data chunk — are not stored (table entry 0: reads as zeros), and a
 * grain table with no stored grain is not written (directory entry 0). Table and directory entries
 * are sector offsets: of the grain's marker, of the table's first sector. Compression is zlib format
 * (RFC 1950) as both VMware and qemu (`uncompress`) expect, at level 1: a few per cent larger than
 * level 6 and several times faster. Grains are compressed on libuv's thread pool, a few at a time,
 * and emitted in order.
 */

const SECTOR = 512;
const GRAIN_SECTORS = 128;
const GRAIN = GRAIN_SECTORS * SECTOR;
const GTES_PER_GT = 512;
const GT_SECTORS = (GTES_PER_GT * 4) / SECTOR;
const OVERHEAD_SECTORS = 128;
const MARKER_EOS = 0;
const MARKER_GT = 1;
const MARKER_GD = 2;
const MARKER_FOOTER = 3;
const FLAG_NL_DETECT = 1 << 0;
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const GD_AT_END = 0xffffffffffffffffn;
/** Grains read from the disk at once, and compressed concurrently. */
const BATCH_GRAINS = 32;

export async function* vmdkImage(src: ImageSource, opts: { name?: string } = {}): AsyncGenerator<Buffer> {
  const capacity = Math.ceil(src.size / SECTOR);
  const grains = Math.ceil(capacity / GRAIN_SECTORS);
  const tables = Math.ceil(grains / GTES_PER_GT);
  const gdSectors = Math.ceil((tables * 4) / SECTOR);
  const descriptor = descriptorText(capacity, opts.name ?? 'disk.vmdk');
  const descSectors = Math.ceil(descriptor.length / SECTOR);
  if (1 + descSectors > OVERHEAD_SECTORS) throw new Error('VMDK descriptor too long');
  const fields = { capacity, descSectors };

  const head = Buffer.alloc(OVERHEAD_SECTORS * SECTOR);
  sparseHeader(fields, GD_AT_END).copy(head, 0);
  descriptor.copy(head, SECTOR);
  yield head;
  let sector = OVERHEAD_SECTORS;

  const directory = Buffer.alloc(gdSectors * SECTOR);
  for (let t = 0; t < tables; t++) {
    const table = Buffer.alloc(GT_SECTORS * SECTOR);
    let stored = 0;
    const first = t * GTES_PER_GT;
    const last = Math.min(grains, first + GTES_PER_GT);
    for (let g = first; g < last; ) {
      if (allZero(src, g * GRAIN, (g + 1) * GRAIN)) {
        g++;
        continue;
      }
      // A batch of consecutive grains that may hold data: read once, compress concurrently.
      let end = g + 1;
      while (end < last && end - g < BATCH_GRAINS && !allZero(src, end * GRAIN, (end + 1) * GRAIN)) end++;
      const start = g * GRAIN;
      const data = await src.read(start, Math.min(end * GRAIN, src.size) - start);
      const pending: { grain: number; body: Promise<Buffer> | undefined }[] = [];
      for (let k = g; k < end; k++) {
        const raw = data.subarray((k - g) * GRAIN, Math.min((k - g + 1) * GRAIN, data.length));
        pending.push({ grain: k, body: isZeroBuffer(raw) ? undefined : deflateAsync(sectorPadded(raw), { level: zlibConstants.Z_BEST_SPEED }) });
      }
      for (const { grain, body } of pending) {
        const z = await body;
        if (!z) continue;
        const marked = Buffer.alloc(Math.ceil((12 + z.length) / SECTOR) * SECTOR);
        marked.writeBigUInt64LE(BigInt(grain * GRAIN_SECTORS), 0);
        marked.writeUInt32LE(z.length, 8);
        z.copy(marked, 12);
        table.writeUInt32LE(sector, (grain - first) * 4);
        stored++;
        sector += marked.length / SECTOR;
        yield marked;
      }
      g = end;
    }
    if (stored === 0) continue;
    yield marker(GT_SECTORS, MARKER_GT);
    sector += 1;
    directory.writeUInt32LE(sector, t * 4);
    yield table;
    sector += GT_SECTORS;
  }
  yield marker(gdSectors, MARKER_GD);
  sector += 1;
  const gdOffset = sector;
  yield directory;
  sector += gdSectors;
  yield marker(1, MARKER_FOOTER);
  yield sparseHeader(fields, BigInt(gdOffset));
  yield marker(0, MARKER_EOS);
}

function sparseHeader(f: { capacity: number; descSectors: number }, gdOffset: bigint): Buffer {
  const h = Buffer.alloc(SECTOR);
  h.write('KDMV', 0, 'latin1'); // magicNumber 0x564d444b, little-endian
  h.writeUInt32LE(3, 4); // version: streamOptimized
  h.writeUInt32LE(FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS, 8);
  h.writeBigUInt64LE(BigInt(f.capacity), 12);
  h.writeBigUInt64LE(BigInt(GRAIN_SECTORS), 20);
  h.writeBigUInt64LE(1n, 28); // descriptorOffset
  h.writeBigUInt64LE(BigInt(f.descSectors), 36);
  h.writeUInt32LE(GTES_PER_GT, 44);
  h.writeBigUInt64LE(0n, 48); // rgdOffset: no redundant directory
  h.writeBigUInt64LE(gdOffset, 56);
  h.writeBigUInt64LE(BigInt(OVERHEAD_SECTORS), 64);
  h.writeUInt8(0, 72); // uncleanShutdown
  h.write('\n \r\n', 73, 'latin1'); // line-ending check characters
  h.writeUInt16LE(1, 77); // compressAlgorithm: deflate
  return h;
}

/** A marker sector: u64 value (sectors of metadata that follow), u32 size 0, u32 type. */
function marker(value: number, type: number): Buffer {
  const m = Buffer.alloc(SECTOR);
  m.writeBigUInt64LE(BigInt(value), 0);
  m.writeUInt32LE(0, 8);
  m.writeUInt32LE(type, 12);
  return m;
}

function descriptorText(capacity: number, name: string): Buffer {
  // Geometry as qemu and VMware derive it for IDE: 16 heads, 63 sectors per track.
  const cylinders = Math.min(16383, Math.floor(capacity / (16 * 63)));
  const cid = randomBytes(4).toString('hex');
  const safeName = name.replace(/["\n\r]/g, '_');
  const text =
    '# Disk DescriptorFile\n' +
    'version=1\n' +
    `CID=${cid}\n` +
    'parentCID=ffffffff\n' +
    'createType="streamOptimized"\n' +
    '\n' +
    '# Extent description\n' +
    `RW ${capacity} SPARSE "${safeName}"\n` +
    '\n' +
    '# The Disk Data Base\n' +
    '#DDB\n' +
    '\n' +
    'ddb.virtualHWVersion = "4"\n' +
    `ddb.geometry.cylinders = "${cylinders}"\n` +
    'ddb.geometry.heads = "16"\n' +
    'ddb.geometry.sectors = "63"\n' +
    'ddb.adapterType = "ide"\n';
  return Buffer.from(text, 'latin1');
}

function isZeroBuffer(b: Buffer): boolean {
  for (let at = 0; at < b.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - at);
    if (!b.subarray(at, at + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** The last grain of a disk whose size is not a multiple of 512 is padded to a whole sector. */
function sectorPadded(raw: Buffer): Buffer {
  if (raw.length % SECTOR === 0) return raw;
  const out = Buffer.alloc(Math.ceil(raw.length / SECTOR) * SECTOR);
  raw.copy(out);
  return out;
}
