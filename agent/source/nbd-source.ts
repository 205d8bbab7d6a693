import type { BlockSource, ByteRange, ParentDisk, ReadPlan } from './block-source.js';
import { NbdClient, type Extent } from './nbd/nbd-client.js';
import { NBD_STATE_DIRTY, NBD_STATE_ZERO } from './nbd/nbd-protocol.js';
import { parseNbdUrl, type NbdTarget } from './nbd/nbd-url.js';

const ALLOCATION = 'base:allocation';
/** Batches are read as 64 KiB requests, all in flight at once (see NbdConnectOptions.requestSize). */
const REQUEST_SIZE = 64 * 1024;

export interface NbdSourceOptions {
  /** Name of the disk in backups (backups of the same names chain). */
  name: string;
  target: NbdTarget;
  exportName: string;
  /** Dirty bitmap with the changes since the parent, or undefined (then an incremental compares). */
  bitmap: string | undefined;
  /**
   * When to trust `bitmap` for an incremental: 'always' for a bitmap Cairn created at the parent's
   * capture; 'same-token' (a bitmap the user names in the URL) only if the parent was made with the
   * same bitmap, so the bitmap existed when the parent was taken.
   */
  trust: 'always' | 'same-token';
  /** The change token this backup records (undefined: the bitmap's name, if any). */
  changeToken?: string;
  /** Why the tracker cannot be used, when that is known at capture (stored as the plan's warning). */
  warning?: string;
}

/**
 * A disk served over NBD: a full backup reads only allocated extents (`base:allocation`), an
 * incremental only the extents a QEMU dirty bitmap reports (`qemu:dirty-bitmap:NAME`). Reads of one
 * batch go out at once on the one connection (NbdClient pipelines them).
 */
export class NbdSource implements BlockSource {
  private constructor(
    readonly name: string,
    private readonly client: NbdClient,
    private readonly opts: NbdSourceOptions,
  ) {}

  get size(): number {
    return this.client.size;
  }

  /** `nbd+unix:///EXPORT?socket=PATH[&bitmap=NAME]` or `nbd://HOST[:PORT]/EXPORT[?bitmap=NAME]`, named by its canonical URL. */
  static async fromUrl(url: string): Promise<NbdSource> {
    const u = parseNbdUrl(url);
    return NbdSource.connect({
      name: u.bitmap ? `${u.display}?bitmap=${encodeURIComponent(u.bitmap)}` : u.display,
      target: u.target,
      exportName: u.exportName,
      bitmap: u.bitmap,
      trust: 'same-token',
    });
  }

  static async connect(opts: NbdSourceOptions): Promise<NbdSource> {
    const contexts = [ALLOCATION, ...(opts.bitmap ? [dirtyContext(opts.bitmap)] : [])];
    const client = await NbdClient.connect(opts.target, { exportName: opts.exportName, metaContexts: contexts, requestSize: REQUEST_SIZE });
    return new NbdSource(opts.name, client, opts);
  }

  async plan(parent: ParentDisk | undefined): Promise<ReadPlan> {
    const { bitmap } = this.opts;
    const changeToken = this.opts.changeToken ?? bitmap;
    const token = changeToken === undefined ? {} : { changeToken };
    if (parent && bitmap) {
      const why =
        parent.size !== this.size
          ? `the disk's size changed from ${parent.size} to ${this.size} bytes`
          : this.opts.trust === 'same-token' && parent.changeToken !== bitmap
            ? `the parent backup was not made with bitmap '${bitmap}', so it may lack changes made before the bitmap started`
            : undefined;
      if (why === undefined) {
        const dirty = await this.status(dirtyContext(bitmap), (flags) => (flags & NBD_STATE_DIRTY) !== 0);
        return { method: 'bitmap', ranges: dirty, dirtyBytes: dirty.reduce((n, r) => n + r.length, 0), ...token };
      }
      return { method: 'compare', ranges: await this.allocated(), warning: `changed blocks not used: ${why}; read every used block and compared`, ...token };
    }
    const warning = parent && this.opts.warning ? { warning: this.opts.warning } : {};
    return { method: parent ? 'compare' : 'full', ranges: await this.allocated(), ...warning, ...token };
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    const n = Math.max(0, Math.min(length, this.size - position));
    if (n > 0) await this.client.readInto(buffer.subarray(0, n), position);
    return n;
  }

  close(): Promise<void> {
    return this.client.close();
  }

  /** Extents that may hold data: all but those the server says read as zeros. */
  private allocated(): Promise<ByteRange[]> {
    return this.status(ALLOCATION, (flags) => (flags & NBD_STATE_ZERO) === 0);
  }

  private async status(context: string, wanted: (flags: number) => boolean): Promise<ByteRange[]> {
    if (this.size === 0) return [];
    const extents: Extent[] = await this.client.blockStatus(0, this.size, context);
    const out: ByteRange[] = [];
    for (const e of extents) {
      if (!wanted(e.flags)) continue;
      const last = out[out.length - 1];
      if (last && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ offset: e.offset, length: e.length });
    }
    return out;
  }
}

export function dirtyContext(bitmap: string): string {
  return `qemu:dirty-bitmap:${bitmap}`;
}

export function isNbdUrl(spec: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(spec);
}

