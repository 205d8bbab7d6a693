/** Messages between the main thread and chunk workers (see chunk-worker.ts). */

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

export type WorkerRequest =
  /** Registers shared slots (sent to every worker before any 'hash', or 'decode' by slot). */
  | { type: 'slots'; slots: BatchSlot[] }
  | { type: 'hash'; batch: number; slot: number; length: number; chunkSize: number }
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
      items: { offset: number; length: number; codec: number; rawLength: number; positions?: number[] }[];
      /**
       * Where plaintext goes: with `fd`, each item is written (pwrite) at position * chunkSize of
       * that open file for each of its positions; without, chunks are only checked (verify).
       */
      fd?: number;
      chunkSize?: number;
    };

export type WorkerReply =
  | { type: 'ok' }
  /** ids: 32 bytes per chunk; all-zero for an all-zero chunk. */
  | { type: 'hashed'; batch: number; ids: ArrayBuffer }
  /** items: flat [chunkIndex, codec, offset, length, rawLength] per encoded chunk, offsets into the slot's output */
  | { type: 'encoded'; batch: number; items: number[] }
  /** bytesWritten: plaintext bytes written to fd; errors: items that failed their checks (not written) */
  | { type: 'decoded'; job: number; bytesWritten: number; errors: { index: number; message: string }[] };
