import { ZERO_ID } from './block-map.js';
import { ID_BYTES } from './crypto.js';
import type { Manifest } from './manifest.js';
import type { Vault } from './vault.js';

/**
 * The chunk ids that a set of backups references, as latin1 keys, each with the backups that use
 * it (for naming affected backups). Block maps that cannot be read are reported, not thrown.
 */
export async function collectReferences(
  vault: Vault,
  manifests: Manifest[],
): Promise<{ refs: Map<string, Set<string>>; unreadable: { backup: Manifest; key: string; message: string }[] }> {
  const refs = new Map<string, Set<string>>();
  const unreadable: { backup: Manifest; key: string; message: string }[] = [];
  for (const m of manifests) {
    for (const d of m.disks) {
      let ids: Buffer;
      try {
        ids = (await vault.readBlockMap(d.blockMap)).ids;
      } catch (err) {
        unreadable.push({ backup: m, key: d.blockMap, message: (err as Error).message });
        continue;
      }
      for (let at = 0; at < ids.length; at += ID_BYTES) {
        const id = ids.subarray(at, at + ID_BYTES);
        if (id.equals(ZERO_ID)) continue;
        const k = id.toString('latin1');
        const users = refs.get(k);
        if (users) users.add(m.id);
        else refs.set(k, new Set([m.id]));
      }
    }
  }
  return { refs, unreadable };
}
