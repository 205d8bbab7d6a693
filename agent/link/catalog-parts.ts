import { encodeMessage, LIMITS, MAX_FRAME_BYTES, type BackupSummary, type CatalogSyncMessage } from '../../shared/protocol/messages.js';

/**
 * Splits a vault's catalog into `catalog-sync` frames of one sync: parts 0..n, each with at most
 * LIMITS.catalogBackups backups and each fitting one frame (MAX_FRAME_BYTES), the last with
 * `last: true`. An empty catalog is one empty part. Every frame is encoded with `encodeMessage`,
 * so the control plane accepts what this returns. `newId` gives each part its message id.
 */
export function catalogParts(vault: string, syncId: string, backups: readonly BackupSummary[], newId: () => string): { messageId: string; body: string }[] {
  const parts: { messageId: string; body: string }[] = [];
  let i = 0;
  do {
    let n = Math.min(LIMITS.catalogBackups, backups.length - i);
    const id = newId();
    for (;;) {
      const message: CatalogSyncMessage = {
        v: 1,
        type: 'catalog-sync',
        id,
        vault,
        syncId,
        part: parts.length,
        last: i + n >= backups.length,
        backups: backups.slice(i, i + n),
      };
      const size = Buffer.byteLength(JSON.stringify(message), 'utf8');
      if (size > MAX_FRAME_BYTES && n > 1) {
        // Shrink in proportion, with a margin; one backup always fits (its fields are bounded).
        n = Math.max(1, Math.min(n - 1, Math.floor((n * MAX_FRAME_BYTES * 0.95) / size)));
        continue;
      }
      parts.push({ messageId: id, body: encodeMessage(message) });
      i += n;
      break;
    }
  } while (i < backups.length);
  return parts;
}
