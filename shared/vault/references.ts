import { ZERO_ID } from './block-map.js';
import type { ChunkIndex } from './chunk-index.js';
import { ID_BYTES } from './crypto.js';
import type { Manifest } from './manifest.js';
import { readPartList, readTreePart, treeListIds } from './tree.js';
import type { Vault } from './vault.js';

/** A block map, tree part or part list that could not be read: `key` is the block map's object key or the chunk id (hex). */
export interface UnreadableObject {
  backup: Manifest;
  kind: 'block-map' | 'tree-part' | 'tree-list';
  key: string;
  message: string;
}

/**
 * The chunk ids that a set of backups references, as latin1 keys, each with the backups that use
 * it (for naming affected backups): every id of a disk backup's block maps, and of a file-system
 * backup's tree: its part lists and parts (chunks themselves) and its files' chunks. Tree parts
 * and lists are located through `index` (Vault.loadIndex). Block maps, parts and lists that cannot be
 * read are reported, not thrown; the other parts of a tree are still read.
 */
export async function collectReferences(
  vault: Vault,
  index: ChunkIndex,
  manifests: Manifest[],
): Promise<{ refs: Map<string, Set<string>>; unreadable: UnreadableObject[] }> {
  const refs = new Map<string, Set<string>>();
  const unreadable: UnreadableObject[] = [];
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
        unreadable.push({ backup: m, kind: 'block-map', key: d.blockMap, message: (err as Error).message });
        continue;
      }
      for (let at = 0; at < ids.length; at += ID_BYTES) use(ids.subarray(at, at + ID_BYTES), m);
    }
    if (!m.tree) continue;
    // A tree record of another layout throws (VAULT_VERSION): gc must not go on without its chunks.
    const lists = treeListIds(m.tree);
    const parts = m.tree.partLists === undefined ? [...m.tree.parts!] : [];
    for (const list of lists) {
      use(Buffer.from(list, 'hex'), m);
      try {
        for (const part of await readPartList(vault, index, list)) parts.push(part);
      } catch (err) {
        unreadable.push({ backup: m, kind: 'tree-list', key: list, message: (err as Error).message });
      }
    }
    for (const part of parts) {
      use(Buffer.from(part, 'hex'), m);
      try {
        for (const e of await readTreePart(vault, index, part)) for (const c of e.chunks ?? []) use(c.id, m);
      } catch (err) {
        unreadable.push({ backup: m, kind: 'tree-part', key: part, message: (err as Error).message });
      }
    }
  }
  return { refs, unreadable };
}
