/**
 * What an image writer needs from a disk: its size, which chunk positions are all zeros (known up
 * front from the block map, so a layout can be computed before any data is written), and its bytes
 * read in disk order. Writers never ask for the bytes of a zero chunk.
 */
export interface ImageSource {
  /** Bytes. */
  readonly size: number;
  /** Bytes per position of `isZero`; position i covers [i*chunkSize, min((i+1)*chunkSize, size)). */
  readonly chunkSize: number;
  isZero(position: number): boolean;
  /** Exactly `length` bytes at `offset`; writers call it with ascending offsets. */
  read(offset: number, length: number): Promise<Buffer>;
}

/** An image format: a producer of the image's bytes in file order, ending with the last byte. */
export type ImageFormat = 'raw' | 'qcow2' | 'vmdk';

export const imageFormats: readonly ImageFormat[] = ['raw', 'qcow2', 'vmdk'];

/** True when every chunk position overlapping [start, end) is a zero chunk. */
export function allZero(src: ImageSource, start: number, end: number): boolean {
  const last = Math.floor((Math.min(end, src.size) - 1) / src.chunkSize);
  for (let p = Math.floor(start / src.chunkSize); p <= last; p++) if (!src.isZero(p)) return false;
  return true;
}

/** A buffer of zeros shared by the writers (never written to). */
export const ZEROS = Buffer.alloc(1024 * 1024);

/** `n` zero bytes as slices of ZEROS. */
export function* zeroBytes(n: number): Generator<Buffer> {
  for (let left = n; left > 0; left -= ZEROS.length) yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
}
