import { open } from 'node:fs/promises';
import { resolve } from 'node:path';
import { ArrayGroup } from './array/array-source.js';
import { isArrayUrl, parseArrayUrl } from './array/array-urls.js';
import type { BlockSource } from './block-source.js';
import { FileSource } from './file-source.js';
import { isNbdUrl, NbdSource } from './nbd-source.js';
import { isLiveUrl, LiveDaemon } from './qemu/live-source.js';
import { QCOW2_MAGIC, Qcow2ImageSource } from './qemu/qcow2-image.js';
import { isVsphereUrl, openVsphereDisks } from './vmware/vsphere-source.js';

/**
 * Opens the sources of one backup from how the user names them:
 * - `nbd+unix:///EXPORT?socket=PATH[&bitmap=NAME]`, `nbd://HOST[:PORT]/EXPORT[?bitmap=NAME]`: an NBD export;
 * - `qmp+unix:///NODE?socket=QMP[&nbd=NBD]`: a disk in use by a running qemu-storage-daemon or
 *   QEMU; the disks of one daemon are captured together, at one point in time;
 * - `vsphere://USER@VCENTER/VM?...`: every disk of a VMware VM, captured with one (quiesced) snapshot
 *   and read with the disks' changed-block tracking (vmware/);
 * - `rbd://POOL/IMAGE`, `dorado://USER@HOST/LUN`: storage-array volumes, snapshotted together per
 *   array and diffed by the array (array/);
 * - a qcow2 image (recognised by its magic): its guest disk, with Cairn-managed dirty bitmaps;
 * - any other file or block device: read as raw.
 * On failure the sources opened so far are closed.
 */
export async function openSources(specs: string[]): Promise<BlockSource[]> {
  const sources: BlockSource[] = [];
  const daemons = new Map<string, LiveDaemon>();
  const arrays = new Map<string, ArrayGroup>();
  try {
    for (const spec of specs) {
      if (isLiveUrl(spec)) sources.push(...LiveDaemon.fromUrls([spec], daemons));
      else if (isVsphereUrl(spec)) sources.push(...(await openVsphereDisks(spec)));
      else if (isArrayUrl(spec)) sources.push(...(await ArrayGroup.open([parseArrayUrl(spec)], arrays)));
      else sources.push(await openSource(spec));
    }
    return sources;
  } catch (err) {
    for (const s of sources) await s.close().catch(() => undefined);
    throw err;
  }
}

async function openSource(spec: string): Promise<BlockSource> {
  if (isNbdUrl(spec)) return NbdSource.fromUrl(spec);
  if (await isQcow2(spec)) return Qcow2ImageSource.open(spec);
  return FileSource.open(spec);
}

async function isQcow2(path: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(resolve(path), 'r');
  } catch {
    return false; // FileSource.open says what is wrong
  }
  try {
    const head = Buffer.alloc(QCOW2_MAGIC.length);
    const { bytesRead } = await fh.read(head, 0, head.length, 0).catch(() => ({ bytesRead: 0 }));
    return bytesRead === head.length && head.equals(QCOW2_MAGIC);
  } finally {
    await fh.close();
  }
}
