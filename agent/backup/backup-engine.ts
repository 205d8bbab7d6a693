import { hostname } from 'node:os';
import { CairnError } from '../../shared/errors.js';
import { shortSuffix } from '../../shared/clock.js';
import { BlockMap, blockMapKey, ZERO_ID } from '../../shared/vault/block-map.js';
import type { ChunkIndex } from '../../shared/vault/chunk-index.js';
import { ID_BYTES, SEAL_OVERHEAD } from '../../shared/vault/crypto.js';
import type { BatchSlot } from '../../shared/vault/worker-protocol.js';
import { SlotRunner } from '../../shared/vault/slot-runner.js';
import { Lease } from '../../shared/vault/lease.js';
import { protectBackup } from '../../shared/vault/retention.js';
import { encodeManifest, type DiskRecord, type Manifest } from '../../shared/vault/manifest.js';
import { PackWriter } from '../../shared/vault/pack-writer.js';
import type { Vault } from '../../shared/vault/vault.js';
import { WorkerPool } from '../../shared/vault/worker-pool.js';
import type { BlockSource } from '../source/block-source.js';

export interface BackupProgress {
  bytesDone: number;
  bytesTotal: number;
  bytesStored: number;
}

export interface BackupOptions {
  name?: string;
  /** Prefix of generated names: 'manualbk' for one-off backups, 'autobk' for scheduled ones. */
  namePrefix?: 'manualbk' | 'autobk';
  /** Ignore any parent: read and store as if first. Chunks already in the vault are still reused. */
  full?: boolean;
  onProgress?: (p: BackupProgress) => void;
  /** Worker threads for hashing and encoding; defaults to the number of cores. */
  workers?: number;
}

export interface BackupResult {
  manifest: Manifest;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  changedChunks: number;
  recoveredPacks: number;
}

const BATCH_BYTES = 2 * 1024 * 1024;

/** The resource key of a set of sources: backups with the same key chain as incrementals. */
export function resourceKey(sources: BlockSource[]): string {
  return sources.map((s) => s.name).join('\n');
}

/**
 * Backs up one or more disks into the vault as one backup. Write order (FORMAT.md): packs, then
 * index objects, then block maps, then the manifest; a failure or kill at any point leaves only
 * unreferenced data, which the next backup reuses and gc removes.
 */
export async function runBackup(vault: Vault, sources: BlockSource[], opts: BackupOptions = {}): Promise<BackupResult> {
  const started = vault.clock.now();
  const t0 = performance.now();
  const resource = resourceKey(sources);
  const existing = await vault.listBackups();
  const name = opts.name ?? uniqueName(vault, opts.namePrefix ?? 'manualbk', existing);
  if (existing.some((m) => m.name === name)) {
    throw new CairnError('ALREADY_EXISTS', `a backup named '${name}' exists already in ${vault.store.location}; choose another --name`);
  }
  const parent = opts.full ? undefined : [...existing].reverse().find((m) => m.resource === resource);

  const lease = await Lease.acquire(vault, 'backup');
  const pool = new WorkerPool(vault.key, vault.config.compression.level, opts.workers);
  try {
    const { index, plan, packs } = await vault.loadIndex();
    const recoveredPacks = await vault.recoverUnindexedPacks(index, plan, packs);
    const writer = new PackWriter(vault, index);
    const id = vault.newBackupId();
    const bytesTotal = sources.reduce((s, d) => s + d.size, 0);
    const progress = { bytesDone: 0, bytesTotal, bytesStored: 0 };
    let bytesRead = 0;
    let changedChunks = 0;
    const disks: DiskRecord[] = [];
    const maps: BlockMap[] = [];
    for (const [i, source] of sources.entries()) {
      const parentDisk = parent?.disks.find((d) => d.index === i && d.source === source.name);
      const parentMap =
        parentDisk && parentDisk.chunkSize === vault.config.chunkSize ? await vault.readBlockMap(parentDisk.blockMap) : undefined;
      const r = await backupDisk(vault, source, index, writer, pool, parentMap, (done) => {
        progress.bytesDone += done;
        progress.bytesStored = writer.bytesWritten;
        opts.onProgress?.({ ...progress });
      });
      bytesRead += r.bytesRead;
      changedChunks += r.changedChunks;
      maps.push(r.map);
      disks.push({
        index: i,
        source: source.name,
        size: source.size,
        chunkSize: vault.config.chunkSize,
        blockMap: blockMapKey(id, i),
        usedBytes: r.usedBytes,
        newChunks: r.newChunks,
        newBytes: r.newBytes,
        changeDetection: parentMap ? 'compare' : 'all',
      });
    }
    await writer.flush();
    let bytesStored = writer.bytesWritten;
    for (const [i, map] of maps.entries()) bytesStored += await vault.writeBlockMap(disks[i].blockMap, map);
    const manifest: Manifest = {
      version: 1,
      id,
      name,
      kind: parent ? 'incremental' : 'full',
      resource,
      parent: parent?.id ?? null,
      startedAt: started.toISOString(),
      finishedAt: vault.clock.now().toISOString(),
      host: hostname(),
      consistency: 'crash',
      disks,
      bytesRead,
      bytesStored,
    };
    // bytesStored counts the manifest too; its sealed size depends on the number's own digits, so
    // settle the two (converges in at most a few rounds).
    const base = manifest.bytesStored;
    for (let size = 0, i = 0; i < 8; i++) {
      manifest.bytesStored = base + size;
      const next = encodeManifest(vault.key.encryption, manifest).length;
      if (next === size) break;
      size = next;
    }
    // On an immutable vault, reused packs get the retention this backup promises before it commits.
    await protectBackup(vault, index, maps);
    await vault.writeManifest(manifest);
    opts.onProgress?.({ bytesDone: bytesTotal, bytesTotal, bytesStored: manifest.bytesStored });
    return {
      manifest,
      bytesRead,
      bytesStored: manifest.bytesStored,
      durationMs: Math.round(performance.now() - t0),
      changedChunks,
      recoveredPacks,
    };
  } finally {
    await pool.close();
    await lease.release().catch(() => undefined);
  }
}

function uniqueName(vault: Vault, prefix: string, existing: Manifest[]): string {
  const names = new Set(existing.map((m) => m.name));
  for (;;) {
    const name = `${prefix}_${shortSuffix(vault.ids, 6)}`;
    if (!names.has(name)) return name;
  }
}

interface DiskResult {
  map: BlockMap;
  bytesRead: number;
  usedBytes: number;
  newChunks: number;
  /** Stored (compressed, sealed) bytes of the new chunks, counted as they are added to packs. */
  newBytes: number;
  changedChunks: number;
}

/**
 * The pipeline for one disk: the main thread reads batches and sends them to workers, which find
 * zero chunks and hash the rest; the main thread decides which chunks the vault lacks, the same
 * worker compresses and encrypts those, and the main thread appends them to packs. At most
 * `3 * workers` batches (shared slots) are in flight and at most two packs upload at once, so
 * memory stays bounded whatever the disk size.
 */
async function backupDisk(
  vault: Vault,
  source: BlockSource,
  index: ChunkIndex,
  writer: PackWriter,
  pool: WorkerPool,
  parentMap: BlockMap | undefined,
  onRead: (bytes: number) => void,
): Promise<DiskResult> {
  const chunkSize = vault.config.chunkSize;
  const batchBytes = Math.max(chunkSize, Math.floor(BATCH_BYTES / chunkSize) * chunkSize);
  const map = new BlockMap(chunkSize, source.size);
  const pending = new Set<string>();
  // Batches live in shared slots (worker-protocol.ts): nothing is copied or transferred between
  // threads, and memory is the slots' whatever the disk size.
  const slots: BatchSlot[] = [];
  for (let i = 0; i < pool.size * 3; i++) {
    slots.push({
      input: new SharedArrayBuffer(batchBytes),
      output: new SharedArrayBuffer(batchBytes + (batchBytes / chunkSize) * (SEAL_OVERHEAD + 16)),
    });
  }
  await pool.broadcast({ type: 'slots', slots });
  const inputs = slots.map((s) => Buffer.from(s.input));
  const outputs = slots.map((s) => Buffer.from(s.output));
  const runner = new SlotRunner(slots.length);
  let usedBytes = 0;
  let newChunks = 0;
  let newBytes = 0;
  let changedChunks = 0;
  let batchNo = 0;

  for (let position = 0; position < source.size; position += batchBytes) {
    const slot = await runner.acquire();
    if (slot === undefined) break;
    await writer.waitForCapacity();
    const length = Math.min(batchBytes, source.size - position);
    const n = await source.read(inputs[slot], length, position);
    if (n !== length) {
      throw new CairnError(
        'SOURCE_UNREADABLE',
        `${source.name} ended at byte ${position + n}, before its size ${source.size}: it shrank during the backup`,
      );
    }
    onRead(length);
    const batch = batchNo++;
    const firstChunk = position / chunkSize;
    const worker = pool.leastBusy();
    runner.start(slot, async () => {
      const hashed = await pool.call(worker, { type: 'hash', batch, slot, length, chunkSize });
      if (hashed.type !== 'hashed') throw new CairnError('INTERNAL', 'unexpected worker reply');
      const ids = Buffer.from(hashed.ids);
      const count = ids.length / ID_BYTES;
      const which: number[] = [];
      for (let i = 0; i < count; i++) {
        const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
        const p = firstChunk + i;
        if (id.equals(ZERO_ID)) {
          if (parentMap && p < parentMap.count && !parentMap.isZero(p)) changedChunks++;
          continue;
        }
        usedBytes += map.lengthAt(p);
        map.set(p, id);
        if (!parentMap || p >= parentMap.count || !parentMap.id(p).equals(id)) changedChunks++;
        const key = id.toString('latin1');
        if (index.has(id) || pending.has(key)) continue;
        pending.add(key);
        which.push(i);
      }
      const encoded = await pool.call(worker, { type: 'encode', batch, which });
      if (encoded.type !== 'encoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
      const blob = outputs[slot];
      const items = encoded.items;
      for (let k = 0; k < items.length; k += 5) {
        const i = items[k];
        const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
        writer.add(id, blob.subarray(items[k + 2], items[k + 2] + items[k + 3]), items[k + 1], items[k + 4]);
        pending.delete(id.toString('latin1'));
        newChunks++;
        newBytes += items[k + 3];
      }
    });
  }
  await runner.drain();
  return { map, bytesRead: source.size, usedBytes, newChunks, newBytes, changedChunks };
}
