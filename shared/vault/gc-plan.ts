import { isCairnError } from '../errors.js';
import { open, seal } from './crypto.js';
import type { Vault } from './vault.js';

/**
 * The gc plan (FORMAT.md, "Garbage collection"): `gc/plan`, sealed JSON naming the packs gc has
 * condemned. While it exists, backups do not reuse chunks from those packs, so gc may delete them
 * once every backup that started before the plan has ended.
 */

export interface GcPlan {
  createdAt: string;
  condemnedPacks: string[];
}

export const GC_PLAN_KEY = 'gc/plan';
const AAD = Buffer.from('cairn/gc-plan/v1');

export async function readGcPlan(vault: Vault): Promise<GcPlan | undefined> {
  try {
    const sealed = await vault.store.get(GC_PLAN_KEY);
    return JSON.parse(open(vault.key.encryption, sealed, AAD, 'gc plan').toString('utf8')) as GcPlan;
  } catch (err) {
    if (isCairnError(err, 'NOT_FOUND')) return undefined;
    throw err;
  }
}

export async function writeGcPlan(vault: Vault, plan: GcPlan): Promise<void> {
  const body = seal(vault.key.encryption, Buffer.from(JSON.stringify(plan)), AAD);
  await vault.store.put(GC_PLAN_KEY, () => body);
}
