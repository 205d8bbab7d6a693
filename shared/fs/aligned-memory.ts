/**
 * Memory a local store may write with O_DIRECT: straight from memory to the device, without
 * copying every byte into the page cache first. On this kind of machine that copy (a fresh page
 * cache page per 4 KiB, then writeback) costs more CPU than compressing the data: about 3 s of
 * system time per 1.6 GB, against 0.25 s direct.
 *
 * O_DIRECT needs the memory, the file offset and the length aligned to the device's logical block
 * (4096 bytes covers the usual 512 and 4096). JavaScript cannot see an address, so the alignment
 * comes from where the memory is made: a WebAssembly.Memory is mapped whole pages at a time.
 */

/** Alignment of the memory, offsets and lengths of direct writes. */
export const DIRECT_ALIGN = 4096;

const WASM_PAGE = 64 * 1024;
const aligned = new WeakSet<ArrayBufferLike>();

/**
 * A buffer of `size` bytes whose first byte is page-aligned (isDirectWritable), zero-filled; or,
 * where the runtime will not make another WebAssembly memory (each reserves address space, which a
 * limit such as `ulimit -v` may refuse), an ordinary uninitialised one, written as usual.
 */
export function alignedBuffer(size: number): Buffer {
  let memory: WebAssembly.Memory;
  try {
    memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(size / WASM_PAGE)) });
  } catch {
    return Buffer.allocUnsafeSlow(size);
  }
  aligned.add(memory.buffer);
  return Buffer.from(memory.buffer, 0, size);
}

/** Whether `b` starts at an aligned address: a view, at an aligned offset, of an alignedBuffer. */
export function isDirectWritable(b: Buffer): boolean {
  return aligned.has(b.buffer) && b.byteOffset % DIRECT_ALIGN === 0;
}

/** Bytes written with O_DIRECT so far in this process (tests check which way a put went). */
export const directWrites = { bytes: 0 };
