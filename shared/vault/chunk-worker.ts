import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { CairnError } from '../errors.js';
import { ChunkDecoder, ChunkEncoder } from './chunk-codec.js';
import { ChunkHasher, ID_BYTES } from './crypto.js';
import type { WorkerInit, WorkerReply, WorkerRequest } from './worker-protocol.js';

/**
 * Worker thread for the CPU-heavy steps: zero detection and hashing, then compression and
 * encryption of the chunks the main thread asks for (backup); decryption, decompression and id
 * checks (restore, verify). Backup batches stay here between the two steps, so data crosses the
 * thread boundary once each way.
 */

const init = workerData as WorkerInit;
const encKey = Buffer.from(init.encryptionKey);
const idKey = Buffer.from(init.chunkIdKey);
const hasher = new ChunkHasher(idKey);
const encoder = new ChunkEncoder(encKey, init.compressionLevel);
const decoder = new ChunkDecoder(encKey, idKey);
const spareOutputs: ArrayBuffer[] = [];
const held = new Map<number, { data: Buffer; chunkSize: number; ids: Buffer }>();
let zeros = Buffer.alloc(0);

function isZero(b: Buffer): boolean {
  if (zeros.length < b.length) zeros = Buffer.alloc(b.length);
  return b.equals(zeros.subarray(0, b.length));
}

function handle(req: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } | undefined {
  switch (req.type) {
    case 'hash': {
      const data = Buffer.from(req.data, 0, req.length);
      const count = Math.ceil(req.length / req.chunkSize);
      const ids = Buffer.alloc(count * ID_BYTES);
      for (let i = 0; i < count; i++) {
        const chunk = data.subarray(i * req.chunkSize, Math.min((i + 1) * req.chunkSize, req.length));
        if (!isZero(chunk)) hasher.id(chunk).copy(ids, i * ID_BYTES);
      }
      held.set(req.batch, { data, chunkSize: req.chunkSize, ids });
      const copy = new Uint8Array(ids).buffer;
      return { reply: { type: 'hashed', batch: req.batch, ids: copy }, transfer: [copy] };
    }
    case 'encode': {
      const batch = held.get(req.batch);
      held.delete(req.batch);
      if (!batch) throw new CairnError('INTERNAL', `worker holds no batch ${req.batch}`);
      const parts: Buffer[] = [];
      const items: number[] = [];
      let at = 0;
      for (const i of req.which) {
        const chunk = batch.data.subarray(i * batch.chunkSize, Math.min((i + 1) * batch.chunkSize, batch.data.length));
        const enc = encoder.encode(batch.ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES), chunk);
        items.push(i, enc.codec, at, enc.length, chunk.length);
        parts.push(...enc.parts);
        at += enc.length;
      }
      // An output buffer handed back by the main thread if one is large enough, else a new one
      // (allocUnsafeSlow: an ArrayBuffer of its own, never the shared pool, so it can be transferred).
      const reuse = spareOutputs.findIndex((b) => b.byteLength >= at);
      const blob = reuse >= 0 ? Buffer.from(spareOutputs.splice(reuse, 1)[0], 0, at) : Buffer.allocUnsafeSlow(Math.max(at, init.outputBytes));
      let w = 0;
      for (const p of parts) w += p.copy(blob, w);
      const ab = blob.buffer as ArrayBuffer;
      const data = batch.data.buffer as ArrayBuffer;
      return { reply: { type: 'encoded', batch: req.batch, blob: ab, items, data }, transfer: [ab, data] };
    }
    case 'decode': {
      const data = Buffer.from(req.data);
      const ids = Buffer.from(req.ids);
      const errors: { index: number; message: string }[] = [];
      let bytesWritten = 0;
      req.items.forEach((it, n) => {
        let plain: Buffer;
        try {
          plain = decoder.decode(
            ids.subarray(n * ID_BYTES, (n + 1) * ID_BYTES),
            data.subarray(it.offset, it.offset + it.length),
            it.codec,
            it.rawLength,
            req.where,
          );
        } catch (err) {
          errors.push({ index: n, message: (err as Error).message });
          return;
        }
        if (req.fd === undefined) return;
        for (const p of it.positions ?? []) {
          const at = p * req.chunkSize!;
          for (let done = 0; done < plain.length; ) done += writeSync(req.fd, plain, done, plain.length - done, at + done);
          bytesWritten += plain.length;
        }
      });
      return { reply: { type: 'decoded', job: req.job, bytesWritten, errors }, transfer: [] };
    }
    case 'recycle':
      spareOutputs.push(req.buffer);
      return undefined;
  }
}

parentPort!.on('message', (msg: { seq: number; req: WorkerRequest }) => {
  try {
    const out = handle(msg.req);
    if (out) parentPort!.postMessage({ seq: msg.seq, reply: out.reply }, out.transfer);
  } catch (err) {
    const e = err as CairnError;
    parentPort!.postMessage({ seq: msg.seq, error: { code: e.code ?? 'INTERNAL', message: e.message } });
  }
});
