import type { BackupDisk } from '../../shared/vault/backup-disk.js';

/** Part of a read: bytes, or (no `data`) a run that reads as zeros. */
export interface Segment {
  offset: number;
  length: number;
  data?: Buffer;
}

/** A run of the export for `base:allocation`: `zero` runs are reported as NBD_STATE_HOLE | NBD_STATE_ZERO. */
export interface AllocationRun {
  length: number;
  zero: boolean;
}

/**
 * What the NBD server exports: a fixed-size device. The server checks every request against `size`
 * and `writable` before calling; implementations may rely on in-range, non-empty requests.
 * Errors are CairnErrors; the server answers them with NBD_EIO (and logs them).
 */
export interface BlockExport {
  readonly name: string;
  /** One line for NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description: string;
  readonly size: number;
  readonly writable: boolean;
  /** The bytes of [offset, offset + length) as consecutive segments covering the range. */
  read(offset: number, length: number): Promise<Segment[]>;
  /** Consecutive runs starting at `offset` covering at least one byte and at most `length`. */
  allocation(offset: number, length: number): AllocationRun[];
  /** A hint that [offset, offset + length) will be read soon. */
  cache(offset: number, length: number): void;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** May discard whole blocks inside the range (they then read as zeros). */
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Every write answered so far reaches stable storage. */
  flush(): Promise<void>;
  /** Persists what must survive and releases files; called once when the server stops. */
  close(): Promise<void>;
}

/** A disk of a backup, read-only. */
export class BackupExport implements BlockExport {
  readonly writable = false;

  constructor(
    readonly name: string,
    readonly description: string,
    private readonly disk: BackupDisk,
  ) {}

  get size(): number {
    return this.disk.size;
  }

  async read(offset: number, length: number): Promise<Segment[]> {
    const runs = this.disk.extents(offset, length);
    return Promise.all(
      runs.map(async (r) => (r.zero ? { offset: r.offset, length: r.length } : { offset: r.offset, length: r.length, data: await this.disk.read(r.offset, r.length) })),
    );
  }

  allocation(offset: number, length: number): AllocationRun[] {
    return this.disk.extents(offset, length).map((e) => ({ length: e.length, zero: e.zero }));
  }

  cache(offset: number, length: number): void {
    this.disk.prefetch(offset, length);
  }

  write(): Promise<void> {
    return Promise.reject(new Error('read-only export'));
  }

  writeZeroes(): Promise<void> {
    return Promise.reject(new Error('read-only export'));
  }

  trim(): Promise<void> {
    return Promise.reject(new Error('read-only export'));
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
