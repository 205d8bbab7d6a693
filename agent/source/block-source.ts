/**
 * The seam between the backup engine and where disk data comes from. A source is one disk of a
 * point-in-time view (for raw files and devices without a tracker: the file as it is while read).
 * Changed-block tracking (NBD dirty bitmaps, VMware CBT) will add change reports here; without them
 * the engine reads everything and compares chunk ids with the parent backup.
 */
export interface BlockSource {
  /** Stable name of the disk, e.g. the absolute path; backups of the same names chain as incrementals. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads up to `length` bytes at `position` into `buffer`; returns the bytes read (short only at the end). */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}
