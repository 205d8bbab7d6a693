import { CairnError } from '../errors.js';
import { open, seal } from './crypto.js';
import type { TreeRecord } from './tree.js';

/**
 * Backup manifests (FORMAT.md, "Backup manifests"): `backups/<id>`, sealed JSON, written last. A
 * backup exists exactly when its manifest does; everything it names was stored before it.
 */

/**
 * Highest manifest version this Cairn reads. A file-system backup's manifest is version 2: a Cairn
 * that does not know trees must refuse it (VAULT_VERSION) rather than see a backup without data and
 * let gc delete its chunks. Disk backups stay version 1.
 */
export const MANIFEST_VERSION = 2;

export type BackupKind = 'full' | 'incremental';

export interface DiskRecord {
  /** Position of the disk in the backup, 0-based. */
  index: number;
  /** The source as given (absolute path), for display and to match later backups. */
  source: string;
  size: number;
  chunkSize: number;
  blockMap: string;
  /** Bytes of the disk that are not all-zero chunks. */
  usedBytes: number;
  /** Chunks this backup uploaded for this disk, and their stored (compressed, sealed) size. */
  newChunks: number;
  newBytes: number;
  /**
   * How changes were found: 'full' (no parent: every used block read), 'compare' (every used block
   * read and its chunk id compared with the parent's), 'bitmap' (only the blocks a dirty bitmap
   * reported read; the rest taken from the parent's block map). Version-1 manifests written before
   * change tracking say 'all' for 'full'; readers see 'full'.
   */
  changeDetection: 'full' | 'compare' | 'bitmap';
  /** Bytes read from the source for this disk (absent in manifests written before change tracking). */
  bytesRead?: number;
  /** Bytes a dirty bitmap reported changed ('bitmap' only), before rounding to chunks. */
  dirtyBytes?: number;
  /** What the next backup asks the source for changes since this one (e.g. the dirty bitmap started at this capture). */
  changeToken?: string;
}

/** What a backup actually achieved: 'app_consistent' only when quiesce succeeded and held through the capture. */
export type Consistency = 'crash_consistent' | 'app_consistent';

export interface Manifest {
  version: number;
  id: string;
  name: string;
  kind: BackupKind;
  /** Identifies what was backed up; incrementals chain within one resource. */
  resource: string;
  /** The name the agent's config gives this resource (backups made by `cairn agent run`); absent for `cairn backup`. */
  resourceName?: string;
  parent: string | null;
  startedAt: string;
  finishedAt: string;
  host: string;
  consistency: Consistency;
  disks: DiskRecord[];
  /** 'filesystem' for a `dir` backup (its data in `tree`, `disks` empty); absent or 'disk' for disk backups. */
  type?: 'disk' | 'filesystem';
  /** The tree of a file-system backup (tree.ts). */
  tree?: TreeRecord;
  bytesRead: number;
  bytesStored: number;
  /** What did not go as asked but did not fail the backup: a lost bitmap (compare used), a failed quiesce hook. */
  warnings?: string[];
}

export function manifestKey(id: string): string {
  return `backups/${id}`;
}

function aad(id: string): Buffer {
  return Buffer.from(`cairn/backup/v1/${id}`);
}

export function encodeManifest(key: Buffer, m: Manifest): Buffer {
  return seal(key, Buffer.from(JSON.stringify(m)), aad(m.id));
}

export function decodeManifest(key: Buffer, id: string, sealed: Buffer): Manifest {
  const what = `backup manifest ${id}`;
  const m = JSON.parse(open(key, sealed, aad(id), what).toString('utf8')) as Manifest;
  if (typeof m.version !== 'number' || m.version > MANIFEST_VERSION) {
    throw new CairnError('VAULT_VERSION', `${what} has version ${m.version}; this Cairn reads up to ${MANIFEST_VERSION}`);
  }
  if (m.id !== id) throw new CairnError('VAULT_CORRUPT', `${what} names itself ${m.id}`);
  // Names used before change tracking and quiesce existed.
  const legacy = m as unknown as { consistency: string; disks: { changeDetection: string }[] };
  if (legacy.consistency === 'crash') m.consistency = 'crash_consistent';
  else if (legacy.consistency === 'app') m.consistency = 'app_consistent';
  for (const d of legacy.disks) if (d.changeDetection === 'all') d.changeDetection = 'full';
  return m;
}

/**
 * Adds the manifest's own sealed size to `bytesStored` (which counts what the backup stored). That
 * size depends on the number's own digits, so the two are settled; it converges in a few rounds.
 */
export function countManifestBytes(key: Buffer, m: Manifest): void {
  const base = m.bytesStored;
  for (let size = 0, i = 0; i < 8; i++) {
    m.bytesStored = base + size;
    const next = encodeManifest(key, m).length;
    if (next === size) break;
    size = next;
  }
}
