import { randomFillSync } from 'node:crypto';
import { SEAL_OVERHEAD, newMasterKey } from '../shared/vault/crypto.js';
import { cut, DEFAULT_CDC, gearTable } from '../shared/vault/cdc.js';
import { defaultWorkers, WorkerPool } from '../shared/vault/worker-pool.js';
import { cutOutputBytes, type BatchSlot } from '../shared/vault/worker-protocol.js';

/**
 * Throughput of content-defined chunking (a program, not a test): `cut` alone on one thread, then
 * the worker path a file backup uses ('cut' = cut + keyed BLAKE3, then 'encode' of every chunk =
 * zstd + AES-GCM) over shared slots, on random data (incompressible: the worst case for encode).
 *
 *   npm run build && node dist/bench/cdc-bench.js [--mib 256] [--workers N]
 */

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const MIB = 1024 * 1024;
const size = arg('--mib', 256) * MIB;
const workers = arg('--workers', defaultWorkers());
const key = newMasterKey();
const data = Buffer.allocUnsafe(size);
for (let at = 0; at < size; at += 64 * MIB) randomFillSync(data, at, Math.min(64 * MIB, size - at));
const gear = gearTable(key.chunkId);

const rate = (bytes: number, ms: number) => `${((bytes / MIB / ms) * 1000).toFixed(0)} MiB/s`;

// Warm up the JIT, then measure the best of five (other work on the machine only slows a round down).
cut(data.subarray(0, 32 * MIB), DEFAULT_CDC, gear, true);
let best = Infinity;
let chunks = 0;
for (let round = 0; round < 5; round++) {
  const t0 = performance.now();
  chunks = cut(data, DEFAULT_CDC, gear, true).length;
  best = Math.min(best, performance.now() - t0);
}
console.log(`cut, 1 thread:            ${rate(size, best)} (${chunks} chunks, mean ${(size / chunks / MIB).toFixed(2)} MiB)`);

const SLOT = 16 * MIB;
const pool = new WorkerPool(key, 1, workers);
const slots: BatchSlot[] = [];
for (let i = 0; i < workers * 2; i++) {
  slots.push({ input: new SharedArrayBuffer(SLOT), output: new SharedArrayBuffer(cutOutputBytes(SLOT, 1, DEFAULT_CDC) + SEAL_OVERHEAD) });
}
await pool.broadcast({ type: 'slots', slots });
const inputs = slots.map((s) => Buffer.from(s.input));

for (const encodeAll of [false, true]) {
  const t0 = performance.now();
  let batch = 0;
  let done = 0;
  const busy: Promise<void>[] = slots.map(() => Promise.resolve());
  // One stream of independent 16 MiB files: every slot one final segment, all workers busy.
  for (let at = 0; at < size; at += SLOT) {
    const s = batch % slots.length;
    await busy[s];
    const n = Math.min(SLOT, size - at);
    data.copy(inputs[s], 0, at, at + n);
    const b = batch++;
    const worker = b % workers;
    busy[s] = (async () => {
      const r = await pool.call(worker, { type: 'cut', batch: b, slot: s, segments: [{ length: n, final: true }], params: DEFAULT_CDC });
      if (r.type !== 'chunked') throw new Error('unexpected reply');
      const which = encodeAll ? r.lengths.map((_, i) => i) : [];
      await pool.call(worker, { type: 'encode', batch: b, which });
      done += n;
    })();
  }
  await Promise.all(busy);
  const ms = performance.now() - t0;
  console.log(`workers x${workers}, cut + hash${encodeAll ? ' + encode' : '         '}: ${rate(done, ms)}`);
}
await pool.close();
