import { writeSync, writevSync } from 'node:fs';
import { CairnError } from '../errors.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import { cdcMasks, checkParams, cutPoint, gearTable } from './cdc.js';
import { ChunkHasher, ID_BYTES } from './crypto.js';
import type { WorkerInit, WorkerReply, WorkerRequest } from './worker-protocol.js';

/**
 * The CPU-heavy steps of backup and restore, for one thread: content-defined cutting (file data),
 * zero detection and hashing, then compression and encryption of the chunks the caller asks for
 * (backup); decryption, decompression and id checks (restore, verify). Backup data lives in shared
 * slots (worker-protocol.ts, BatchSlot) and never crosses a thread boundary. A worker thread
 * (chunk-worker.ts) runs one; the calling thread may run one too (worker-pool.ts, InlineFirstPool).
 */
export class ChunkWork {
  private readonly hasher: ChunkHasher;
  private readonly encoder: ChunkEncoder;
  private readonly decoder: ChunkDecoder;
  private readonly gear: Int32Array;
  private readonly writeLock: Int32Array;
  private slots: { input: Buffer; output: Buffer }[] = [];
  private jobBuffer = Buffer.alloc(0);
  /** A hashed or cut batch waiting for its 'encode': chunk i is data[starts[i], starts[i] + lengths[i]). */
  private readonly held = new Map<number, { slot: number; data: Buffer; starts: number[]; lengths: number[]; ids: Buffer }>();
  private zeros = Buffer.alloc(0);

  constructor(init: WorkerInit) {
    const encKey = Buffer.from(init.encryptionKey);
    const idKey = Buffer.from(init.chunkIdKey);
    this.hasher = new ChunkHasher(idKey);
    this.encoder = new ChunkEncoder(encKey, init.compressionLevel);
    this.decoder = new ChunkDecoder(encKey, idKey);
    this.gear = gearTable(idKey);
    this.writeLock = new Int32Array(init.writeLock);
  }

  private isZero(b: Buffer): boolean {
    if (this.zeros.length < b.length) this.zeros = Buffer.alloc(b.length);
    return b.equals(this.zeros.subarray(0, b.length));
  }

  /** Runs one request; `transfer` lists what a worker thread may move (not copy) with the reply. */
  handle(req: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } {
    const { hasher, encoder, decoder, gear, held } = this;
    switch (req.type) {
      case 'slots':
        this.slots = req.slots.map((s) => ({ input: Buffer.from(s.input), output: Buffer.from(s.output) }));
        return { reply: { type: 'ok' }, transfer: [] };
      case 'hash': {
        const data = this.slots[req.slot].input.subarray(0, req.length);
        const count = Math.ceil(req.length / req.chunkSize);
        const ids = Buffer.alloc(count * ID_BYTES);
        const starts: number[] = [];
        const lengths: number[] = [];
        for (let i = 0; i < count; i++) {
          const start = i * req.chunkSize;
          starts.push(start);
          lengths.push(Math.min(req.chunkSize, req.length - start));
          const chunk = data.subarray(start, start + lengths[i]);
          if (!this.isZero(chunk)) hasher.id(chunk).copy(ids, i * ID_BYTES);
        }
        held.set(req.batch, { slot: req.slot, data, starts, lengths, ids });
        const copy = new Uint8Array(ids).buffer;
        return { reply: { type: 'hashed', batch: req.batch, ids: copy }, transfer: [copy] };
      }
      case 'cut': {
        const input = this.slots[req.slot].input;
        checkParams(req.params);
        const { min, avg, max } = req.params;
        const { strict, loose } = cdcMasks(req.params);
        const starts: number[] = [];
        const lengths: number[] = [];
        const chunks: number[] = [];
        const consumed: number[] = [];
        let at = 0;
        for (const seg of req.segments) {
          const end = at + seg.length;
          if (end > input.length) throw new CairnError('INTERNAL', `cut segments pass the end of slot ${req.slot}`);
          let pos = at;
          let n = 0;
          while (pos < end) {
            const len = cutPoint(input, pos, end, min, avg, max, strict, loose, gear);
            if (!seg.final && len === end - pos && len < max) break;
            starts.push(pos);
            lengths.push(len);
            pos += len;
            n++;
          }
          chunks.push(n);
          consumed.push(pos - at);
          at = end;
        }
        const ids = Buffer.alloc(starts.length * ID_BYTES);
        for (let i = 0; i < starts.length; i++) {
          const chunk = input.subarray(starts[i], starts[i] + lengths[i]);
          if (!this.isZero(chunk)) hasher.id(chunk).copy(ids, i * ID_BYTES);
        }
        held.set(req.batch, { slot: req.slot, data: input, starts, lengths, ids });
        const copy = new Uint8Array(ids).buffer;
        return { reply: { type: 'chunked', batch: req.batch, ids: copy, lengths, chunks, consumed }, transfer: [copy] };
      }
      case 'encode': {
        const batch = held.get(req.batch);
        held.delete(req.batch);
        if (!batch) throw new CairnError('INTERNAL', `worker holds no batch ${req.batch}`);
        const out = this.slots[batch.slot].output;
        const items: number[] = [];
        let at = 0;
        for (const i of req.which) {
          const chunk = batch.data.subarray(batch.starts[i], batch.starts[i] + batch.lengths[i]);
          if (at + ChunkEncoder.bound(chunk.length) > out.length) {
            throw new CairnError('INTERNAL', `the output of slot ${batch.slot} (${out.length} bytes) is too small for the batch's blobs`);
          }
          const enc = encoder.encodeInto(batch.ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES), chunk, out, at);
          items.push(i, enc.codec, at, enc.length, chunk.length);
          at += enc.length;
        }
        return { reply: { type: 'encoded', batch: req.batch, items }, transfer: [] };
      }
      case 'decode': {
        const data = req.slot !== undefined ? this.slots[req.slot].input.subarray(0, req.length) : Buffer.from(req.data!);
        const ids = Buffer.from(req.ids);
        const errors: { index: number; message: string }[] = [];
        const writing = req.fd !== undefined || req.items.some((it) => it.fds !== undefined);
        // Decode the whole job into one buffer first, then write it under the pool's write lock:
        // concurrent writers to one file contend on its inode lock and burn CPU spinning.
        if (writing) {
          const need = req.items.reduce((s, it) => s + it.rawLength, 0) + 1;
          if (this.jobBuffer.length < need) this.jobBuffer = Buffer.allocUnsafeSlow(need);
        }
        const writes: Write[] = [];
        let at = 0;
        req.items.forEach((it, n) => {
          let plain: Buffer;
          try {
            plain = decoder.decode(
              ids.subarray(n * ID_BYTES, (n + 1) * ID_BYTES),
              data.subarray(it.offset, it.offset + it.length),
              it.codec,
              it.rawLength,
              req.where,
              writing ? this.jobBuffer.subarray(at) : undefined,
            );
          } catch (err) {
            errors.push({ index: n, message: (err as Error).message });
            return;
          }
          if (!writing) return;
          for (const p of it.positions ?? []) writes.push({ fd: req.fd!, position: p * req.chunkSize!, at, length: plain.length });
          const offsets = it.offsets ?? [];
          for (let k = 0; k < offsets.length; k++) {
            const fd = it.fds ? it.fds[k] : req.fd;
            if (fd === undefined) throw new CairnError('INTERNAL', 'a decode item has offsets but no file to write them to');
            writes.push({ fd, position: offsets[k], at, length: plain.length });
          }
          at += plain.length;
        });
        const bytesWritten = writing ? this.writeRuns(writes) : 0;
        return { reply: { type: 'decoded', job: req.job, bytesWritten, errors }, transfer: [] };
      }
    }
  }

  /**
   * Writes decoded chunks (views of jobBuffer) at their positions, holding the pool-wide write lock;
   * adjacent positions of one file go out in one pwritev.
   */
  private writeRuns(writes: Write[]): number {
    writes.sort((a, b) => a.fd - b.fd || a.position - b.position);
    let total = 0;
    this.lockWrites();
    try {
      for (let i = 0; i < writes.length; ) {
        const fd = writes[i].fd;
        const start = writes[i].position;
        const parts: Buffer[] = [];
        let end = start;
        while (i < writes.length && writes[i].fd === fd && writes[i].position === end && parts.length < 256) {
          parts.push(this.jobBuffer.subarray(writes[i].at, writes[i].at + writes[i].length));
          end += writes[i].length;
          i++;
        }
        const done = writevSync(fd, parts, start);
        // A short write is rare (signals, full disk): finish what pwritev left, part by part.
        let off = 0;
        for (const p of parts) {
          const skip = Math.min(Math.max(done - off, 0), p.length);
          if (skip < p.length) writeFullySync(fd, p.subarray(skip), start + off + skip);
          off += p.length;
        }
        total += end - start;
      }
    } finally {
      this.unlockWrites();
    }
    return total;
  }

  private lockWrites(): void {
    while (Atomics.compareExchange(this.writeLock, 0, 0, 1) !== 0) Atomics.wait(this.writeLock, 0, 1, 100);
  }

  private unlockWrites(): void {
    Atomics.store(this.writeLock, 0, 0);
    Atomics.notify(this.writeLock, 0, 1);
  }
}

interface Write {
  fd: number;
  position: number;
  at: number;
  length: number;
}

function writeFullySync(fd: number, data: Buffer, position: number): void {
  for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, position + done);
}
