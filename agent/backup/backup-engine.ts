import { hostname } from 'node:os';
import { CairnError } from '../../shared/errors.js';
import { onInterrupt } from '../../shared/interrupt.js';
import { shortSuffix } from '../../shared/clock.js';
import { BlockMap, blockMapKey, ZERO_ID } from '../../shared/vault/block-map.js';
import type { ChunkIndex } from '../../shared/vault/chunk-index.js';
import { ID_BYTES, SEAL_OVERHEAD } from '../../shared/vault/crypto.js';
import type { BatchSlot } from '../../shared/vault/worker-protocol.js';
import { SlotRunner } from '../../shared/vault/slot-runner.js';
import { Lease } from '../../shared/vault/lease.js';
import { protectBackup } from '../../shared/vault/retention.js';
import { countManifestBytes, type DiskRecord, type Manifest } from '../../shared/vault/manifest.js';
import { PackWriter } from '../../shared/vault/pack-writer.js';
import type { Vault } from '../../shared/vault/vault.js';
import { WorkerPool } from '../../shared/vault/worker-pool.js';
import type { BlockSource, CaptureGroup, CaptureResult, ParentDisk, ReadPlan } from '../source/block-source.js';
import { quiesce, type Consistency, type QuiesceOptions, type Quiesced } from '../quiesce/quiesce.js';
import { chunkRuns, runBytes, type ChunkRun } from './chunk-runs.js';

export interface BackupProgress {
  bytesDone: number;
  bytesTotal: number;
  bytesStored: number;
}

export interface BackupOptions {
  name?: string;
  /** Prefix of generated names: 'manualbk' for one-off backups, 'autobk' for scheduled ones. */
  namePrefix?: 'manualbk' | 'autobk';
  /** The agent's name for what these disks are (its config's resource), stored in the manifest. */
  resourceName?: string;
  /** Ignore any parent: read and store as if first. Chunks already in the vault are still reused. */
  full?: boolean;
  onProgress?: (p: BackupProgress) => void;
  /** Worker threads for hashing and encoding; defaults to the number of cores. */
  workers?: number;
  /** Quiesce the workload (hooks, fsfreeze) around the capture for an application-consistent backup. */
  quiesce?: QuiesceOptions;
  /** With quiesce: fail the backup when it cannot be application-consistent (default: store it crash-consistent with a warning). */
  requireAppConsistent?: boolean;
}

export interface BackupResult {
  manifest: Manifest;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  changedChunks: number;
  recoveredPacks: number;
  /** Stored in the manifest (lost bitmaps, quiesce failures), plus any from committing the capture. */
  warnings: string[];
}

const BATCH_BYTES = 2 * 1024 * 1024;
/** How long an interrupt waits for a capture under way before dropping the groups (the CLI exits 3 s after a signal). */
const CAPTURE_GRACE_MS = 2000;

/** The resource key of a set of sources: backups with the same key chain as incrementals. */
export function resourceKey(sources: BlockSource[]): string {
  return sources.map((s) => s.name).join('\n');
}

/**
 * Backs up one or more disks into the vault as one backup (block-source.ts has the order of
 * quiesce, capture, plan, read and commit). Write order (FORMAT.md): packs, then index objects,
 * then block maps, then the manifest; a failure or kill at any point leaves only unreferenced
 * data, which the next backup reuses and gc removes. Capture groups are committed only after the
 * manifest is written and aborted otherwise, so a change tracker never loses a change.
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
  const groups = [...new Set(sources.flatMap((s) => (s.group ? [s.group] : [])))];

  const lease = await Lease.acquire(vault, 'backup');
  const pool = new WorkerPool(vault.key, vault.config.compression.level, opts.workers);
  const warnings: string[] = [];
  let quiesced: Quiesced | undefined;
  let consistency = 'crash_consistent' as Consistency;
  const thaw = async (): Promise<void> => {
    if (!quiesced) return;
    const q = quiesced;
    quiesced = undefined;
    const r = await q.thaw();
    consistency = r.consistency;
    warnings.push(...r.warnings);
  };
  let captured: CaptureGroup[] = [];
  let capturing: Promise<unknown> | undefined;
  let committed = false;
  // Ctrl-C or a service stop: thaw at once and drop the new tracking points (the previous ones
  // still hold every change); the watchdog would thaw too, but only after --freeze-timeout. A capture
  // under way (a VM snapshot being taken) gets a moment to finish, so that what it made is removed.
  const unregister = onInterrupt(async () => {
    await thaw().catch(() => undefined);
    if (capturing) await Promise.race([capturing.catch(() => undefined), new Promise((r) => setTimeout(r, CAPTURE_GRACE_MS).unref())]);
    if (!committed) await Promise.all(captured.map((g) => g.abort().catch(() => undefined)));
  });
  try {
    const { index, plan, packs } = await vault.loadIndex();
    const recoveredPacks = await vault.recoverUnindexedPacks(index, plan, packs);
    const writer = new PackWriter(vault, index);
    const id = vault.newBackupId();
    const parentDisks = sources.map((source, i) => {
      const d = parent?.disks.find((p) => p.index === i && p.source === source.name);
      return d && d.chunkSize === vault.config.chunkSize ? d : undefined;
    });

    if (opts.quiesce) {
      quiesced = await quiesce({ ...opts.quiesce, env: { CAIRN_BACKUP_NAME: name, CAIRN_BACKUP_ID: id, ...opts.quiesce.env } });
      if (opts.requireAppConsistent && quiesced.achieved !== 'app_consistent') {
        await thaw();
        throw quiesceFailed(warnings);
      }
    }
    const groupConsistency = new Map<CaptureGroup, Consistency>();
    for (const g of groups) {
      const members = sources.flatMap((s, i) => (s.group === g ? [i] : []));
      captured.push(g);
      capturing = g.capture({ backupId: id, vaultId: vault.config.id, parents: members.map((i) => parentOf(parentDisks[i])) });
      const r = (await capturing) as CaptureResult | void;
      capturing = undefined;
      if (r?.consistency) groupConsistency.set(g, r.consistency);
      if (r?.warnings) warnings.push(...r.warnings);
    }
    // Every disk is a point-in-time view now, unless some are read as they are: then the freeze lasts until they are read.
    if (sources.every((s) => s.group)) await thaw();

    const plans: { plan: ReadPlan; runs: ChunkRun[]; parentMap: BlockMap | undefined }[] = [];
    for (const [i, source] of sources.entries()) {
      const parentMap = parentDisks[i] ? await vault.readBlockMap(parentDisks[i].blockMap) : undefined;
      const info = parentMap ? parentOf(parentDisks[i]) : undefined;
      const readPlan: ReadPlan = source.plan ? await source.plan(info) : { method: parentMap ? 'compare' : 'full' };
      if (readPlan.method === 'bitmap' && (!parentMap || parentMap.diskSize !== source.size)) {
        throw new CairnError('INTERNAL', `source ${source.name} planned a bitmap incremental without a parent of the same size`);
      }
      if (readPlan.warning) warnings.push(`${source.name}: ${readPlan.warning}`);
      plans.push({ plan: readPlan, runs: chunkRuns(readPlan.ranges, vault.config.chunkSize, source.size), parentMap });
    }

    const bytesTotal = plans.reduce((s, p, i) => s + runBytes(p.runs, vault.config.chunkSize, sources[i].size), 0);
    const progress = { bytesDone: 0, bytesTotal, bytesStored: 0 };
    let bytesRead = 0;
    let changedChunks = 0;
    const disks: DiskRecord[] = [];
    const maps: BlockMap[] = [];
    for (const [i, source] of sources.entries()) {
      const { plan: readPlan, runs, parentMap } = plans[i];
      const r = await backupDisk(vault, source, index, writer, pool, runs, readPlan.method === 'bitmap' ? parentMap : undefined, (done) => {
        progress.bytesDone += done;
        progress.bytesStored = writer.bytesWritten;
        opts.onProgress?.({ ...progress });
      });
      bytesRead += r.bytesRead;
      const used = usage(r.map, parentMap);
      changedChunks += used.changedChunks;
      maps.push(r.map);
      disks.push({
        index: i,
        source: source.name,
        size: source.size,
        chunkSize: vault.config.chunkSize,
        blockMap: blockMapKey(id, i),
        usedBytes: used.usedBytes,
        newChunks: r.newChunks,
        newBytes: r.newBytes,
        changeDetection: readPlan.method,
        bytesRead: r.bytesRead,
        ...(readPlan.dirtyBytes !== undefined ? { dirtyBytes: readPlan.dirtyBytes } : {}),
        ...(readPlan.changeToken !== undefined ? { changeToken: readPlan.changeToken } : {}),
      });
    }
    await thaw();
    consistency = combinedConsistency(opts.quiesce ? consistency : undefined, groupConsistency, sources);
    if (opts.requireAppConsistent && (opts.quiesce || groupConsistency.size) && consistency !== 'app_consistent') throw quiesceFailed(warnings);
    await writer.flush();
    let bytesStored = writer.bytesWritten;
    for (const [i, map] of maps.entries()) bytesStored += await vault.writeBlockMap(disks[i].blockMap, map);
    const manifest: Manifest = {
      version: 1,
      id,
      name,
      kind: parent ? 'incremental' : 'full',
      resource,
      ...(opts.resourceName !== undefined ? { resourceName: opts.resourceName } : {}),
      parent: parent?.id ?? null,
      startedAt: started.toISOString(),
      finishedAt: vault.clock.now().toISOString(),
      host: hostname(),
      consistency,
      disks,
      bytesRead,
      bytesStored,
      ...(warnings.length ? { warnings: [...warnings] } : {}),
    };
    countManifestBytes(vault.key.encryption, manifest);
    // On an immutable vault, reused packs get the retention this backup promises before it commits.
    await protectBackup(vault, index, maps);
    await vault.writeManifest(manifest);
    committed = true;
    const after = [...warnings];
    for (const g of captured) after.push(...(await g.commit()));
    captured = [];
    opts.onProgress?.({ bytesDone: bytesTotal, bytesTotal, bytesStored: manifest.bytesStored });
    return {
      manifest,
      bytesRead,
      bytesStored: manifest.bytesStored,
      durationMs: Math.round(performance.now() - t0),
      changedChunks,
      recoveredPacks,
      warnings: after,
    };
  } finally {
    unregister();
    await thaw().catch(() => undefined);
    if (!committed) for (const g of captured) await g.abort().catch(() => undefined);
    await pool.close();
    await lease.release().catch(() => undefined);
  }
}

function parentOf(d: DiskRecord | undefined): ParentDisk | undefined {
  return d ? { size: d.size, changeToken: d.changeToken } : undefined;
}

/**
 * A backup is application-consistent when everything that quiesced succeeded: Cairn's own quiesce
 * (hooks, fsfreeze) if it ran, and every capture group that quiesces on its own (a VMware quiesced
 * snapshot). Without Cairn's quiesce, the groups alone decide, and only when every disk's group quiesced.
 */
function combinedConsistency(own: Consistency | undefined, groups: Map<CaptureGroup, Consistency>, sources: BlockSource[]): Consistency {
  if ([...groups.values()].includes('crash_consistent')) return 'crash_consistent';
  if (own !== undefined) return own;
  return groups.size > 0 && sources.every((s) => s.group && groups.get(s.group) === 'app_consistent') ? 'app_consistent' : 'crash_consistent';
}

function quiesceFailed(warnings: string[]): CairnError {
  return new CairnError(
    'QUIESCE_FAILED',
    `the backup was not made because it could not be application-consistent: ${warnings.join('; ') || 'the freeze did not hold'}; ` +
      'fix the hooks or file systems named, or allow crash-consistent backups',
  );
}

/** Used bytes of a block map, and how many chunks differ from the parent's (all used ones without a parent). */
function usage(map: BlockMap, parentMap: BlockMap | undefined): { usedBytes: number; changedChunks: number } {
  let usedBytes = 0;
  let changedChunks = 0;
  for (let p = 0; p < map.count; p++) {
    const zero = map.isZero(p);
    if (!zero) usedBytes += map.lengthAt(p);
    if (parentMap && p < parentMap.count) {
      if (!map.id(p).equals(parentMap.id(p))) changedChunks++;
    } else if (!zero) changedChunks++;
  }
  return { usedBytes, changedChunks };
}

/** A generated backup name (`manualbk_xxxxxx`, `autobk_xxxxxx`) not used in the vault yet. */
export function uniqueName(vault: Vault, prefix: string, existing: Manifest[]): string {
  const names = new Set(existing.map((m) => m.name));
  for (;;) {
    const name = `${prefix}_${shortSuffix(vault.ids, 6)}`;
    if (!names.has(name)) return name;
  }
}

interface DiskResult {
  map: BlockMap;
  bytesRead: number;
  newChunks: number;
  /** Stored (compressed, sealed) bytes of the new chunks, counted as they are added to packs. */
  newBytes: number;
}

/** One batch: chunk positions in order, and the contiguous pieces of the disk that fill its slot. */
interface Batch {
  positions: number[];
  pieces: { position: number; length: number; at: number }[];
  length: number;
}

/** Splits chunk runs into batches of at most `perBatch` chunks (a batch may join several runs). */
function* batches(runs: readonly ChunkRun[], perBatch: number, map: BlockMap): Generator<Batch> {
  let batch: Batch = { positions: [], pieces: [], length: 0 };
  for (const run of runs) {
    let p = run.first;
    while (p < run.end) {
      const take = Math.min(run.end - p, perBatch - batch.positions.length);
      let length = 0;
      for (let k = 0; k < take; k++) {
        batch.positions.push(p + k);
        length += map.lengthAt(p + k);
      }
      batch.pieces.push({ position: p * map.chunkSize, length, at: batch.length });
      batch.length += length;
      p += take;
      if (batch.positions.length === perBatch) {
        yield batch;
        batch = { positions: [], pieces: [], length: 0 };
      }
    }
  }
  if (batch.positions.length > 0) yield batch;
}

/**
 * The pipeline for one disk: the main thread reads batches of the planned chunks and sends them to
 * workers, which find zero chunks and hash the rest; the main thread decides which chunks the vault
 * lacks, the same worker compresses and encrypts those, and the main thread appends them to packs.
 * At most `3 * workers` batches (shared slots) are in flight and packs upload a few at a time, so
 * memory stays bounded whatever the disk size. Chunks outside the plan keep the parent's ids
 * (`base`, bitmap incrementals) or are zero.
 */
async function backupDisk(
  vault: Vault,
  source: BlockSource,
  index: ChunkIndex,
  writer: PackWriter,
  pool: WorkerPool,
  runs: readonly ChunkRun[],
  base: BlockMap | undefined,
  onRead: (bytes: number) => void,
): Promise<DiskResult> {
  const chunkSize = vault.config.chunkSize;
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / chunkSize));
  const batchBytes = perBatch * chunkSize;
  const map = new BlockMap(chunkSize, source.size, base ? Buffer.from(base.ids) : undefined);
  const pending = new Set<string>();
  // Batches live in shared slots (worker-protocol.ts): nothing is copied or transferred between
  // threads, and memory is the slots' whatever the disk size.
  const slots: BatchSlot[] = [];
  for (let i = 0; i < pool.size * 3; i++) {
    slots.push({
      input: new SharedArrayBuffer(batchBytes),
      output: new SharedArrayBuffer(batchBytes + perBatch * (SEAL_OVERHEAD + 16)),
    });
  }
  await pool.broadcast({ type: 'slots', slots });
  const inputs = slots.map((s) => Buffer.from(s.input));
  const outputs = slots.map((s) => Buffer.from(s.output));
  const runner = new SlotRunner(slots.length);
  let bytesRead = 0;
  let newChunks = 0;
  let newBytes = 0;
  let batchNo = 0;

  for (const { positions, pieces, length } of batches(runs, perBatch, map)) {
    const slot = await runner.acquire();
    if (slot === undefined) break;
    await writer.waitForCapacity();
    const batch = batchNo++;
    runner.start(slot, async () => {
      // Reads run inside the slot's task, so several batches are read at once (an NBD server
      // answers them in parallel) while workers hash earlier ones; pieces of one batch go out together.
      const input = inputs[slot];
      await Promise.all(
        pieces.map(async (piece) => {
          const n = await source.read(input.subarray(piece.at, piece.at + piece.length), piece.length, piece.position);
          if (n !== piece.length) {
            throw new CairnError(
              'SOURCE_UNREADABLE',
              `${source.name} ended at byte ${piece.position + n}, before its size ${source.size}: it shrank during the backup`,
            );
          }
        }),
      );
      bytesRead += length;
      onRead(length);
      const worker = pool.leastBusy();
      const hashed = await pool.call(worker, { type: 'hash', batch, slot, length, chunkSize });
      if (hashed.type !== 'hashed') throw new CairnError('INTERNAL', 'unexpected worker reply');
      const ids = Buffer.from(hashed.ids);
      const count = ids.length / ID_BYTES;
      const which: number[] = [];
      for (let i = 0; i < count; i++) {
        const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
        map.set(positions[i], id);
        if (id.equals(ZERO_ID)) continue;
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
  return { map, bytesRead, newChunks, newBytes };
}
