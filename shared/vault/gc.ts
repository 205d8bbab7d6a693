import { CairnError, isCairnError } from '../errors.js';
import { ChunkIndex } from './chunk-index.js';
import { GC_PLAN_KEY, writeGcPlan } from './gc-plan.js';
import type { IndexedPack } from './index-file.js';
import { Lease, liveLeases } from './lease.js';
import { packKey, type PackEntry } from './pack.js';
import { PackWriter } from './pack-writer.js';
import type { Manifest } from './manifest.js';
import { collectReferences } from './references.js';
import { deleteUnlessRetained, packRetention, pruneLedger } from './retention.js';
import type { Vault } from './vault.js';

export interface GcOptions {
  /** Unreferenced data younger than this is kept (covers clock skew and writers without a lease). */
  graceMs: number;
  /** A pack whose dead bytes reach this fraction of its size is repacked. */
  repackThreshold?: number;
}

export interface GcResult {
  backups: number;
  packsBefore: number;
  packsDeleted: number;
  packsRepacked: number;
  packsAfter: number;
  bytesFreed: number;
  /** Bytes copied into new packs by repacking. */
  bytesRepacked: number;
  blockMapsDeleted: number;
  indexObjectsBefore: number;
  indexObjectsAfter: number;
  /** Packs kept because they are younger than the grace period or a running backup. */
  packsTooYoung: number;
  /** Packs with dead data kept because Object Lock still protects them (immutable vaults). */
  packsRetained: number;
  /** Set when deletion waits for backups that started before the plan; run gc again later. */
  deferred: { leases: number } | null;
}

/**
 * Garbage collection without a lock that stops backups (FORMAT.md, "Garbage collection"):
 * 1. mark: every chunk referenced by a manifest's block maps or tree (its parts, which are chunks,
 *    and its files' chunks); refused (VAULT_CORRUPT) when one cannot be read, since its chunks
 *    would look dead;
 * 2. plan: packs with no live chunk, and packs worth repacking (live chunks copied first), older
 *    than the grace period and than every live lease, are condemned in `gc/plan`; from then on
 *    backups do not reuse chunks from condemned packs;
 * 3. sweep, only when no lease older than the plan lives: mark again, spare any condemned pack that
 *    a backup finishing meanwhile came to need, write one consolidated index, delete the old index
 *    objects, then the condemned packs, then the plan.
 */
export async function collectGarbage(vault: Vault, opts: GcOptions): Promise<GcResult> {
  const lease = await Lease.acquire(vault, 'gc');
  try {
    // One gc at a time: two sweeps could each write an index naming packs the other deletes.
    const rival = (await liveLeases(vault)).find((l) => l.purpose === 'gc' && l.id !== lease.record.id);
    if (rival) {
      throw new CairnError(
        'BUSY',
        `another gc runs on ${vault.store.location} (host ${rival.host}, pid ${rival.pid}, since ${rival.createdAt}); ` +
          `wait for it to finish (if it died on another host, its lease expires at ${rival.expiresAt})`,
      );
    }
    return await run(vault, opts, lease);
  } finally {
    await lease.release().catch(() => undefined);
  }
}

async function run(vault: Vault, opts: GcOptions, lease: Lease): Promise<GcResult> {
  const threshold = opts.repackThreshold ?? 0.2;
  // Leftovers of interrupted writes: no write takes an hour, so older ones are abandoned.
  await vault.store.removeStaleTempFiles?.(Math.max(opts.graceMs, 60 * 60 * 1000), vault.clock.now());
  // Without the packs a previous plan condemned: a live chunk that also sits in one of them must be
  // located in its surviving copy (e.g. the repack of that pack), or that copy would look dead.
  const { index, indexKeys, plan: previous, packs: listed } = await vault.loadIndex();
  await vault.recoverUnindexedPacks(index, previous, listed);
  const indexKeysNow = await vault.listIndexKeys();
  const perPack = await readPerPack(vault, indexKeysNow);
  const manifests = await vault.listBackups();
  const { refs } = await marked(vault, manifests);
  const packs = await vault.listPacks();
  const others = (await liveLeases(vault)).filter((l) => l.id !== lease.record.id);
  const now = vault.clock.now().getTime();
  let cutoff = now - opts.graceMs;
  if (others.length) cutoff = Math.min(cutoff, Date.parse(others[0].createdAt));

  const condemned = new Set(previous?.condemnedPacks ?? []);
  const toRepack: { packId: string; live: PackEntry[] }[] = [];
  let packsTooYoung = 0;
  let packsRetained = 0;
  // On an immutable vault, Object Lock keeps packs until their retention date: leave those alone.
  const retention = await packRetention(vault, packs);
  for (const [packId, info] of packs) {
    if (condemned.has(packId)) continue;
    const entries = perPack.get(packId) ?? [];
    const live = entries.filter((e) => {
      const k = e.id.toString('latin1');
      return refs.has(k) && index.get(e.id)?.packId === packId;
    });
    const liveBytes = live.reduce((s, e) => s + e.length, 0);
    const deadBytes = info.size - liveBytes;
    if (live.length > 0 && deadBytes < info.size * threshold) continue;
    if (info.modified.getTime() >= cutoff) {
      packsTooYoung++;
      continue;
    }
    if ((retention.get(packId)?.getTime() ?? 0) > now) {
      packsRetained++;
      continue;
    }
    if (live.length === 0) condemned.add(packId);
    else toRepack.push({ packId, live });
  }

  // Repack: copy live blobs verbatim (they are self-contained) into new packs, indexed by the writer.
  let bytesRepacked = 0;
  if (toRepack.length) {
    const writer = new PackWriter(vault, new ChunkIndex());
    for (const { packId, live } of toRepack) {
      for (const e of live) {
        const blob = await vault.store.get(packKey(packId), { offset: e.offset, length: e.length });
        await writer.waitForCapacity();
        writer.add(e.id, blob, e.codec, e.rawLength);
        bytesRepacked += e.length;
      }
      condemned.add(packId);
    }
    await writer.flush();
  }

  const plan = { createdAt: previous?.createdAt ?? new Date(now).toISOString(), condemnedPacks: [...condemned] };
  const result: GcResult = {
    backups: manifests.length,
    packsBefore: packs.size,
    packsDeleted: 0,
    packsRepacked: toRepack.length,
    packsAfter: packs.size,
    bytesFreed: 0,
    bytesRepacked,
    blockMapsDeleted: 0,
    indexObjectsBefore: indexKeys.length,
    indexObjectsAfter: indexKeysNow.length,
    packsTooYoung,
    packsRetained,
    deferred: null,
  };
  if (condemned.size === 0 && !previous) {
    result.blockMapsDeleted = await deleteOrphans(vault, 'blockmaps/', manifests.map((m) => m.id), cutoff);
    return result;
  }
  await writeGcPlan(vault, plan);

  // Only backups can have picked up chunks of condemned packs; gc runs are exclusive.
  const older = (await liveLeases(vault)).filter((l) => l.purpose === 'backup' && l.createdAt < plan.createdAt);
  if (older.length) {
    result.deferred = { leases: older.length };
    return result;
  }

  // Sweep. Mark again: a backup that began before the plan may have finished since.
  const finalKeys = await vault.listIndexKeys();
  const finalPerPack = await readPerPack(vault, finalKeys);
  const finalManifests = await vault.listBackups();
  const finalRefs = (await marked(vault, finalManifests)).refs;
  const heldElsewhere = new Set<string>();
  for (const [packId, entries] of finalPerPack) {
    if (condemned.has(packId)) continue;
    for (const e of entries) heldElsewhere.add(e.id.toString('latin1'));
  }
  for (const packId of [...condemned]) {
    const needed = (finalPerPack.get(packId) ?? []).some((e) => {
      const k = e.id.toString('latin1');
      return finalRefs.has(k) && !heldElsewhere.has(k);
    });
    if (needed) condemned.delete(packId);
  }
  const keep: IndexedPack[] = [];
  for (const [packId, entries] of finalPerPack) if (!condemned.has(packId)) keep.push({ packId, entries });
  if (finalKeys.length > 1 || condemned.size > 0) {
    await vault.writeIndex(keep);
    // An index object still under Object Lock stays; loadIndex ignores what it names of deleted packs.
    for (const k of finalKeys) await deleteUnlessRetained(vault, k);
    result.indexObjectsAfter = 1;
  } else result.indexObjectsAfter = finalKeys.length;
  for (const packId of condemned) {
    const info = packs.get(packId) ?? (await vault.store.stat(packKey(packId)));
    if (!(await deleteUnlessRetained(vault, packKey(packId)))) continue;
    if (info) result.bytesFreed += info.size;
    result.packsDeleted++;
  }
  await vault.store.delete(GC_PLAN_KEY);
  result.packsAfter = (await vault.listPacks()).size;
  result.blockMapsDeleted = await deleteOrphans(vault, 'blockmaps/', finalManifests.map((m) => m.id), cutoff);
  await deleteExpiredLeases(vault);
  if (vault.config.immutability) await pruneLedger(vault);
  return result;
}

/** Entries per pack, from every index object (a pack named twice keeps its first list). */
async function readPerPack(vault: Vault, keys: string[]): Promise<Map<string, PackEntry[]>> {
  const out = new Map<string, PackEntry[]>();
  for (const key of keys) {
    try {
      for (const p of await vault.readIndexObject(key)) if (!out.has(p.packId)) out.set(p.packId, p.entries);
    } catch (err) {
      if (!isCairnError(err, 'NOT_FOUND')) throw err;
    }
  }
  return out;
}

/**
 * The references of every backup; VAULT_CORRUPT when a block map or tree part cannot be read: the
 * chunks it names would look dead and be deleted. Tree parts are read from any copy, condemned packs
 * included (a backup that began before a plan may have reused a part held there; the sweep spares
 * such packs).
 */
async function marked(vault: Vault, manifests: Manifest[]): Promise<{ refs: Map<string, Set<string>> }> {
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const { refs, unreadable } = await collectReferences(vault, index, manifests);
  if (unreadable.length) {
    const u = unreadable[0];
    throw new CairnError(
      'VAULT_CORRUPT',
      `gc stopped before deleting anything: ${u.kind === 'tree-part' ? 'tree part ' : u.kind === 'tree-list' ? 'tree part list ' : ''}${u.key} of backup ${u.backup.name} (${u.backup.id}) cannot be read (${u.message}); ` +
        `run 'cairn vault verify', and delete that backup if it cannot be repaired`,
    );
  }
  return { refs };
}

/** Block maps (`blockmaps/<backup id>/<disk>`) whose backup has no manifest (deleted, or never committed) and that are old enough. */
async function deleteOrphans(vault: Vault, prefix: 'blockmaps/', backupIds: string[], cutoff: number): Promise<number> {
  const live = new Set(backupIds);
  let n = 0;
  for await (const o of vault.store.list(prefix)) {
    const backupId = o.key.split('/')[1];
    if (live.has(backupId) || o.modified.getTime() >= cutoff) continue;
    if (!(await deleteUnlessRetained(vault, o.key))) continue;
    n++;
  }
  return n;
}

async function deleteExpiredLeases(vault: Vault): Promise<void> {
  const live = new Set((await liveLeases(vault)).map((l) => `leases/${l.id}`));
  for await (const o of vault.store.list('leases/')) if (!live.has(o.key)) await vault.store.delete(o.key);
}
