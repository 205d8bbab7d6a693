/** Messages between the main thread and chunk workers (see chunk-worker.ts). */

export interface WorkerInit {
  encryptionKey: Uint8Array;
  chunkIdKey: Uint8Array;
  compressionLevel: number;
  /** Size of new output buffers (at least one batch of encoded chunks), so recycled ones fit. */
  outputBytes: number;
}

export type WorkerRequest =
  | { type: 'hash'; batch: number; data: ArrayBuffer; length: number; chunkSize: number }
  | { type: 'encode'; batch: number; which: number[] }
  | {
      type: 'decode';
      job: number;
      where: string;
      data: ArrayBuffer;
      /** ids of the items, 32 bytes each, in item order */
      ids: ArrayBuffer;
      items: { offset: number; length: number; codec: number; rawLength: number; positions?: number[] }[];
      /**
       * Where plaintext goes: with `fd`, each item is written (pwrite) at position * chunkSize of
       * that open file for each of its positions; without, chunks are only checked (verify).
       */
      fd?: number;
      chunkSize?: number;
    }
  /** Gives an output buffer back to the worker for reuse; no reply. */
  | { type: 'recycle'; buffer: ArrayBuffer };

export type WorkerReply =
  /** ids: 32 bytes per chunk; all-zero for an all-zero chunk. */
  | { type: 'hashed'; batch: number; ids: ArrayBuffer }
  /**
   * items: flat [chunkIndex, codec, offset, length, rawLength] per encoded chunk, offsets into blob;
   * data: the batch's buffer handed back for reuse by the reader.
   */
  | { type: 'encoded'; batch: number; blob: ArrayBuffer; items: number[]; data: ArrayBuffer }
  /** bytesWritten: plaintext bytes written to fd; errors: items that failed their checks (not written) */
  | { type: 'decoded'; job: number; bytesWritten: number; errors: { index: number; message: string }[] };
