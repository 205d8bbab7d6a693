import { CairnError } from '../errors.js';
import { open, seal } from './crypto.js';

/**
 * Backup manifests (FORMAT.md, "Backup manifests"): `backups/<id>`, sealed JSON, written last. A
 * backup exists exactly when its manifest does; everything it names was stored before it.
 */

export const MANIFEST_VERSION = 1;

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
  /** How changes were found: 'all' (full read), 'compare' (read all, compare with parent). */
  changeDetection: 'all' | 'compare';
}

export interface Manifest {
  version: number;
  id: string;
  name: string;
  kind: BackupKind;
  /** Identifies what was backed up; incrementals chain within one resource. */
  resource: string;
  parent: string | null;
  startedAt: string;
  finishedAt: string;
  host: string;
  consistency: 'crash' | 'app';
  disks: DiskRecord[];
  bytesRead: number;
  bytesStored: number;
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
  return m;
}
