import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CairnError, type ErrorCode } from '../errors.js';
import { embeddedRuntime } from '../runtime/embedded.js';
import { ChunkWork } from './chunk-work.js';
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

/** What a ChunkWork needs, in a thread or not: the keys, the level, a write lock of its own. */
function workerInit(key: MasterKey, compressionLevel: number): WorkerInit {
  return { encryptionKey: key.encryption, chunkIdKey: key.chunkId, compressionLevel, writeLock: new SharedArrayBuffer(4) };
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
    const init = workerInit(key, compressionLevel);
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

/**
 * Backup chunk work that starts on the calling thread and moves to worker threads on demand: until
 * grow() is called, every request runs here (ChunkWork, synchronously, answered on the next
 * microtask); after it, new requests go to a WorkerPool of `size` threads. Starting a worker costs
 * a few hundred ms of CPU (an isolate and the modules), more than an incremental backup that reads
 * a few changed files spends on their data. Worker 0 is this thread: an 'encode' goes to the
 * worker that cut its batch, whatever grow() did in between. The last 'slots' request is sent to
 * the threads when they start.
 */
export class InlineFirstPool {
  private readonly inline: ChunkWork;
  private threads: WorkerPool | undefined;
  private slotsRequest: WorkerRequest | undefined;
  /** A failure of the threads' 'slots' request, thrown by the next call. */
  private failure: unknown;
  private closed = false;

  constructor(
    private readonly key: MasterKey,
    private readonly compressionLevel: number,
    /** Worker threads once grown. */
    readonly size = defaultWorkers(),
  ) {
    this.inline = new ChunkWork(workerInit(key, compressionLevel));
  }

  /** Whether the worker threads run. */
  get grown(): boolean {
    return this.threads !== undefined;
  }

  /** Starts the worker threads (once); later requests go to them. */
  grow(): void {
    if (this.threads || this.closed) return;
    this.threads = new WorkerPool(this.key, this.compressionLevel, this.size);
    if (this.slotsRequest) {
      this.threads.broadcast(this.slotsRequest).catch((err: unknown) => (this.failure ??= err));
    }
  }

  /** This thread (0) until grown, then the least busy worker thread (1 and up). */
  leastBusy(): number {
    return this.threads ? 1 + this.threads.leastBusy() : 0;
  }

  /** After close, every call fails (INTERNAL): work queued before a failure does not go on. */
  call(worker: number, req: WorkerRequest): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new CairnError('INTERNAL', 'chunk work was asked for after the pool closed'));
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (worker > 0) return this.threads!.call(worker - 1, req);
    // As a worker thread reports it: a CairnError keeps its code, anything else is INTERNAL.
    return Promise.resolve().then(() => {
      try {
        return this.inline.handle(req).reply;
      } catch (err) {
        if (err instanceof CairnError) throw err;
        throw new CairnError('INTERNAL', `chunk work failed: ${(err as Error).message}`, { cause: err });
      }
    });
  }

  /** Sends the request to this thread and, when grown, to every worker thread; waits for all. */
  async broadcast(req: WorkerRequest): Promise<void> {
    if (req.type === 'slots') this.slotsRequest = req;
    this.inline.handle(req);
    if (this.threads) await this.threads.broadcast(req);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.threads?.close();
  }
}
