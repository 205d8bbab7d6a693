import { open, readFile, rename, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { BackupDisk } from '../../shared/vault/backup-disk.js';
import { BackupExport, type AllocationRun, type BlockExport, type Segment } from './block-export.js';

/** Granularity of the overlay: a write smaller than a block copies the rest of the block in first. */
export const OVERLAY_BLOCK = 4096;
const FORMAT = 'cairn-overlay';
const VERSION = 1;

/** What an overlay belongs to: it is only ever combined with exactly this disk. */
export interface OverlayIdentity {
  vault: string;
  backup: string;
  disk: number;
  size: number;
}

interface SidecarHeader extends OverlayIdentity {
  format: string;
  version: number;
  blockSize: number;
}

/** The files of an overlay: the data file the user names, its block map and its lock. */
export function overlayFiles(path: string): { data: string; map: string; lock: string } {
  return { data: path, map: `${path}.cairn-map`, lock: `${path}.cairn-lock` };
}

const enum Source {
  Backup,
  Overlay,
  Zero,
}

/**
 * A copy-on-write overlay over a disk of a backup: the export is writable, writes go to a sparse
 * file of the disk's size (`--overlay FILE`, data at the same offsets), and the backup is never
 * touched. A sidecar (`FILE.cairn-map`) says which 4 KiB blocks the overlay holds and which were
 * zeroed (write-zeroes, trim); every other block reads from the backup.
 *
 * Crash safety: the sidecar is rewritten (temp file, fsync, rename) on every flush and FUA write,
 * after the data file is fsynced, so after a crash the overlay is exactly as at the last flush or
 * newer (a block whose map bit was not yet persisted reads from the backup, as an unflushed write
 * to a disk may be lost). Reuse: the sidecar names the vault, backup, disk and size; a later
 * serve-nbd of the same disk continues with the overlay, any other disk is refused. A lock file
 * (`FILE.cairn-lock`, with the owner's pid) keeps two servers from using one overlay at once.
 */
export class OverlayExport implements BlockExport {
  readonly writable = true;
  private readonly base: BackupExport;
  private readonly blocks: number;
  private mapDirty = false;
  private dataDirty = false;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly name: string,
    readonly description: string,
    private readonly disk: BackupDisk,
    private readonly path: string,
    private readonly identity: OverlayIdentity,
    private readonly fh: FileHandle,
    private readonly held: Uint8Array,
    private readonly zeroed: Uint8Array,
  ) {
    this.base = new BackupExport(name, description, disk);
    this.blocks = Math.ceil(disk.size / OVERLAY_BLOCK);
  }

  /**
   * Opens the overlay at `path` for `identity`, creating it (data file, empty map) if neither file
   * exists. Refuses with a clear error: an overlay of another disk, a file that is not an overlay, an
   * overlay in use by another process.
   */
  static async open(name: string, description: string, disk: BackupDisk, path: string, identity: OverlayIdentity): Promise<OverlayExport> {
    const files = overlayFiles(path);
    await takeLock(files.lock, path);
    try {
      const dataExists = await exists(files.data);
      const mapExists = await exists(files.map);
      const bytes = Math.ceil(Math.ceil(identity.size / OVERLAY_BLOCK) / 8);
      let held: Uint8Array = new Uint8Array(bytes);
      let zeroed: Uint8Array = new Uint8Array(bytes);
      let fh: FileHandle;
      if (!dataExists && !mapExists) {
        try {
          fh = await open(files.data, 'wx+');
          await fh.truncate(identity.size);
        } catch (err) {
          throw fromSystemError(err, 'cannot create the overlay', files.data);
        }
        await writeMap(files.map, identity, held, zeroed);
      } else {
        if (!mapExists) {
          throw new CairnError(
            'ALREADY_EXISTS',
            `--overlay ${path} exists and is not a Cairn overlay (no ${files.map} beside it); give a path that does not exist yet`,
          );
        }
        if (!dataExists) {
          throw new CairnError('NOT_FOUND', `overlay data ${path} is missing but its map ${files.map} exists; remove the map to start a new overlay`);
        }
        ({ held, zeroed } = await readMap(files.map, identity, bytes, path));
        try {
          fh = await open(files.data, 'r+');
        } catch (err) {
          throw fromSystemError(err, 'cannot open the overlay', files.data);
        }
        const size = (await fh.stat()).size;
        if (size !== identity.size) {
          await fh.close();
          throw new CairnError('VAULT_CORRUPT', `overlay ${path} is ${size} bytes but the disk is ${identity.size}; it was changed outside Cairn`);
        }
      }
      return new OverlayExport(name, description, disk, path, identity, fh, held, zeroed);
    } catch (err) {
      await unlink(files.lock).catch(() => undefined);
      throw err;
    }
  }

  get size(): number {
    return this.disk.size;
  }

  /** Blocks the overlay holds data for (for reports and tests). */
  get heldBlocks(): number {
    let n = 0;
    for (let b = 0; b < this.blocks; b++) if (bit(this.held, b)) n++;
    return n;
  }

  async read(offset: number, length: number): Promise<Segment[]> {
    const parts = await Promise.all(
      this.runs(offset, length).map(async (r): Promise<Segment[]> => {
        if (r.source === Source.Zero) return [{ offset: r.offset, length: r.length }];
        if (r.source === Source.Backup) return this.base.read(r.offset, r.length);
        const data = Buffer.alloc(r.length);
        await readFully(this.fh, data, r.offset);
        return [{ offset: r.offset, length: r.length, data }];
      }),
    );
    return parts.flat();
  }

  allocation(offset: number, length: number): AllocationRun[] {
    const out: AllocationRun[] = [];
    const push = (len: number, zero: boolean) => {
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.length += len;
      else out.push({ length: len, zero });
    };
    for (const r of this.runs(offset, length)) {
      if (r.source === Source.Backup) for (const a of this.base.allocation(r.offset, r.length)) push(a.length, a.zero);
      else push(r.length, r.source === Source.Zero);
    }
    return out;
  }

  cache(offset: number, length: number): void {
    for (const r of this.runs(offset, length)) if (r.source === Source.Backup) this.base.cache(r.offset, r.length);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.serial(async () => {
      await this.writeLocked(offset, data);
      if (fua) await this.flushLocked();
    });
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.serial(async () => {
      const [first, last] = this.wholeBlocks(offset, length);
      if (first >= last) await this.writeLocked(offset, Buffer.alloc(length));
      else {
        // Partial blocks at the edges are written as zeros; whole blocks are only marked.
        const head = first * OVERLAY_BLOCK;
        if (offset < head) await this.writeLocked(offset, Buffer.alloc(head - offset));
        const tail = Math.min(last * OVERLAY_BLOCK, this.size);
        const end = offset + length;
        if (tail < end) await this.writeLocked(tail, Buffer.alloc(end - tail));
        this.zeroBlocks(first, last);
      }
      if (fua) await this.flushLocked();
    });
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.serial(async () => {
      const [first, last] = this.wholeBlocks(offset, length);
      if (first < last) this.zeroBlocks(first, last);
      if (fua) await this.flushLocked();
    });
  }

  flush(): Promise<void> {
    return this.serial(() => this.flushLocked());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.serial(() => this.flushLocked());
    } finally {
      await this.fh.close().catch(() => undefined);
      await unlink(overlayFiles(this.path).lock).catch(() => undefined);
    }
  }

  /** Runs writes and flushes one at a time: a partial-block write reads, merges and writes its block. */
  private serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async writeLocked(offset: number, data: Buffer): Promise<void> {
    const end = offset + data.length;
    const first = Math.floor(offset / OVERLAY_BLOCK);
    const last = Math.floor((end - 1) / OVERLAY_BLOCK);
    const start = first * OVERLAY_BLOCK;
    const stop = Math.min(this.size, (last + 1) * OVERLAY_BLOCK);
    let span = data;
    let at = offset;
    if (start < offset || stop > end) {
      // Copy in the rest of the edge blocks as they read now (backup, zeros or overlay).
      span = Buffer.alloc(stop - start);
      if (start < offset) await this.readInto(span, start, start, Math.min(stop, (first + 1) * OVERLAY_BLOCK));
      if (stop > end) await this.readInto(span, start, Math.max(start, last * OVERLAY_BLOCK), stop);
      data.copy(span, offset - start);
      at = start;
    }
    await writeFully(this.fh, span, at);
    for (let b = first; b <= last; b++) {
      setBit(this.held, b, true);
      setBit(this.zeroed, b, false);
    }
    this.dataDirty = true;
    this.mapDirty = true;
  }

  private async readInto(target: Buffer, targetStart: number, from: number, to: number): Promise<void> {
    for (const s of await this.read(from, to - from)) {
      if (s.data) s.data.copy(target, s.offset - targetStart);
      else target.fill(0, s.offset - targetStart, s.offset - targetStart + s.length);
    }
  }

  /** The blocks [first, last) that lie wholly inside the range (the disk's short last block counts when the range reaches the end). */
  private wholeBlocks(offset: number, length: number): [number, number] {
    const end = offset + length;
    return [Math.ceil(offset / OVERLAY_BLOCK), end === this.size ? this.blocks : Math.floor(end / OVERLAY_BLOCK)];
  }

  private zeroBlocks(first: number, last: number): void {
    for (let b = first; b < last; b++) {
      setBit(this.held, b, false);
      setBit(this.zeroed, b, true);
    }
    this.mapDirty = true;
  }

  private async flushLocked(): Promise<void> {
    if (this.dataDirty) {
      await this.fh.datasync();
      this.dataDirty = false;
    }
    if (this.mapDirty) {
      this.mapDirty = false;
      try {
        await writeMap(overlayFiles(this.path).map, this.identity, this.held, this.zeroed);
      } catch (err) {
        this.mapDirty = true;
        throw fromSystemError(err, 'cannot write the overlay map', overlayFiles(this.path).map);
      }
    }
  }

  /** [offset, offset + length) cut into runs by where each block reads from. */
  private runs(offset: number, length: number): { offset: number; length: number; source: Source }[] {
    const end = offset + length;
    const out: { offset: number; length: number; source: Source }[] = [];
    let at = offset;
    while (at < end) {
      const b = Math.floor(at / OVERLAY_BLOCK);
      const source = bit(this.held, b) ? Source.Overlay : bit(this.zeroed, b) ? Source.Zero : Source.Backup;
      const next = Math.min(end, (b + 1) * OVERLAY_BLOCK);
      const last = out[out.length - 1];
      if (last && last.source === source) last.length += next - at;
      else out.push({ offset: at, length: next - at, source });
      at = next;
    }
    return out;
  }
}

function bit(map: Uint8Array, b: number): boolean {
  return (map[b >> 3] & (1 << (b & 7))) !== 0;
}

function setBit(map: Uint8Array, b: number, on: boolean): void {
  if (on) map[b >> 3] |= 1 << (b & 7);
  else map[b >> 3] &= ~(1 << (b & 7));
}

/** The map file: u32 header length | header JSON | held bitmap | zeroed bitmap (bit b = block b). */
async function writeMap(path: string, identity: OverlayIdentity, held: Uint8Array, zeroed: Uint8Array): Promise<void> {
  const header: SidecarHeader = { format: FORMAT, version: VERSION, blockSize: OVERLAY_BLOCK, ...identity };
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writev([len, json, held, zeroed]);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

async function readMap(path: string, identity: OverlayIdentity, bytes: number, overlay: string): Promise<{ held: Uint8Array; zeroed: Uint8Array }> {
  let raw: Buffer;
  try {
    raw = await readFile(path);
  } catch (err) {
    throw fromSystemError(err, 'cannot read the overlay map', path);
  }
  let header: SidecarHeader | undefined;
  let at = 0;
  try {
    const n = raw.readUInt32LE(0);
    header = JSON.parse(raw.subarray(4, 4 + n).toString('utf8')) as SidecarHeader;
    at = 4 + n;
  } catch {
    header = undefined;
  }
  if (!header || header.format !== FORMAT) throw new CairnError('VAULT_CORRUPT', `${path} is not a Cairn overlay map; give --overlay a new path`);
  if (header.version !== VERSION || header.blockSize !== OVERLAY_BLOCK) {
    throw new CairnError('VAULT_VERSION', `overlay ${overlay} was written by another version of Cairn (map version ${header.version}); upgrade Cairn or give --overlay a new path`);
  }
  if (header.vault !== identity.vault || header.backup !== identity.backup || header.disk !== identity.disk || header.size !== identity.size) {
    throw new CairnError(
      'USAGE',
      `overlay ${overlay} belongs to disk ${header.disk} of backup ${header.backup} (vault ${header.vault}), not disk ${identity.disk} of backup ${identity.backup}; serve that disk with it, or give --overlay a new path`,
    );
  }
  if (raw.length !== at + 2 * bytes) throw new CairnError('VAULT_CORRUPT', `overlay map ${path} is truncated; the overlay cannot be trusted`);
  return { held: new Uint8Array(raw.subarray(at, at + bytes)), zeroed: new Uint8Array(raw.subarray(at + bytes, at + 2 * bytes)) };
}

/** Takes the lock file (pid inside); a lock left by a process that is gone is taken over. */
async function takeLock(lock: string, overlay: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(lock, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fromSystemError(err, 'cannot lock the overlay', lock);
    }
    const pid = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
      throw new CairnError('BUSY', `overlay ${overlay} is in use by process ${pid} (another serve-nbd); stop it first or give --overlay another path`);
    }
    await unlink(lock).catch(() => undefined);
  }
  throw new CairnError('BUSY', `overlay ${overlay} is being locked by another process; try again`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw fromSystemError(err, 'cannot look at', path);
  }
}

async function readFully(fh: FileHandle, into: Buffer, position: number): Promise<void> {
  for (let done = 0; done < into.length; ) {
    const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) break; // past the end of a sparse file: zeros, as allocated
    done += bytesRead;
  }
}

async function writeFully(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
