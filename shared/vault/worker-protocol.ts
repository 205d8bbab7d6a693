/** Messages between the main thread and chunk workers (see chunk-worker.ts). */

export interface WorkerInit {
  encryptionKey: Uint8Array;
  chunkIdKey: Uint8Array;
  compressionLevel: number;
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
      items: { offset: number; length: number; codec: number; rawLength: number }[];
    };

export type WorkerReply =
  /** ids: 32 bytes per chunk; all-zero for an all-zero chunk. */
  | { type: 'hashed'; batch: number; ids: ArrayBuffer }
  /** items: flat [chunkIndex, codec, offset, length, rawLength] per encoded chunk, offsets into blob */
  | { type: 'encoded'; batch: number; blob: ArrayBuffer; items: number[] }
  /** plain: decoded chunks back to back in item order; failed items are left as garbage and listed */
  | { type: 'decoded'; job: number; plain: ArrayBuffer; errors: { index: number; message: string }[] };
