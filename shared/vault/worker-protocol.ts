/** Messages between the main thread and chunk workers (see chunk-worker.ts). */

import type { CdcParams } from './cdc.js';
import { SEAL_OVERHEAD } from './crypto.js';

export interface WorkerInit {
  encryptionKey: Uint8Array;
  chunkIdKey: Uint8Array;
  compressionLevel: number;
  /** One Int32 shared by the pool: held while a worker writes restored data to a file. */
  writeLock: SharedArrayBuffer;
}

/**
 * A backup batch slot: memory shared by the main thread and all workers, so batches never cross
 * threads by copy or transfer (which, at gigabytes, keeps the garbage collector busy). The main
 * thread reads source data into `input`; a worker writes the sealed blobs of the chunks the vault
 * lacks into `output`; the main thread copies them into packs, then reuses the slot.
 */
export interface BatchSlot {
  input: SharedArrayBuffer;
  output: SharedArrayBuffer;
}

/**
 * One file's bytes in a 'cut' slot. Segments lie end to end in the slot's input from byte 0, in
 * request order. A segment starts at a chunk boundary of its file: the file's start, or the first
 * byte the previous 'cut' of that file did not consume.
 */
export interface CutSegment {
  length: number;
  /** The segment ends where the file ends: its tail is the file's last chunk, everything is consumed. */
  final: boolean;
}

/**
 * Output bytes a slot needs for 'encode' after 'cut' or 'hash': every chunk may be stored raw (a blob
 * is at most its plaintext + SEAL_OVERHEAD), and a 'cut' slot holds at most one short chunk per
 * segment plus one chunk per `min` bytes.
 */
export function cutOutputBytes(inputBytes: number, maxSegments: number, params: CdcParams): number {
  return inputBytes + (maxSegments + Math.ceil(inputBytes / params.min) + 1) * SEAL_OVERHEAD;
}

export type WorkerRequest =
  /** Registers shared slots (sent to every worker before any 'hash', 'cut', or 'decode' by slot). */
  | { type: 'slots'; slots: BatchSlot[] }
  /** Fixed-size chunks of a disk batch: chunk i is bytes [i*chunkSize, min((i+1)*chunkSize, length)). */
  | { type: 'hash'; batch: number; slot: number; length: number; chunkSize: number }
  /**
   * Content-defined chunks of file data (cdc.ts), cut and hashed in one step. How a caller uses it:
   * 1. Read file data into the slot's input: segments end to end from byte 0 (several small files
   *    may share a slot, each its own segment; a large file takes several requests, in file order).
   * 2. Send 'cut' with the segments and the vault's CdcParams (config.ts, `cdcParams`). The worker
   *    cuts each segment on its own (cdc.ts `cut`, `final` as given) and hashes every chunk with the
   *    vault's keyed BLAKE3 (the same ids as disk chunks); all-zero chunks get ZERO_ID.
   * 3. The reply 'chunked' gives, in slot order, every chunk's `lengths` and `ids` (32 bytes each),
   *    per segment how many of those chunks are its own (`chunks`) and how many of its bytes they
   *    cover (`consumed`). A non-final segment may leave a tail (length - consumed < max): the caller
   *    passes those bytes again at the start of the file's next segment (copy them out of the slot,
   *    or read the file again from that offset). A final segment is always consumed whole. Chunk k of
   *    the batch is bytes [sum of lengths[0..k), + lengths[k]) of the input, skipping unconsumed tails.
   * 4. Always follow with 'encode' on the same worker (`which`: the batch's chunk indexes the vault
   *    lacks, possibly none); the slot may be reused once 'encoded' arrives. Output must hold
   *    cutOutputBytes(input size, segments per slot, params).
   * A file's next segment can only be read once its previous 'cut' has replied (it starts where
   * that one stopped), so large files go at one slot at a time each; keep several files in flight.
   */
  | { type: 'cut'; batch: number; slot: number; segments: CutSegment[]; params: CdcParams }
  /** Compresses and seals chunks of the batch this worker last hashed or cut under `batch`, into its slot's output. */
  | { type: 'encode'; batch: number; which: number[] }
  | {
      type: 'decode';
      job: number;
      where: string;
      /** The blobs: the first `length` bytes of a registered slot's input, or a transferred buffer. */
      slot?: number;
      length?: number;
      data?: ArrayBuffer;
      /** ids of the items, 32 bytes each, in item order */
      ids: ArrayBuffer;
      items: DecodeItem[];
      /**
       * Where plaintext goes: with `fd`, each item is written (pwrite) at position * chunkSize of
       * that open file for each of its positions, or at each of its byte `offsets`; without `fd`
       * (and without item `fds`), chunks are only checked (verify).
       */
      fd?: number;
      chunkSize?: number;
    };

/**
 * One blob of a decode job: `offset`/`length` in the job's data, its codec and plaintext length
 * (from the index). Each item is decoded and checked once, then written at every place it is asked
 * for: `positions` (disk restores: position * chunkSize of `fd`), or `offsets` (file restores: byte
 * offsets, in file `fds[k]` for offsets[k] when `fds` is given, else in the request's `fd`). Writes
 * of one job happen under the pool's write lock, adjacent ones of one file in one pwritev.
 */
export interface DecodeItem {
  offset: number;
  length: number;
  codec: number;
  rawLength: number;
  positions?: number[];
  offsets?: number[];
  /** Parallel to `offsets`: the open file each offset is in (several files from one pack read). */
  fds?: number[];
}

export type WorkerReply =
  | { type: 'ok' }
  /** ids: 32 bytes per chunk; all-zero for an all-zero chunk. */
  | { type: 'hashed'; batch: number; ids: ArrayBuffer }
  /**
   * Reply to 'cut': `ids` 32 bytes per chunk (ZERO_ID for an all-zero chunk) and `lengths` per
   * chunk, in slot order; per segment, `chunks` (how many of them are its) and `consumed` (bytes).
   */
  | { type: 'chunked'; batch: number; ids: ArrayBuffer; lengths: number[]; chunks: number[]; consumed: number[] }
  /** items: flat [chunkIndex, codec, offset, length, rawLength] per encoded chunk, offsets into the slot's output */
  | { type: 'encoded'; batch: number; items: number[] }
  /** bytesWritten: plaintext bytes written to fd; errors: items that failed their checks (not written) */
  | { type: 'decoded'; job: number; bytesWritten: number; errors: { index: number; message: string }[] };
