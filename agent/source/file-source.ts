import { open, readFile, realpath, stat, type FileHandle } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { CairnError, fromSystemError } from '../../shared/errors.js';
import type { BlockSource } from './block-source.js';

/** A raw disk image file or a block device, read with positional reads. */
export class FileSource implements BlockSource {
  private constructor(
    readonly name: string,
    readonly size: number,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string): Promise<FileSource> {
    const abs = resolve(path);
    let st;
    try {
      st = await stat(abs);
    } catch (err) {
      const e = fromSystemError(err, 'cannot read backup source', abs);
      throw new CairnError('SOURCE_UNREADABLE', e.message, { cause: err });
    }
    let size: number;
    if (st.isFile()) size = st.size;
    else if (st.isBlockDevice()) size = await blockDeviceSize(abs);
    else {
      throw new CairnError(
        'SOURCE_UNREADABLE',
        `backup source ${abs} is not a disk image file or block device; give a raw image or a device such as /dev/sdb`,
      );
    }
    let fh: FileHandle;
    try {
      fh = await open(abs, 'r');
    } catch (err) {
      const e = fromSystemError(err, 'cannot open backup source', abs);
      throw new CairnError('SOURCE_UNREADABLE', e.message, { cause: err });
    }
    return new FileSource(abs, size, fh);
  }

  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        ({ bytesRead: n } = await this.fh.read(buffer, done, length - done, position + done));
      } catch (err) {
        throw new CairnError('SOURCE_UNREADABLE', `reading ${this.name} at byte ${position + done} failed: ${(err as Error).message}`, {
          cause: err,
        });
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** Size of a block device from sysfs (512-byte sectors), which needs no ioctl. */
async function blockDeviceSize(path: string): Promise<number> {
  const dev = basename(await realpath(path));
  try {
    const sectors = Number((await readFile(`/sys/class/block/${dev}/size`, 'utf8')).trim());
    return sectors * 512;
  } catch (err) {
    throw new CairnError('SOURCE_UNREADABLE', `cannot find the size of block device ${path} in /sys/class/block/${dev}`, {
      cause: err,
    });
  }
}
