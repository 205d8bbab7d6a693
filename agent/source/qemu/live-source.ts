import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CairnError } from '../../../shared/errors.js';
import type { BlockSource, CaptureContext, CaptureGroup, ParentDisk, ReadPlan } from '../block-source.js';
import { NbdSource } from '../nbd-source.js';
import { captureLive, type LiveCapture } from './live-capture.js';
import { bitmapPrefix } from './qcow2-image.js';

const EXAMPLE = 'qmp+unix:///NODE?socket=/run/qsd/qmp.sock[&nbd=/run/qsd/nbd.sock]';

export interface LiveDiskUrl {
  node: string;
  qmpSocket: string;
  /** The daemon's own NBD server, when it runs one already. */
  nbdSocket: string | undefined;
  /** Canonical form: the disk's name in backups. */
  display: string;
}

/**
 * `qmp+unix:///NODE?socket=QMP_SOCKET[&nbd=NBD_SOCKET]`: block node NODE of a running
 * qemu-storage-daemon (or QEMU) reached through its QMP socket. `nbd=` names the Unix socket of the
 * NBD server the daemon runs already, if any (QMP cannot tell it, and a daemon has at most one).
 */
export function parseLiveUrl(url: string): LiveDiskUrl {
  const bad = (why: string): CairnError => new CairnError('USAGE', `invalid QMP disk URL '${url}': ${why}; use ${EXAMPLE}`);
  const m = /^qmp\+unix:\/\/([^/?#]*)\/([^?#]*)(?:\?([^#]*))?$/i.exec(url);
  if (!m) throw bad('not a qmp+unix:// URL');
  if (m[1] !== '') throw bad('a Unix-socket URL has no host');
  const node = decodeURIComponent(m[2]);
  if (!node) throw bad('the block node name is missing');
  const params = new URLSearchParams(m[3] ?? '');
  for (const key of params.keys()) if (key !== 'socket' && key !== 'nbd') throw bad(`unknown query parameter '${key}' (known: socket, nbd)`);
  const socket = params.get('socket');
  if (!socket) throw bad("'socket=PATH' (the QMP socket) is missing");
  const qmpSocket = resolve(socket);
  const nbd = params.get('nbd');
  const nbdSocket = nbd ? resolve(nbd) : undefined;
  return {
    node,
    qmpSocket,
    nbdSocket,
    display: `qmp+unix:///${encodeURIComponent(node)}?socket=${qmpSocket}`,
  };
}

export function isLiveUrl(spec: string): boolean {
  return /^qmp\+unix:\/\//i.test(spec);
}

/**
 * The disks of one running QEMU daemon, captured together: one QMP transaction starts a new dirty
 * bitmap on every disk and freezes a point-in-time (fleecing) view of each, exported over NBD
 * (live-capture.ts). Incrementals read the dirty extents of the parent's bitmap on that view; the
 * parent's bitmap is removed only after the backup is committed, and the new one on failure.
 */
export class LiveDaemon implements CaptureGroup {
  readonly disks: LiveDiskSource[] = [];
  private capture_: LiveCapture | undefined;

  constructor(
    readonly qmpSocket: string,
    readonly nbdSocket: string | undefined,
  ) {}

  /** Groups URLs by QMP socket: each daemon is one consistency group. */
  static fromUrls(urls: string[], daemons: Map<string, LiveDaemon>): LiveDiskSource[] {
    return urls.map((url) => {
      const u = parseLiveUrl(url);
      let daemon = daemons.get(u.qmpSocket);
      if (!daemon) daemons.set(u.qmpSocket, (daemon = new LiveDaemon(u.qmpSocket, u.nbdSocket)));
      else if (u.nbdSocket !== daemon.nbdSocket) {
        throw new CairnError('USAGE', `the disks of the daemon at ${u.qmpSocket} name different nbd= sockets; give the same one (or none) for all`);
      }
      if (daemon.disks.some((d) => d.node === u.node)) throw new CairnError('USAGE', `disk ${u.display} is given twice`);
      const disk = new LiveDiskSource(u.display, u.node, daemon);
      daemon.disks.push(disk);
      return disk;
    });
  }

  async capture(ctx: CaptureContext): Promise<void> {
    const prefix = bitmapPrefix(ctx.vaultId);
    const tokens = ctx.parents.map((p) => p?.changeToken);
    const oldBitmap = tokens.find((t) => t !== undefined && t.startsWith(prefix));
    const scratchDir = join(tmpdir(), `cairn-live-${createHash('sha256').update(this.qmpSocket).digest('hex').slice(0, 16)}`);
    const newBitmap = prefix + ctx.backupId;
    this.capture_ = await captureLive({
      qmpSocket: this.qmpSocket,
      nodes: this.disks.map((d) => d.node),
      newBitmap,
      oldBitmap,
      bitmapPrefix: prefix,
      scratchDir,
      ...(this.nbdSocket ? { nbdSocket: this.nbdSocket } : {}),
    });
    try {
      for (const [i, disk] of this.disks.entries()) {
        const c = this.capture_.disks[i];
        const sameToken = tokens[i] !== undefined && tokens[i] === oldBitmap;
        const bitmap = c.dirtyContext && sameToken ? c.dirtyContext.replace(/^qemu:dirty-bitmap:/, '') : undefined;
        const warning =
          tokens[i] !== undefined && !bitmap ? (c.warning ?? `the parent's change token '${tokens[i]}' is not a bitmap of this daemon`) : undefined;
        await disk.attach(
          await NbdSource.connect({
            name: disk.name,
            target: { unix: c.socket },
            exportName: c.exportName,
            bitmap,
            trust: 'always',
            changeToken: newBitmap,
            ...(warning ? { warning: `${warning}; read every used block and compared` } : {}),
          }),
        );
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async commit(): Promise<string[]> {
    await this.detach();
    const c = this.capture_;
    this.capture_ = undefined;
    try {
      await c?.commit();
      return [];
    } catch (err) {
      return [`${(err as Error).message}; the next backup cleans up what was left`];
    }
  }

  async abort(): Promise<void> {
    await this.detach();
    const c = this.capture_;
    this.capture_ = undefined;
    await c?.abort().catch(() => undefined);
  }

  private async detach(): Promise<void> {
    for (const d of this.disks) await d.detach();
  }
}

/** One disk of a LiveDaemon; readable once the daemon's group is captured. */
export class LiveDiskSource implements BlockSource {
  private nbd: NbdSource | undefined;

  constructor(
    readonly name: string,
    readonly node: string,
    readonly group: LiveDaemon,
  ) {}

  get size(): number {
    return this.nbd?.size ?? 0;
  }

  /** @internal called by the daemon's capture */
  async attach(nbd: NbdSource): Promise<void> {
    await this.detach();
    this.nbd = nbd;
  }

  /** @internal */
  async detach(): Promise<void> {
    const nbd = this.nbd;
    this.nbd = undefined;
    await nbd?.close().catch(() => undefined);
  }

  plan(parent: ParentDisk | undefined): Promise<ReadPlan> {
    return this.served().plan(parent);
  }

  read(buffer: Buffer, length: number, position: number): Promise<number> {
    return this.served().read(buffer, length, position);
  }

  async close(): Promise<void> {
    // A capture still open here was neither committed nor aborted (the engine never got to it).
    if (this.group.disks[0] === this) await this.group.abort();
  }

  private served(): NbdSource {
    if (!this.nbd) throw new CairnError('INTERNAL', `${this.name} is read before it was captured`);
    return this.nbd;
  }
}
