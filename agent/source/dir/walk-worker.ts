import { parentPort, workerData } from 'node:worker_threads';
import { CairnError } from '../../../shared/errors.js';
import { ExcludeMatcher } from './exclude.js';
import { encodeWalkBatch, type WalkWorkerInit } from './walk-protocol.js';
import { walkTree, type WalkEntry } from './walker.js';

/**
 * Worker thread of a file-system backup's walk (walk-stream.ts): runs walkTree and posts its
 * entries in batches, so the lstat and readdir calls of a large tree run beside the main thread's
 * merge with the parent tree and its writing of the new one. At most `credits` batches are in
 * flight: the walk waits (Atomics.wait) until the main thread has taken one.
 */

const init = workerData as WalkWorkerInit;
const credits = new Int32Array(init.credits);

function post(entries: WalkEntry[]): void {
  for (let c = Atomics.load(credits, 0); c <= 0; c = Atomics.load(credits, 0)) Atomics.wait(credits, 0, c);
  if (Atomics.load(credits, 1) === 1) process.exit(0); // the reader closed: stop walking
  Atomics.sub(credits, 0, 1);
  const { batch, transfer } = encodeWalkBatch(entries);
  parentPort!.postMessage({ batch }, transfer);
}

try {
  const walk = walkTree(init.root, { excludes: ExcludeMatcher.compile(init.excludes), crossFileSystems: init.crossFileSystems });
  let entries: WalkEntry[] = [];
  for (const e of walk) {
    entries.push(e);
    if (entries.length === init.batchEntries) {
      post(entries);
      entries = [];
    }
  }
  post(entries);
  parentPort!.postMessage({ done: true });
} catch (err) {
  const e = err instanceof CairnError ? err : new CairnError('INTERNAL', (err as Error)?.message ?? String(err));
  parentPort!.postMessage({ error: { code: e.code, message: e.message } });
}
