import { ZERO_ID } from './block-map.js';
import { ID_BYTES } from './crypto.js';
import type { Manifest } from './manifest.js';
import { readTreePart, treePartKey } from './tree.js';
import type { Vault } from './vault.js';

/**
 * The chunk ids that a set of backups references, as latin1 keys, each with the backups that use
 * it (for naming affected backups): every id of a disk backup's block maps and of a file-system
 * backup's tree (its files' chunks). Block maps and tree parts that cannot be read are reported,
 * not thrown; the other parts of a tree are still read.
 */
export async function collectReferences(
  vault: Vault,
  manifests: Manifest[],
): Promise<{ refs: Map<string, Set<string>>; unreadable: { backup: Manifest; key: string; message: string }[] }> {
  const refs = new Map<string, Set<string>>();
  const unreadable: { backup: Manifest; key: string; message: string }[] = [];
  const use = (id: Buffer, m: Manifest) => {
    if (id.equals(ZERO_ID)) return;
    const k = id.toString('latin1');
    const users = refs.get(k);
    if (users) users.add(m.id);
    else refs.set(k, new Set([m.id]));
  };
  for (const m of manifests) {
    for (const d of m.disks) {
      let ids: Buffer;
      try {
        ids = (await vault.readBlockMap(d.blockMap)).ids;
      } catch (err) {
        unreadable.push({ backup: m, key: d.blockMap, message: (err as Error).message });
        continue;
      }
      for (let at = 0; at < ids.length; at += ID_BYTES) use(ids.subarray(at, at + ID_BYTES), m);
    }
    if (m.tree) {
      for (let n = 0; n < m.tree.parts; n++) {
        try {
          for (const e of await readTreePart(vault, m.tree, n)) for (const c of e.chunks ?? []) use(c.id, m);
        } catch (err) {
          unreadable.push({ backup: m, key: treePartKey(m.tree.key, n), message: (err as Error).message });
        }
      }
    }
  }
  return { refs, unreadable };
}
