import type { ByteRange } from '../block-source.js';

/**
 * What Cairn needs from a storage array (or a software-defined block store) to back up its volumes
 * with the array's own snapshots and change tracking. A driver speaks one product's management
 * interface: `rbd-driver.ts` (Ceph RBD, through the `rbd` tool), `dorado-driver.ts` (Huawei OceanStor
 * Dorado, through its REST API). `array-source.ts` drives every driver the same way:
 *
 *   findVolume (each disk) -> snapshotGroup (all disks of one array, one point in time) ->
 *   diff (parent's snapshot -> new one) or allocated -> openSnapshot + read -> commit: delete the
 *   parent's snapshot, keep the new one as the next change token | abort: delete the new one
 *
 * Errors are CairnErrors: NOT_FOUND for a volume or snapshot that does not exist,
 * SOURCE_AUTH_FAILED / CERT_UNTRUSTED for a refused login or certificate, SOURCE_UNREADABLE otherwise.
 */
export interface ArrayDriver {
  /** Canonical address of the array (connection, pool): part of every volume's name in backups, e.g. 'rbd://rbd' or 'dorado://10.0.0.5'. Volumes of one location are captured as one group. */
  readonly location: string;
  /** Every volume the array shows this driver (for `cairn` to list what can be backed up). */
  listVolumes(): Promise<ArrayVolume[]>;
  /** The volume by name or id; NOT_FOUND with the names known when there is none. */
  findVolume(nameOrId: string): Promise<ArrayVolume>;
  /**
   * Snapshots the volumes at one point in time (the array's consistency-group snapshot where it has
   * one), each named `name`. Returns one snapshot per volume, in order. On failure nothing is left.
   */
  snapshotGroup(volumes: ArrayVolume[], name: string): Promise<GroupSnapshot>;
  /** Snapshots of the volume (Cairn's are found by name prefix for cleanup). */
  listSnapshots(volume: ArrayVolume): Promise<ArraySnapshot[]>;
  /**
   * Byte ranges of `to` that may differ from `from` (both snapshots of `volume`), sorted and not
   * overlapping; ranges the array discarded count as changed (they read as zeros). Undefined when
   * the array cannot tell (then the engine reads every allocated range and compares).
   */
  diff(volume: ArrayVolume, from: ArraySnapshot, to: ArraySnapshot): Promise<ByteRange[] | undefined>;
  /** Ranges of the snapshot that may hold data; undefined when the array cannot tell (read everything). */
  allocated(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<ByteRange[] | undefined>;
  /** Opens the snapshot's data for reading (random access, concurrent reads). */
  openSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<SnapshotReader>;
  /** Deletes the snapshot; a snapshot that is gone already is not an error. */
  deleteSnapshot(volume: ArrayVolume, snapshot: ArraySnapshot): Promise<void>;
  /** Ends the session with the array. Must not throw. */
  close(): Promise<void>;
}

export interface ArrayVolume {
  /** The array's id of the volume (RBD: the image name; Dorado: the LUN ID). */
  id: string;
  name: string;
  /** Size in bytes. */
  size: number;
  /** Stable identity for the backup's name (Dorado: the LUN's WWN; RBD: the image id). */
  uid: string;
}

export interface ArraySnapshot {
  /** The array's id of the snapshot (RBD: snapshot id; Dorado: snapshot ID). */
  id: string;
  /** The name given at creation; Cairn's change token. */
  name: string;
}

export interface GroupSnapshot {
  /** One per volume, same order as given. */
  snapshots: ArraySnapshot[];
  /** True when the array took all of them at one instant (a consistency-group snapshot). */
  atomic: boolean;
}

export interface SnapshotReader {
  readonly size: number;
  /** Reads up to `length` bytes at `position`; short only at the end. May run concurrently. */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}
