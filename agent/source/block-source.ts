/**
 * The seam between the backup engine and where disk data comes from.
 *
 * A source is one disk. Sources that belong to one server and can be captured at one point in time
 * share a CaptureGroup (a QEMU daemon's disks: one QMP transaction). The engine drives every backup
 * the same way:
 *
 *   quiesce -> capture every group -> thaw (once every source is point-in-time) ->
 *   plan each disk (what to read) -> read, hash, store -> manifest -> commit (or abort) every group
 *
 * A source without a group is captured by reading it (a raw file or device, a plain NBD export), so
 * a freeze is held until it has been read.
 */

/** How an incremental found its changes: a dirty bitmap, reading everything and comparing chunk ids with the parent, or no parent at all. */
export type ChangeMethod = 'bitmap' | 'compare' | 'full';

export interface ByteRange {
  offset: number;
  length: number;
}

/** What the engine knows of the same disk in the parent backup, when the parent's block map can be reused. */
export interface ParentDisk {
  size: number;
  /** The parent's change token for this disk (e.g. the dirty bitmap created when it was captured). */
  changeToken: string | undefined;
}

export interface ReadPlan {
  method: ChangeMethod;
  /**
   * Sorted, non-overlapping byte ranges to read. Chunks outside them are unchanged from the parent
   * ('bitmap') or all zeros ('full', 'compare': unallocated). Undefined: read the whole disk.
   */
  ranges?: ByteRange[];
  /** Bytes the tracker reported as changed ('bitmap'), before rounding to chunks. */
  dirtyBytes?: number;
  /** Token of this capture, for the next backup to find changes since this one. */
  changeToken?: string;
  /** Why the tracker could not be used (a lost bitmap): stored in the backup. */
  warning?: string;
}

export interface CaptureContext {
  /** Id of the backup being made. */
  backupId: string;
  /** Id of the vault; change tokens of other vaults' chains on the same disk are left alone. */
  vaultId: string;
  /** Per source in the group (same order as CaptureGroup.sources): the parent's disk, if any. */
  parents: (ParentDisk | undefined)[];
}

/** What a capture achieved, when the source quiesces the workload itself (a VMware quiesced snapshot). */
export interface CaptureResult {
  /**
   * 'app_consistent': the source quiesced the workload for the view (e.g. VMware Tools); 'crash_consistent':
   * it tried and fell back. Undefined: the source does not quiesce (consistency comes from Cairn's hooks).
   */
  consistency?: 'app_consistent' | 'crash_consistent';
  /** Stored in the backup (why quiescing fell back, why a tracker was reset). */
  warnings?: string[];
}

/** Disks captured together at one point in time, with their change tracking lifecycle. */
export interface CaptureGroup {
  /** Takes the point-in-time view of every disk and starts tracking changes from it. */
  capture(ctx: CaptureContext): Promise<CaptureResult | void>;
  /** The backup is committed: drop the previous tracking point and the view. Must not throw. */
  commit(): Promise<string[]>;
  /** The backup failed: drop the new tracking point and the view, keep the previous one. Must not throw. */
  abort(): Promise<void>;
}

export interface BlockSource {
  /** Stable name of the disk, e.g. the absolute path; backups of the same names chain as incrementals. */
  readonly name: string;
  /** Size in bytes (of the captured view, once captured). */
  readonly size: number;
  /** Set for sources captured together with others; the engine calls capture() before reading. */
  readonly group?: CaptureGroup;
  /**
   * What to read. Without a plan the engine reads everything ('compare' with a parent, else 'full').
   * `parent` is undefined for a first or --full backup.
   */
  plan?(parent: ParentDisk | undefined): Promise<ReadPlan>;
  /** Reads up to `length` bytes at `position` into `buffer`; returns the bytes read (short only at the end). May run concurrently. */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}
