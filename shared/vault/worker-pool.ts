import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CairnError, type ErrorCode } from '../errors.js';
import { embeddedRuntime } from '../runtime/embedded.js';
import type { MasterKey } from './crypto.js';
import type { WorkerInit, WorkerReply, WorkerRequest } from './worker-protocol.js';

function workerScript(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return join(dirname(here), 'chunk-worker.js');
  // Running from TypeScript sources (tests): use the compiled worker.
  const compiled = resolve(dirname(here), '../../dist/shared/vault/chunk-worker.js');
  if (!existsSync(compiled)) throw new CairnError('INTERNAL', `run 'npm run build' first: ${compiled} is missing`);
  return compiled;
}

/** One worker per core (at most 8), or CAIRN_WORKERS. */
export function defaultWorkers(): number {
  const env = Number(process.env.CAIRN_WORKERS);
  if (Number.isInteger(env) && env >= 1 && env <= 64) return env;
  return Math.max(1, Math.min(cpus().length, 8));
}

interface Slot {
  worker: Worker;
  busy: number;
  pending: Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }>;
}

/**
 * A fixed set of chunk workers. Requests may name a worker (a backup batch must be encoded by the
 * worker that hashed it) or go to the least busy one. Replies resolve in any order.
 */
export class WorkerPool {
  private readonly slots: Slot[] = [];
  private seq = 0;

  constructor(key: MasterKey, compressionLevel: number, size = defaultWorkers()) {
    const init: WorkerInit = {
      encryptionKey: key.encryption,
      chunkIdKey: key.chunkId,
      compressionLevel,
      writeLock: new SharedArrayBuffer(4),
    };
    const embedded = embeddedRuntime();
    const script = embedded ? embedded.workerSource('chunk-worker') : workerScript();
    for (let i = 0; i < size; i++) {
      const worker = new Worker(script, { workerData: init, eval: embedded !== undefined });
      const slot: Slot = { worker, busy: 0, pending: new Map() };
      worker.on('message', (msg: { seq: number; reply?: WorkerReply; error?: { code: ErrorCode; message: string } }) => {
        const p = slot.pending.get(msg.seq);
        if (!p) return;
        slot.pending.delete(msg.seq);
        slot.busy--;
        if (msg.error) p.reject(new CairnError(msg.error.code, msg.error.message));
        else p.resolve(msg.reply!);
      });
      worker.on('error', (err) => {
        for (const p of slot.pending.values()) p.reject(new CairnError('INTERNAL', `chunk worker failed: ${err.message}`));
        slot.pending.clear();
      });
      this.slots.push(slot);
    }
  }

  get size(): number {
    return this.slots.length;
  }

  leastBusy(): number {
    let best = 0;
    for (let i = 1; i < this.slots.length; i++) if (this.slots[i].busy < this.slots[best].busy) best = i;
    return best;
  }

  call(workerIndex: number, req: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerReply> {
    const slot = this.slots[workerIndex];
    const seq = ++this.seq;
    slot.busy++;
    return new Promise((resolve, reject) => {
      slot.pending.set(seq, { resolve, reject });
      slot.worker.postMessage({ seq, req }, transfer);
    });
  }

  /** Sends the same request to every worker and waits for all. */
  async broadcast(req: WorkerRequest): Promise<void> {
    await Promise.all(this.slots.map((_, i) => this.call(i, req)));
  }

  async close(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
