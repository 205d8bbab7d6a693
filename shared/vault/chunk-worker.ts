import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import type { CairnError } from '../errors.js';
import { ChunkWork } from './chunk-work.js';
import type { WorkerInit, WorkerRequest } from './worker-protocol.js';

/** Worker thread for the CPU-heavy steps of backup and restore (chunk-work.ts), driven by worker-pool.ts. */

const work = new ChunkWork(workerData as WorkerInit);

// The worker runs a minor GC after each batch, so per-chunk buffers (cipher output) are freed at
// once instead of piling up to V8's external-memory limit in every thread (~60 MB each).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (opts: { type: 'minor' }) => void;

/** A scavenge: cheap (the young generation is small) and frees the batch's dead buffers. */
function collectYoung(): void {
  gc({ type: 'minor' });
}

parentPort!.on('message', (msg: { seq: number; req: WorkerRequest }) => {
  try {
    const out = work.handle(msg.req);
    parentPort!.postMessage({ seq: msg.seq, reply: out.reply }, out.transfer);
    if (msg.req.type === 'encode' || msg.req.type === 'decode') collectYoung();
  } catch (err) {
    const e = err as CairnError;
    parentPort!.postMessage({ seq: msg.seq, error: { code: e.code ?? 'INTERNAL', message: e.message } });
  }
});
