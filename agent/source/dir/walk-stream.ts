import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CairnError, type ErrorCode } from '../../../shared/errors.js';
import { embeddedRuntime } from '../../../shared/runtime/embedded.js';
import { WalkBatchView, type WalkBatch, type WalkWorkerInit } from './walk-protocol.js';
import type { WalkEntry } from './walker.js';

/**
 * Entries per batch, and batches the worker may run ahead of the reader: 64k entries (about 10 MiB
 * at typical path lengths), so the walk keeps going while the reader waits for the vault's key
 * (scrypt, over half a second) and the index, instead of stalling a few thousand entries in.
 */
const BATCH_ENTRIES = 512;
const CREDITS = 128;

function workerScript(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return join(dirname(here), 'walk-worker.js');
  // Running from TypeScript sources (tests): use the compiled worker.
  const compiled = resolve(dirname(here), '../../../dist/agent/source/dir/walk-worker.js');
  if (!existsSync(compiled)) throw new CairnError('INTERNAL', `run 'npm run build' first: ${compiled} is missing`);
  return compiled;
}

type Message = { batch: WalkBatch } | { done: true } | { error: { code: ErrorCode; message: string } } | { exit: true };

/**
 * walkTree (walker.ts) in a worker thread: the same entries in the same order, read with
 * `for await`. Root errors (missing, not a folder) surface from `first()`, before the caller takes
 * any lock; `batches()` gives the same entries a batch at a time. close() stops the worker; call
 * it when done or on failure.
 */
export class WalkStream implements AsyncIterable<WalkEntry> {
  private readonly worker: Worker;
  private readonly credits = new Int32Array(new SharedArrayBuffer(8));
  private readonly root: Buffer;
  private readonly messages: Message[] = [];
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  private closed = false;

  /** `batchEntries` and `credits` are for tests; the defaults suit any tree. */
  constructor(root: string, opts: { excludes: string[]; crossFileSystems?: boolean; batchEntries?: number; credits?: number }) {
    const abs = resolve(root);
    this.root = Buffer.from(abs);
    this.credits[0] = opts.credits ?? CREDITS;
    const init: WalkWorkerInit = {
      root: abs,
      excludes: opts.excludes,
      crossFileSystems: opts.crossFileSystems ?? false,
      batchEntries: opts.batchEntries ?? BATCH_ENTRIES,
      credits: this.credits.buffer as SharedArrayBuffer,
    };
    const embedded = embeddedRuntime();
    const script = embedded ? embedded.workerSource('walk-worker') : workerScript();
    this.worker = new Worker(script, { workerData: init, eval: embedded !== undefined });
    this.worker.on('message', (m: Message) => this.push(m));
    this.worker.on('error', (err) => {
      this.failure ??= new CairnError('INTERNAL', `the walk failed: ${err.message}`);
    });
    this.worker.on('exit', () => this.push({ exit: true }));
  }

  private push(m: Message): void {
    this.messages.push(m);
    this.wake?.();
  }

  private async next(): Promise<Message> {
    while (this.messages.length === 0) await new Promise<void>((r) => (this.wake = r));
    this.wake = undefined;
    return this.messages.shift()!;
  }

  private buffered: WalkBatchView | undefined;

  /** Waits for the walk's first entries; throws what the walk threw on its root. */
  async first(): Promise<void> {
    this.buffered = await this.nextBatch();
  }

  /** The next batch, or undefined at the end; rethrows the walk's error. */
  private async nextBatch(): Promise<WalkBatchView | undefined> {
    // Never an end: a walk closed early must not pass for the whole tree.
    if (this.closed) throw new CairnError('INTERNAL', 'the walk was closed before its end');
    const m = await this.next();
    if ('batch' in m) {
      Atomics.add(this.credits, 0, 1);
      Atomics.notify(this.credits, 0);
      return new WalkBatchView(m.batch, this.root);
    }
    // Put an end back, so every later call sees it too.
    this.messages.unshift(m);
    if ('error' in m) throw new CairnError(m.error.code, m.error.message);
    if ('done' in m) return undefined;
    // The worker ended without saying the walk was done: never take that for the whole tree.
    throw this.failure ?? new CairnError('INTERNAL', 'the walk stopped before its end');
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WalkEntry> {
    for await (const batch of this.batches()) yield* batch;
  }

  /** The entries a batch at a time (one await per batch, not per entry), in the same order. */
  async *batches(): AsyncIterable<WalkEntry[]> {
    for await (const view of this.views()) yield view.entries();
  }

  /** The batches as they came (WalkBatchView: no object per entry until asked for), never empty. */
  async *views(): AsyncIterable<WalkBatchView> {
    for (;;) {
      const batch = this.buffered ?? (await this.nextBatch());
      this.buffered = undefined;
      if (!batch) return;
      if (batch.length) yield batch;
    }
  }

  /** Stops the worker (waking it if it waits for credits). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.credits, 1, 1);
    Atomics.add(this.credits, 0, 1 << 20);
    Atomics.notify(this.credits, 0);
    await this.worker.terminate();
  }
}
