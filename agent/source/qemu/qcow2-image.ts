import { createHash } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CairnError } from '../../../shared/errors.js';
import type { BlockSource, CaptureContext, CaptureGroup, ParentDisk, ReadPlan } from '../block-source.js';
import { NbdSource } from '../nbd-source.js';
import { runQemuTool } from './qemu-tools.js';

/** The first bytes of every qcow2 image. */
export const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

interface ImageInfo {
  'virtual-size': number;
  format: string;
  'format-specific'?: { type: string; data?: { bitmaps?: { name: string; flags: string[]; granularity: number }[] } };
}

/** Prefix of the bitmaps Cairn creates in one vault's chain; the rest of the name is the backup id. */
export function bitmapPrefix(vaultId: string): string {
  return `cairn-${vaultId.slice(0, 8)}-`;
}

/**
 * An offline qcow2 image (no VM has it open) with its bitmap lifecycle kept by `qemu-img bitmap`:
 *
 * - capture: add bitmap `cairn-<vault>-<backup id>`, which records every write from now on, then
 *   serve the image read-only with `qemu-nbd` (its lock keeps writers out while it is read),
 *   exporting the parent's bitmap so that only the blocks written since the parent are read;
 * - commit (the backup's manifest is written): stop qemu-nbd, remove the parent's bitmap, so only
 *   the latest tracking point is kept;
 * - abort: stop qemu-nbd, remove the new bitmap; the parent's bitmap still holds every change.
 *
 * A parent bitmap that is missing, or marked in-use (the image was not closed cleanly, so it may
 * miss writes), makes the incremental compare every used block instead, with a warning in the
 * backup. Bitmaps of this vault's chain left by killed runs are removed at the next capture.
 * qemu-nbd serves one connection and exits when it closes, so a killed agent leaves no server.
 */
export class Qcow2ImageSource implements BlockSource, CaptureGroup {
  readonly group: CaptureGroup = this;
  private nbd: NbdSource | undefined;
  private scratch: string | undefined;
  private pidFile: string | undefined;
  private oldBitmap: string | undefined;
  private newBitmap: string | undefined;

  private constructor(
    readonly name: string,
    private info: ImageInfo,
  ) {}

  /** Checks the image can be read (not in use by a running VM); nothing is changed until capture. */
  static async open(path: string): Promise<Qcow2ImageSource> {
    const abs = resolve(path);
    // A qemu-nbd left by a killed run (one that never got its connection) still holds the image's lock.
    await stopStale(join(scratchFor(abs), 'qemu-nbd.pid'));
    const info = await imageInfo(abs);
    if (info.format !== 'qcow2') {
      throw new CairnError('SOURCE_UNREADABLE', `${abs} is a ${info.format} image, not qcow2`);
    }
    return new Qcow2ImageSource(abs, info);
  }

  get size(): number {
    return this.nbd?.size ?? this.info['virtual-size'];
  }

  async capture(ctx: CaptureContext): Promise<void> {
    const image = this.name;
    const prefix = bitmapPrefix(ctx.vaultId);
    // The bitmaps as open() read them moments ago (a second `qemu-img info` costs ~50 ms).
    const bitmaps = this.info['format-specific']?.data?.bitmaps ?? [];
    const parentToken = ctx.parents[0]?.changeToken;
    let warning: string | undefined;
    if (parentToken !== undefined) {
      const old = bitmaps.find((b) => b.name === parentToken);
      if (!old) warning = `dirty bitmap '${parentToken}' of the parent backup is missing from ${image}`;
      else if (old.flags.includes('in-use')) warning = `dirty bitmap '${parentToken}' in ${image} is inconsistent (the image was not closed cleanly)`;
      else this.oldBitmap = parentToken;
    }
    for (const b of bitmaps) {
      if (b.name.startsWith(prefix) && b.name !== this.oldBitmap) {
        await runQemuTool('qemu-img', ['bitmap', '--remove', image, b.name], `removing the stale bitmap ${b.name} from ${image}`);
      }
    }
    const newBitmap = prefix + ctx.backupId;
    await runQemuTool('qemu-img', ['bitmap', '--add', image, newBitmap], `adding dirty bitmap ${newBitmap} to ${image}`);
    this.newBitmap = newBitmap;

    this.scratch = scratchFor(image);
    this.pidFile = join(this.scratch, 'qemu-nbd.pid');
    await rm(this.scratch, { recursive: true, force: true });
    await mkdir(this.scratch, { recursive: true, mode: 0o700 });
    const socket = join(this.scratch, 'nbd.sock');
    await runQemuTool(
      'qemu-nbd',
      ['--fork', `--pid-file=${this.pidFile}`, `--socket=${socket}`, '--export-name=cairn', '--read-only', '--format=qcow2',
        ...(this.oldBitmap ? [`--bitmap=${this.oldBitmap}`] : []), image],
      `serving ${image} over NBD`,
    );
    this.nbd = await NbdSource.connect({
      name: image,
      target: { unix: socket },
      exportName: 'cairn',
      bitmap: this.oldBitmap,
      trust: 'always',
      changeToken: newBitmap,
      ...(warning ? { warning: `${warning}; read every used block and compared` } : {}),
    });
  }

  plan(parent: ParentDisk | undefined): Promise<ReadPlan> {
    return this.served().plan(parent);
  }

  read(buffer: Buffer, length: number, position: number): Promise<number> {
    return this.served().read(buffer, length, position);
  }

  async commit(): Promise<string[]> {
    const warnings: string[] = [];
    await this.stop();
    if (this.oldBitmap) {
      try {
        await runQemuTool('qemu-img', ['bitmap', '--remove', this.name, this.oldBitmap], `removing the previous bitmap ${this.oldBitmap}`);
      } catch (err) {
        warnings.push(`${(err as Error).message}; the next backup removes it`);
      }
      this.oldBitmap = undefined;
    }
    this.newBitmap = undefined;
    return warnings;
  }

  async abort(): Promise<void> {
    await this.stop();
    if (this.newBitmap) {
      await runQemuTool('qemu-img', ['bitmap', '--remove', this.name, this.newBitmap], 'removing the new bitmap').catch(() => undefined);
      this.newBitmap = undefined;
    }
  }

  async close(): Promise<void> {
    await this.stop();
  }

  private served(): NbdSource {
    if (!this.nbd) throw new CairnError('INTERNAL', `${this.name} is read before it was captured`);
    return this.nbd;
  }

  /** Hangs up (qemu-nbd then exits by itself) and makes sure it is gone, so the image is unlocked. */
  private async stop(): Promise<void> {
    const nbd = this.nbd;
    this.nbd = undefined;
    await nbd?.close().catch(() => undefined);
    if (this.pidFile) {
      const pid = Number((await readFile(this.pidFile, 'utf8').catch(() => '')).trim());
      if (pid > 0) await waitForExit(pid);
      this.pidFile = undefined;
    }
    if (this.scratch) await rm(this.scratch, { recursive: true, force: true });
    this.scratch = undefined;
  }
}

/** One scratch folder (socket, pid file) per image, so a later run finds what a killed one left. */
function scratchFor(image: string): string {
  return join(tmpdir(), `cairn-qemu-nbd-${createHash('sha256').update(image).digest('hex').slice(0, 16)}`);
}

async function imageInfo(image: string): Promise<ImageInfo> {
  const out = await runQemuTool('qemu-img', ['info', '--output=json', image], `cannot read the image ${image}`);
  return JSON.parse(out) as ImageInfo;
}

/** Stops the qemu-nbd whose pid a killed run left in `pidFile`, if it still runs. */
async function stopStale(pidFile: string): Promise<void> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (!(pid > 0)) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (!cmdline.includes(pidFile)) return;
  process.kill(pid, 'SIGTERM');
  await waitForExit(pid);
}

/** Waits up to 5 s for a process to exit, then kills it. */
export async function waitForExit(pid: number): Promise<void> {
  // A zombie (exited, not yet reaped by init) counts as gone.
  const alive = async (): Promise<boolean> => {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    return stat !== '' && !/^\d+ \(.*\) Z/.test(stat);
  };
  for (let i = 0; i < 100 && (await alive()); i++) await new Promise((r) => setTimeout(r, 50));
  if (await alive()) process.kill(pid, 'SIGKILL');
}
