import { CairnError } from '../errors.js';
import type { BlockMap } from './block-map.js';
import type { ChunkIndex, ChunkLocation } from './chunk-index.js';
import { ID_BYTES } from './crypto.js';
import { packKey } from './pack.js';
import type { Vault } from './vault.js';
import type { WorkerPool } from './worker-pool.js';

const MAX_READ = 8 * 1024 * 1024;
const MAX_GAP = 256 * 1024;

interface Item {
  id: Buffer;
  loc: ChunkLocation;
  positions: number[];
}

/**
 * Reads every non-zero chunk of a block map once (a chunk used at several positions is fetched
 * and decoded once), pack by pack in offset order with neighbouring blobs merged into one ranged
 * get, decoded and checked against its id in the workers. `onChunk` receives the positions the
 * plaintext belongs at; it is awaited, which bounds memory. Throws VAULT_CORRUPT naming the first
 * missing or damaged chunk.
 */
export async function readDiskChunks(
  vault: Vault,
  index: ChunkIndex,
  map: BlockMap,
  pool: WorkerPool,
  onChunk: (positions: number[], data: Buffer) => Promise<void>,
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
  const byPack = new Map<string, Item[]>();
  for (const item of byId.values()) {
    const list = byPack.get(item.loc.packId);
    if (list) list.push(item);
    else byPack.set(item.loc.packId, [item]);
  }
  const jobs: Item[][] = [];
  for (const items of byPack.values()) {
    items.sort((a, b) => a.loc.offset - b.loc.offset);
    let job: Item[] = [];
    for (const it of items) {
      const first = job[0];
      const last = job[job.length - 1];
      if (
        first &&
        (it.loc.offset - (last.loc.offset + last.loc.length) > MAX_GAP || it.loc.offset + it.loc.length - first.loc.offset > MAX_READ)
      ) {
        jobs.push(job);
        job = [];
      }
      job.push(it);
    }
    if (job.length) jobs.push(job);
  }

  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  let jobNo = 0;
  for (const job of jobs) {
    while (inFlight.size >= pool.size * 2) await Promise.race(inFlight);
    if (failure) break;
    const work = runJob(vault, pool, job, jobNo++, onChunk).catch((err) => {
      failure ??= err;
    });
    const tracked = work.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }
  await Promise.all(inFlight);
  if (failure) throw failure;
}

async function runJob(
  vault: Vault,
  pool: WorkerPool,
  job: Item[],
  jobNo: number,
  onChunk: (positions: number[], data: Buffer) => Promise<void>,
): Promise<void> {
  const packId = job[0].loc.packId;
  const start = job[0].loc.offset;
  const end = job[job.length - 1].loc.offset + job[job.length - 1].loc.length;
  let data: Buffer;
  try {
    data = await vault.store.get(packKey(packId), { offset: start, length: end - start });
  } catch (err) {
    throw new CairnError('VAULT_CORRUPT', `pack ${packId} cannot be read from ${vault.store.location}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (data.length !== end - start) throw new CairnError('VAULT_CORRUPT', `pack ${packId} is shorter than its index says`);
  const ids = Buffer.allocUnsafeSlow(job.length * ID_BYTES);
  job.forEach((it, n) => it.id.copy(ids, n * ID_BYTES));
  // A private copy of the bytes so the ArrayBuffer can be transferred to the worker.
  const own = Buffer.allocUnsafeSlow(data.length);
  data.copy(own);
  const reply = await pool.call(
    pool.leastBusy(),
    {
      type: 'decode',
      job: jobNo,
      where: `pack ${packId}`,
      data: own.buffer as ArrayBuffer,
      ids: ids.buffer as ArrayBuffer,
      items: job.map((it) => ({ offset: it.loc.offset - start, length: it.loc.length, codec: it.loc.codec, rawLength: it.loc.rawLength })),
    },
    [own.buffer as ArrayBuffer, ids.buffer as ArrayBuffer],
  );
  if (reply.type !== 'decoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
  if (reply.errors.length) throw new CairnError('VAULT_CORRUPT', `${reply.errors[0].message}; run 'cairn vault verify --read-data'`);
  const plain = Buffer.from(reply.plain);
  let at = 0;
  for (const it of job) {
    await onChunk(it.positions, plain.subarray(at, at + it.loc.rawLength));
    at += it.loc.rawLength;
  }
}
