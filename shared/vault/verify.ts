import { CairnError } from '../errors.js';
import { ID_BYTES } from './crypto.js';
import type { Manifest } from './manifest.js';
import { packKey, type PackEntry } from './pack.js';
import { collectReferences } from './references.js';
import { transferable } from './disk-reader.js';
import { SlotRunner } from './slot-runner.js';
import type { Vault } from './vault.js';
import type { WorkerPool } from './worker-pool.js';

export interface VerifyProblem {
  /** What kind of damage: a missing or unreadable object, or a chunk missing or corrupt. */
  kind: 'missing-pack' | 'bad-pack' | 'missing-chunk' | 'corrupt-chunk' | 'bad-block-map' | 'bad-tree' | 'bad-index';
  object: string;
  message: string;
}

export interface AffectedBackup {
  id: string;
  name: string;
  missingChunks: number;
  corruptChunks: number;
}

export interface VerifyResult {
  ok: boolean;
  readData: boolean;
  backups: number;
  packs: number;
  chunksChecked: number;
  bytesChecked: number;
  problems: VerifyProblem[];
  affected: AffectedBackup[];
}

/**
 * Checks a vault. Always: every manifest, block map and tree part decodes, every chunk a backup needs (its block maps', its tree parts or its files') is in an
 * index, every indexed pack exists with the size its index implies. With readData: every pack is
 * read whole, its header authenticated, and every chunk decrypted, decompressed and hashed in the
 * workers. Every problem is listed, and every backup that needs a missing or corrupt chunk is named.
 */
export async function verifyVault(
  vault: Vault,
  opts: { readData: boolean; pool?: WorkerPool; onProgress?: (done: number, total: number) => void },
): Promise<VerifyResult> {
  const problems: VerifyProblem[] = [];
  const manifests = await vault.listBackups();
  const { index } = await vault.loadIndex({ includeCondemned: true });
  const { refs, unreadable } = await collectReferences(vault, index, manifests);
  const byId = new Map(manifests.map((m) => [m.id, m] as const));
  const affected = new Map<string, AffectedBackup>();
  const blame = (k: string, field: 'missingChunks' | 'corruptChunks') => {
    for (const backupId of refs.get(k) ?? []) {
      const m = byId.get(backupId)!;
      const a = affected.get(m.id) ?? { id: m.id, name: m.name, missingChunks: 0, corruptChunks: 0 };
      a[field]++;
      affected.set(m.id, a);
    }
  };
  for (const u of unreadable) {
    problems.push({ kind: u.kind !== 'block-map' ? 'bad-tree' : 'bad-block-map', object: u.key, message: u.message });
    affected.set(u.backup.id, affected.get(u.backup.id) ?? { id: u.backup.id, name: u.backup.name, missingChunks: 0, corruptChunks: 0 });
  }

  const packs = await vault.listPacks();
  const entriesByPack = new Map<string, PackEntry[]>();
  for (const [id, loc] of index.entries()) {
    const list = entriesByPack.get(loc.packId) ?? [];
    list.push({ id, ...loc });
    entriesByPack.set(loc.packId, list);
  }
  const badChunks = new Set<string>();
  for (const [packId, entries] of entriesByPack) {
    const info = packs.get(packId);
    const end = Math.max(...entries.map((e) => e.offset + e.length));
    if (!info) {
      // An immutable vault keeps index objects that outlive packs gc deleted: harmless unless a
      // backup needs a chunk that only such a pack held.
      if (vault.config.immutability && !entries.some((e) => refs.has(e.id.toString('latin1')))) continue;
      problems.push({ kind: 'missing-pack', object: packKey(packId), message: `pack ${packId} is named by an index but missing` });
      for (const e of entries) badChunks.add(e.id.toString('latin1'));
    } else if (info.size < end) {
      problems.push({ kind: 'bad-pack', object: packKey(packId), message: `pack ${packId} is shorter (${info.size}) than its index says` });
      for (const e of entries) badChunks.add(e.id.toString('latin1'));
    }
  }
  for (const k of refs.keys()) {
    if (!index.has(Buffer.from(k, 'latin1'))) {
      problems.push({
        kind: 'missing-chunk',
        object: Buffer.from(k, 'latin1').toString('hex'),
        message: `chunk ${Buffer.from(k, 'latin1').toString('hex')} is needed but in no index`,
      });
      blame(k, 'missingChunks');
    } else if (badChunks.has(k)) blame(k, 'missingChunks');
  }

  let chunksChecked = 0;
  let bytesChecked = 0;
  if (opts.readData) {
    if (!opts.pool) throw new CairnError('INTERNAL', 'verify --read-data needs a worker pool');
    const pool = opts.pool;
    let done = 0;
    const total = entriesByPack.size;
    const runner = new SlotRunner(pool.size * 2);
    for (const [packId, entries] of entriesByPack) {
      if (!packs.has(packId)) continue;
      const slot = await runner.acquire();
      if (slot === undefined) break;
      runner.start(slot, async () => {
        const r = await checkPack(vault, pool, packId, entries, problems, (k) => {
          badChunks.add(k);
          if (refs.has(k)) blame(k, 'corruptChunks');
        });
        chunksChecked += r.chunks;
        bytesChecked += r.bytes;
        opts.onProgress?.(++done, total);
      });
    }
    await runner.drain();
  }
  const affectedList = [...affected.values()].sort((a, b) => (byId.get(a.id)!.startedAt < byId.get(b.id)!.startedAt ? -1 : 1));
  return {
    ok: problems.length === 0,
    readData: opts.readData,
    backups: manifests.length,
    packs: packs.size,
    chunksChecked,
    bytesChecked,
    problems,
    affected: affectedList,
  };
}

async function checkPack(
  vault: Vault,
  pool: WorkerPool,
  packId: string,
  entries: PackEntry[],
  problems: VerifyProblem[],
  onBad: (k: string) => void,
): Promise<{ chunks: number; bytes: number }> {
  const key = packKey(packId);
  let data: Buffer;
  try {
    data = await vault.store.get(key);
  } catch (err) {
    problems.push({ kind: 'missing-pack', object: key, message: (err as Error).message });
    for (const e of entries) onBad(e.id.toString('latin1'));
    return { chunks: 0, bytes: 0 };
  }
  try {
    await vault.readPackHeader(packId, data.length);
  } catch (err) {
    problems.push({ kind: 'bad-pack', object: key, message: (err as Error).message });
  }
  const own = transferable(data);
  const ids = Buffer.allocUnsafeSlow(entries.length * ID_BYTES);
  entries.forEach((e, n) => e.id.copy(ids, n * ID_BYTES));
  const reply = await pool.call(
    pool.leastBusy(),
    {
      type: 'decode',
      job: 0,
      where: `pack ${packId}`,
      data: own,
      ids: ids.buffer as ArrayBuffer,
      items: entries.map((e) => ({ offset: e.offset, length: e.length, codec: e.codec, rawLength: e.rawLength })),
    },
    [own, ids.buffer as ArrayBuffer],
  );
  if (reply.type !== 'decoded') throw new CairnError('INTERNAL', 'unexpected worker reply');
  for (const e of reply.errors) {
    const entry = entries[e.index];
    problems.push({ kind: 'corrupt-chunk', object: key, message: e.message });
    onBad(entry.id.toString('latin1'));
  }
  return { chunks: entries.length, bytes: data.length };
}
