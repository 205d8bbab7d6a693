import { manifestKey, type Manifest } from '../../shared/vault/manifest.js';
import { checkDeletable, deleteUnlessRetained } from '../../shared/vault/retention.js';
import type { Vault } from '../../shared/vault/vault.js';

/**
 * Deletes one backup: its manifest first (the backup is gone at once), then its block maps (gc
 * deletes any left by an interrupted delete). Chunks, a file-system backup's tree parts among them,
 * stay until gc finds that no backup needs them. Refused (IMMUTABLE) while Object Lock retains it.
 */
export async function deleteBackup(vault: Vault, m: Manifest): Promise<void> {
  checkDeletable(vault, m);
  await vault.store.delete(manifestKey(m.id));
  for (const d of m.disks) await deleteUnlessRetained(vault, d.blockMap);
}
