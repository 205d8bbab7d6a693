import type { ByteRange } from '../source/block-source.js';

/** Chunk positions [first, end) to read, in order. */
export interface ChunkRun {
  first: number;
  end: number;
}

/**
 * The chunks a read plan touches: every chunk that overlaps a range, adjacent and overlapping
 * chunks joined into runs. Ranges must be sorted; they are clipped to the disk. Undefined ranges
 * mean the whole disk.
 */
export function chunkRuns(ranges: readonly ByteRange[] | undefined, chunkSize: number, diskSize: number): ChunkRun[] {
  const count = Math.ceil(diskSize / chunkSize);
  if (ranges === undefined) return count > 0 ? [{ first: 0, end: count }] : [];
  const runs: ChunkRun[] = [];
  for (const r of ranges) {
    const start = Math.max(0, r.offset);
    const stop = Math.min(diskSize, r.offset + r.length);
    if (stop <= start) continue;
    const first = Math.floor(start / chunkSize);
    const end = Math.ceil(stop / chunkSize);
    const last = runs[runs.length - 1];
    if (last && first <= last.end) last.end = Math.max(last.end, end);
    else runs.push({ first, end });
  }
  return runs;
}

/** Bytes of the disk the runs cover (the last chunk may be short). */
export function runBytes(runs: readonly ChunkRun[], chunkSize: number, diskSize: number): number {
  let total = 0;
  for (const r of runs) total += Math.min(r.end * chunkSize, diskSize) - r.first * chunkSize;
  return total;
}
