import { CairnError, isCairnError } from '../errors.js';
import { hexId } from '../clock.js';
import type { BlockMap } from './block-map.js';
import type { ChunkIndex } from './chunk-index.js';
import { packKey } from './pack.js';
import type { Vault } from './vault.js';

/**
 * Immutable vaults (FORMAT.md, "Immutability"). On a bucket with Object Lock, every object a backup
 * needs is kept in COMPLIANCE mode for at least `days` after the backup: nobody, the bucket's owner
 * included, can delete or overwrite it before then.
 *
 * Retention dates come in generations, as Veeam's block generations do: time is cut into windows of
 * `generationDays`, and everything written or re-protected in a window gets the same date, the
 * window's end plus `days`. A pack that a new backup reuses needs a later date only when its date falls
 * short of that backup's time plus `days`, which happens at most once per generation; so a backup
 * sends retention updates for a few packs once per window instead of for every reused pack every time.
 * Which packs got a later date is recorded in `retention/` objects, so no pack needs a request to find
 * its date.
 */

export interface Immutability {
  days: number;
  generationDays: number;
}

const DAY = 86_400_000;
export const DEFAULT_GENERATION_DAYS = 10;

/** The retention date of everything written or re-protected at `at`: its generation's end plus `days`. */
export function retentionDate(im: Immutability, at: Date): Date {
  const g = im.generationDays * DAY;
  return new Date((Math.floor(at.getTime() / g) + 1) * g + im.days * DAY);
}

interface LedgerRecord {
  until: string;
  packs: string[];
}

/** The `retention/` records, each with its key. */
async function readLedger(vault: Vault): Promise<(LedgerRecord & { key: string })[]> {
  const out: (LedgerRecord & { key: string })[] = [];
  for await (const o of vault.store.list('retention/')) {
    out.push({ key: o.key, ...(JSON.parse((await vault.store.get(o.key)).toString('utf8')) as LedgerRecord) });
  }
  return out;
}

/**
 * The date before which each pack cannot be deleted: the date it was written with, or a later one a
 * `retention/` record gave it. `packs` is Vault.listPacks(); a pack's write time is its modification
 * time. `ledger` is readLedger's result when the caller has it already.
 */
export async function packRetention(
  vault: Vault,
  packs: Map<string, { modified: Date }>,
  ledger?: LedgerRecord[],
): Promise<Map<string, Date>> {
  const im = vault.config.immutability;
  const out = new Map<string, Date>();
  if (!im) return out;
  const extended = new Map<string, Date>();
  for (const rec of ledger ?? (await readLedger(vault))) {
    const until = new Date(rec.until);
    for (const p of rec.packs) if (!(extended.get(p)! >= until)) extended.set(p, until);
  }
  for (const [id, info] of packs) {
    // The date was computed from the writer's clock; allow it to run an hour behind the store's.
    const written = retentionDate(im, new Date(info.modified.getTime() - 3_600_000));
    const later = extended.get(id);
    out.set(id, later && later > written ? later : written);
  }
  return out;
}

/**
 * Before a backup commits: gives every pack its block maps use, and the vault's config and key files,
 * at least the retention a new object gets now, so the whole backup stays protected for `days`.
 * Returns how many objects got a later date.
 */
export async function protectBackup(vault: Vault, index: ChunkIndex, maps: BlockMap[]): Promise<number> {
  if (!vault.config.immutability || !vault.store.extendRetention) return 0;
  const used = new Set<string>();
  for (const map of maps) {
    for (let p = 0; p < map.count; p++) {
      if (map.isZero(p)) continue;
      const loc = index.get(map.id(p));
      if (loc) used.add(loc.packId);
    }
  }
  return protectPacks(vault, used);
}

/** protectBackup for a backup whose chunks the caller has mapped to packs already (a file-system backup's tree). */
export async function protectPacks(vault: Vault, used: Set<string>): Promise<number> {
  const im = vault.config.immutability;
  if (!im || !vault.store.extendRetention) return 0;
  const now = vault.clock.now();
  const until = retentionDate(im, now);
  const needFrom = now.getTime() + im.days * DAY;
  const ledger = await readLedger(vault);
  const current = await packRetention(vault, await vault.listPacks(), ledger);
  const extend = [...used].filter((id) => (current.get(id)?.getTime() ?? 0) < needFrom);
  for (const id of extend) await vault.store.extendRetention(packKey(id), until);
  // The config and key files are needed to read any backup; they were written at init and are
  // re-protected with the first record of each generation (their dates are not recorded otherwise).
  const generation = `retention/${until.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`;
  const metaDone = ledger.some((r) => r.key.startsWith(generation));
  if (!metaDone) {
    await vault.store.extendRetention('config', until);
    for await (const o of vault.store.list('keys/')) await vault.store.extendRetention(o.key, until);
  }
  if (extend.length || !metaDone) {
    const rec: LedgerRecord = { until: until.toISOString(), packs: extend };
    await vault.store.put(`${generation}-${hexId(vault.ids, 4)}`, () => Buffer.from(JSON.stringify(rec)), { retainUntil: until });
  }
  return extend.length + (metaDone ? 0 : 1);
}

/** Refuses to delete a backup whose retention has not passed. */
export function checkDeletable(vault: Vault, backup: { name: string; id: string; finishedAt: string }): void {
  const im = vault.config.immutability;
  if (!im) return;
  const until = retentionDate(im, new Date(backup.finishedAt));
  if (vault.clock.now() < until) {
    throw new CairnError(
      'IMMUTABLE',
      `backup ${backup.name} (${backup.id}) is immutable until ${until.toISOString()}: the vault at ${vault.store.location} keeps every backup ${im.days} days under Object Lock; delete it after that date`,
    );
  }
}

/** Deletes an object, or leaves it when Object Lock still keeps it; true when it was deleted. */
export async function deleteUnlessRetained(vault: Vault, key: string): Promise<boolean> {
  try {
    await vault.store.delete(key);
    return true;
  } catch (err) {
    if (isCairnError(err, 'IMMUTABLE')) return false;
    throw err;
  }
}

/** Ledger records whose date has passed say nothing any more; gc removes them. */
export async function pruneLedger(vault: Vault): Promise<number> {
  const now = vault.clock.now();
  let n = 0;
  for (const rec of await readLedger(vault)) {
    if (new Date(rec.until) < now && (await deleteUnlessRetained(vault, rec.key))) n++;
  }
  return n;
}
