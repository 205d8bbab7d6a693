import { LIMITS, type BackupSummary } from '../../shared/protocol/messages.js';
import type { Manifest } from '../../shared/vault/manifest.js';
import type { ResourceConfig } from './config.js';

/**
 * A backup as the control plane's catalog holds it (shared/protocol BackupSummary), from its
 * manifest: `logicalBytes` is what a restore writes (the sum of the disks' sizes), `host` the
 * manifest's host (cut to the protocol's 256 characters).
 */
export function backupSummary(m: Manifest, vault: string, resource: string): BackupSummary {
  return {
    id: m.id,
    name: m.name,
    vault,
    resource,
    kind: m.kind,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    bytesRead: m.bytesRead,
    bytesStored: m.bytesStored,
    consistency: m.consistency,
    host: m.host.slice(0, LIMITS.text),
    logicalBytes: m.disks.reduce((s, d) => s + d.size, 0),
  };
}

/**
 * The resource a backup belongs to: the name its manifest records (`resourceName`, written by the
 * agent daemon); for older backups and `cairn backup` ones, the one of `resources` whose disks are the backup's
 * (the manifest's resource key is its sources' names, one a line). A backup of disks no resource
 * names (made with `cairn backup`, or of a resource since removed from the config) is named after
 * its sources: the key with line breaks as ', ', cut to the protocol's name limit.
 */
export function resourceNameOf(m: Manifest, resources: readonly ResourceConfig[]): string {
  // The agent that made it named it: right even for another agent's backup in a shared vault.
  if (m.resourceName) return m.resourceName.slice(0, LIMITS.name);
  const sources = m.disks.map((d) => d.source).join('\n');
  const hit = resources.find((r) => {
    const key = r.disks.join('\n');
    return key === m.resource || key === sources;
  });
  if (hit) return hit.name;
  const name = (m.resource || sources || m.id).replace(/\p{Cc}+/gu, ', ').slice(0, LIMITS.name);
  return name === '' ? m.id : name;
}
