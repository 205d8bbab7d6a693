import { CairnError } from '../errors.js';
import type { BlockMap } from './block-map.js';
import type { ChunkIndex, ChunkLocation } from './chunk-index.js';
import { ID_BYTES, SEAL_OVERHEAD } from './crypto.js';
import type { BatchSlot } from './worker-protocol.js';
import { SlotRunner } from './slot-runner.js';
import { packKey } from './pack.js';
import type { Vault } from './vault.js';
import type { WorkerPool } from './worker-pool.js';

const MAX_READ = 2 * 1024 * 1024;
const MAX_GAP = 256 * 1024;

interface Item {
  id: Buffer;
  loc: ChunkLocation;
  positions: number[];
}

/**
 * Writes every non-zero chunk of a block map into the open file `fd` at its positions. Each chunk
 * is fetched and decoded once however many positions use it; packs are read in offset order with
 * neighbouring blobs merged into one ranged get; the workers decrypt, decompress, check the id and
 * write (positional writes, so the file descriptor is shared safely). At most one read per worker
 * plus one is in flight, each in a shared slot, which bounds memory. Throws VAULT_CORRUPT naming the first missing or damaged
 * chunk; positions are never written with unchecked data.
 */
export async function writeDiskChunks(
  vault: Vault,
  index: ChunkIndex,
  map: BlockMap,
  pool: WorkerPool,
  fd: number,
  onBytes: (bytes: number) => void,
): Promise<void> {
  const byId = new Map<string, Item>();
  for (let p = 0; p < map.count; p++) {
    if (map.isZero(p)) continue;
    const id = map.id(p);
    const k = id.toString('latin1');
    const item = byId.get(k);
    if (item) {
      item.positions.push(p);
      continue;
    }
    const loc = index.get(id);
    if (!loc) {
      throw new CairnError(
        'VAULT_CORRUPT',
        `chunk ${id.toString('hex')} (disk offset ${p * map.chunkSize}) is in no index of the vault at ${vault.store.location}; run 'cairn vault verify'`,
      );
    }
    byId.set(k, { id: Buffer.from(id), loc, positions: [p] });
  }
  const jobs = packReadJobs(byId.values(), MAX_READ, MAX_GAP);

  // Pack ranges are read into shared slots that the workers decode in place: no per-read buffers,
  // no transfers, so memory stays at the slots whatever the disk size.
  const slotBytes = Math.max(MAX_READ, map.chunkSize + SEAL_OVERHEAD) + 64 * 1024;
  const slots: BatchSlot[] = [];
  for (let i = 0; i < pool.size + 1; i++) slots.push({ input: new SharedArrayBuffer(slotBytes), output: new SharedArrayBuffer(0) });
  await pool.broadcast({ type: 'slots', slots });
  const inputs = slots.map((s) => Buffer.from(s.input));
  const runner = new SlotRunner(slots.length);
  let jobNo = 0;
  for (const job of jobs) {
    const slot = await runner.acquire();
    if (slot === undefined) break;
    const n = jobNo++;
    runner.start(slot, () => runJob(vault, pool, job, n, fd, map.chunkSize, onBytes, slot, inputs[slot]));
  }
  await runner.drain();
}

/**
 * The bytes of a pack read job (packReadJobs: blobs of one pack, in offset order), read into `into`
 * when the store can (otherwise a buffer of their own), and the blobs' ids end to end for a
 * 'decode' request; VAULT_CORRUPT when the pack cannot be read or is shorter than the index says.
 */
export async function readPackJob(
  vault: Vault,
  job: { id: Buffer; loc: ChunkLocation }[],
  into: Buffer,
): Promise<{ packId: string; start: number; data: Buffer; ids: Buffer }> {
  const packId = job[0].loc.packId;
  const start = job[0].loc.offset;
  const end = job[job.length - 1].loc.offset + job[job.length - 1].loc.length;
  let data: Buffer;
  try {
    data = await vault.store.get(packKey(packId), { offset: start, length: end - start }, into);
  } catch (err) {
    throw new CairnError('VAULT_CORRUPT', `pack ${packId} cannot be read from ${vault.store.location}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (data.length !== end - start) throw new CairnError('VAULT_CORRUPT', `pack ${packId} is shorter than its index says`);
  const ids = Buffer.allocUnsafeSlow(job.length * ID_BYTES);
  job.forEach((it, n) => it.id.copy(ids, n * ID_BYTES));
  return { packId, start, data, ids };
}

async function runJob(
  vault: Vault,
  pool: WorkerPool,
  job: Item[],
  jobNo: number,
  fd: number,
  chunkSize: number,
  onBytes: (bytes: number) => void,
  slot: number,
  into: Buffer,
): Promise<void> {
  const { packId, start, data, ids } = await readPackJob(vault, job, into);
  const inSlot = data.buffer === into.buffer;
  const dataBuffer = inSlot ? undefined : transferable(data);
  const reply = await pool.call(
    pool.leastBusy(),
    {
      type: 'decode',
      job: jobNo,
      where: `pack ${packId}`,
      ...(inSlot ? { slot, length: data.length } : { data: dataBuffer }),
      ids: ids.buffer as ArrayBuffer,
      items: job.map((it) => ({
        offset: it.loc.offset - start,
        length: it.loc.length,
        codec: it.loc.codec,
        rawLength: it.loc.rawLength,
        positions: it.positions,
      })),
      fd,
      chunkSize,
    },
    dataBuffer ? [dataBuffer, ids.buffer as ArrayBuffer] : [ids.buffer as ArrayBuffer],
  );
  if (reply.type !== 'decoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
  onBytes(reply.bytesWritten);
  if (reply.errors.length) throw new CairnError('VAULT_CORRUPT', `${reply.errors[0].message}; run 'cairn vault verify --read-data'`);
}

/**
 * The bytes of `buf` as an ArrayBuffer that may be moved to a worker: its own buffer when it owns
 * it whole (large reads do), else a copy. Callers must not use `buf` afterwards.
 */
export function transferable(buf: Buffer): ArrayBuffer {
  if (buf.byteOffset === 0 && buf.buffer.byteLength === buf.length && buf.buffer instanceof ArrayBuffer) return buf.buffer;
  const own = Buffer.allocUnsafeSlow(buf.length);
  buf.copy(own);
  return own.buffer as ArrayBuffer;
}

/**
 * Blobs grouped by pack and sorted by offset, cut into runs that one ranged get fetches: a run ends
 * before a gap wider than `maxGap` or where it would pass `maxRead` bytes (a single larger blob is a run of its own).
 */
export function packReadJobs<T extends { loc: ChunkLocation }>(items: Iterable<T>, maxRead: number, maxGap: number): T[][] {
  const byPack = new Map<string, T[]>();
  for (const item of items) {
    const list = byPack.get(item.loc.packId);
    if (list) list.push(item);
    else byPack.set(item.loc.packId, [item]);
  }
  const jobs: T[][] = [];
  for (const list of byPack.values()) {
    list.sort((a, b) => a.loc.offset - b.loc.offset);
    let job: T[] = [];
    for (const it of list) {
      const first = job[0];
      const last = job[job.length - 1];
      if (first && (it.loc.offset - (last.loc.offset + last.loc.length) > maxGap || it.loc.offset + it.loc.length - first.loc.offset > maxRead)) {
        jobs.push(job);
        job = [];
      }
      job.push(it);
    }
    if (job.length) jobs.push(job);
  }
  return jobs;
}
